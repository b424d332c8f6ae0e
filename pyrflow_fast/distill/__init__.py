"""Few-step distillation components (SPEC section 4): DMD, adversarial distillation, LoRA on the student.

Import the submodules you need: :mod:`pyrflow_fast.distill.dmd` (distribution matching in
flow-matching form, variants OT / PT / PT*), :mod:`pyrflow_fast.distill.adversarial` (frozen
backbone features, spatial/temporal conv head, hinge loss) and :mod:`pyrflow_fast.distill.lora`
(LoRA adapters on the student). The patch-pyramid model (PPF) lives in :mod:`pyrflow_fast.ppf`.
Importing this package imports nothing heavy.
"""

__all__: list[str] = []
