"""Pyramidal finetuning of Wan2.1: loss, trainer, LoRA, CLI (``python -m pyrflow_fast.train``).

- :mod:`pyrflow_fast.train.config`: the documented configuration (:class:`~pyrflow_fast.train.config.TrainConfig`);
- :mod:`pyrflow_fast.train.loss`: the pyramidal flow-matching loss and its world-size-independent draws;
- :mod:`pyrflow_fast.train.lora`: per-stage or shared LoRA adapters with merge for export;
- :mod:`pyrflow_fast.train.trainer`: the trainer (DDP / FSDP2, checkpoints, resume, export);
- :mod:`pyrflow_fast.train.synthetic`: an in-memory synthetic dataset of clean pyramids;
- :mod:`pyrflow_fast.train.evidence`: the end-to-end CPU evidence run.
"""
