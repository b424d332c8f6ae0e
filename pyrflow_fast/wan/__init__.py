"""The Wan2.1 text-to-video backbone: configs, model, RoPE and checkpoints."""

from .config import CONFIGS, WanConfig, get_config
from .model import WanDiT

__all__ = ["CONFIGS", "WanConfig", "WanDiT", "get_config"]
