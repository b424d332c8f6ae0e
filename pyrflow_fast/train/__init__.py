"""Training of Wan2.1 transformers: pyramidal finetuning (``python -m pyrflow_fast.train``) and distillation.

- :mod:`pyrflow_fast.train.runner`: the one training loop (:class:`~pyrflow_fast.train.runner.Runner`),
  the LR schedule, clipping, EMA, metrics and export (a model directory,
  :func:`pyrflow_fast.card.write_model_dir`);
- :mod:`pyrflow_fast.train.methods`: one class per method (pyramidal finetune, DMD, adversarial,
  PPF) and the registry from method names to them;
- :mod:`pyrflow_fast.train.distributed`: process group and device (none / DDP / FSDP2, gloo or nccl);
- :mod:`pyrflow_fast.train.checkpoint`: the checkpoint layout, atomic writes and resume;
- :mod:`pyrflow_fast.train.inputs`: the backbone and the dataset, checked against the config;
- :mod:`pyrflow_fast.train.config`: the documented finetune configuration (``TrainConfig``);
- :mod:`pyrflow_fast.train.loss`: the pyramidal flow-matching loss and its world-size-independent draws;
- :mod:`pyrflow_fast.train.lora`: per-stage or shared LoRA adapters with merge for export;
- :mod:`pyrflow_fast.train.synthetic`: an in-memory synthetic dataset of clean pyramids;
- :mod:`pyrflow_fast.train.evidence`: the end-to-end CPU evidence run.
"""
