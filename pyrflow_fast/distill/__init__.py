"""Few-step distillation components (theory §4): DMD, adversarial distillation, LoRA on the student.

Import the submodules you need: :mod:`pyrflow_fast.distill.dmd` (distribution matching in
flow-matching form, variants OT / PT / PT*), :mod:`pyrflow_fast.distill.adversarial` (frozen
backbone features, spatial/temporal conv head, hinge loss) and :mod:`pyrflow_fast.distill.lora`
(LoRA adapters on the student). The patch-pyramid model (PPF) lives in :mod:`pyrflow_fast.ppf`.
The methods (routes ``dmd-ot``, ``dmd-pt``, ``dmd-pt*``, ``adv-od``, ``adv-pd``, ``ppf``), with
their roll-outs and teacher finetunes, are :mod:`pyrflow_fast.train.methods` (the algorithm:
:mod:`pyrflow_fast.train.methods.few_step`), trained by :class:`pyrflow_fast.train.runner.Runner`,
configured by :mod:`pyrflow_fast.distill.config` and run by ``python -m pyrflow_fast.distill``
(:mod:`pyrflow_fast.distill.cli`); the CPU evidence is :mod:`pyrflow_fast.distill.evidence`.
Importing this package imports nothing heavy.
"""

__all__: list[str] = []
