"""pyrflow_fast: the PyTorch twin of :mod:`pyrflow_ref`.

Importing this package is cheap: it imports nothing heavy. Import the submodules you need, e.g.
``pyrflow_fast.wan`` (the Wan2.1 backbone), ``pyrflow_fast.contract`` (the backbone interface used
by the pyramid code) or ``pyrflow_fast.flops`` (the analytic FLOPs model).
"""

__all__: list[str] = []
