"""Training data for pyramidal Wan: video clips, captions, clean stage pyramids, the latent cache.

- :mod:`~pyrflow_fast.data.video`: :func:`read_video` (PyAV; timestamp sampling at a target fps,
  antialiased aspect-preserving resize + center crop, frame by frame as it decodes; frames above
  :data:`DEFAULT_MAX_PIXELS` are skipped as too large) and :class:`VideoSkipped`;
- :mod:`~pyrflow_fast.data.dataset`: :class:`VideoTextDataset`, a folder of videos with a CSV or
  JSONL caption file that skips (logs and counts) bad videos;
- :mod:`~pyrflow_fast.data.pyramid`: :func:`clean_pyramid`, the clean per-stage signals under
  Definition 1 (latent space) or 2 (pixel space);
- :mod:`~pyrflow_fast.data.cache`: :func:`write_cache` / :class:`LatentCache`, the offline latent
  cache (``python -m pyrflow_fast.data.cache``).
"""

from importlib import import_module

_EXPORTS = {
    "LatentCache": "cache",
    "write_cache": "cache",
    "VideoTextDataset": "dataset",
    "read_captions": "dataset",
    "clean_pyramid": "pyramid",
    "pixel_pyramid_for": "pyramid",
    "DEFAULT_MAX_PIXELS": "video",
    "REASONS": "video",
    "VideoSkipped": "video",
    "probe_video": "video",
    "read_video": "video",
    "resize_center_crop": "video",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name):
    # lazy, so that ``python -m pyrflow_fast.data.cache`` does not import the module twice
    if name in _EXPORTS:
        return getattr(import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
