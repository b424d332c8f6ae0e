"""Load Wan2.1's text encoder, tokenizer, VAE and transformer from a local directory.

:func:`load_components` reads either release layout (see :mod:`pyrflow_fast.pipeline.layout`) and
returns :class:`WanComponents`, which encodes prompts the way Wan does and moves videos to and from
Wan's normalised latent space.

Loading is strict, as in :mod:`pyrflow_fast.wan.checkpoint`: each model is built on the meta device
from its configuration, the state dict is renamed if needed (original layout), checked (missing
keys, unexpected keys and shape mismatches are raised together as one
:class:`~pyrflow_fast.wan.checkpoint.CheckpointError`) and assigned as loaded, so weights are
bit-identical to the files unless ``dtype`` casts them. ``.pth`` files are read with
``torch.load(weights_only=True)``.

Original-layout configuration: the Wan files carry no configuration. The umT5 configuration is read
off the tensor shapes (:func:`~pyrflow_fast.pipeline.t5_keys.infer_umt5_config`), and so is the
VAE's (:func:`~pyrflow_fast.pipeline.vae_keys.infer_vae_config`); for the real files this gives
exactly Wan's fixed configurations (umT5-XXL; VAE dim 96, z_dim 16). The VAE's latent statistics
are Wan's constants when ``z_dim`` is 16; an optional sidecar ``Wan2.1_VAE.config.json`` (an
``AutoencoderKLWan`` config, any subset of keys) overrides inferred entries and must supply
``latents_mean``/``latents_std`` for any other ``z_dim``. :func:`write_original_vae` writes it
when needed.
"""

from __future__ import annotations

import contextlib
import html
import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..wan import WanDiT
from ..wan.checkpoint import CheckpointError, assign_state_dict, check_state_dict, load_wan, read_state_dict
from .geometry import read_scheduler_config
from .layout import ORIGINAL_T5, ORIGINAL_TOKENIZER, ORIGINAL_VAE, ORIGINAL_VAE_CONFIG, find_layout
from .pixel import PixelSpace, is_pixel_space
from .t5_keys import TIED_EMBEDDING, infer_umt5_config, to_hf_t5_state_dict, to_wan_t5_state_dict
from .vae_keys import (
    WAN_LATENTS_MEAN,
    WAN_LATENTS_STD,
    infer_vae_config,
    to_diffusers_vae_state_dict,
    to_original_vae_state_dict,
)

__all__ = [
    "WanComponents",
    "load_components",
    "load_tokenizer",
    "load_text_encoder",
    "load_vae",
    "clean_prompt",
    "check_device",
    "run_device",
    "running",
    "write_original_vae",
    "write_original_text_encoder",
]

_HF_WEIGHTS = ("model.safetensors.index.json", "model.safetensors")
_DIFF_WEIGHTS = ("diffusion_pytorch_model.safetensors.index.json", "diffusion_pytorch_model.safetensors")


# ----------------------------------------------------------------------------- helpers
def check_device(device: torch.device | str) -> torch.device:
    """Parse ``device`` and check that a tensor can be placed there.

    :raises ValueError: for a malformed device string or an unavailable device, with the reason.
    """
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError) as err:
        raise ValueError(f"invalid device {device!r}: {err}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} requested but CUDA is not available on this machine")
    try:
        torch.empty(0, device=dev)
    except Exception as err:  # RuntimeError, AssertionError, AcceleratorError ... depending on backend
        raise ValueError(f"device {device!r} is not usable: {err}") from None
    return dev


def run_device(device: torch.device | str | None, weights: torch.device, offload: bool) -> torch.device:
    """Where :func:`~pyrflow_fast.sample.generate` runs the models: ``device`` (checked), by default the
    ``weights``' device without ``offload`` and CUDA (else the CPU) with it; ValueError for a ``device`` other
    than the weights' without ``offload``."""
    if device is None:
        return check_device("cuda" if torch.cuda.is_available() else "cpu") if offload else weights
    device = check_device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    if not offload and device != weights:
        raise ValueError(
            f"device={device} but the transformer's weights are on {weights}: load the components there, or "
            "pass offload=True to move each one there only while it runs"
        )
    return device


@contextlib.contextmanager
def running(device: torch.device, offload: bool, *modules: torch.nn.Module | None) -> Iterator[None]:
    """With ``offload``: ``modules`` (``None`` entries skipped) on ``device`` inside the block and on the CPU after
    it; without it they stay where they are."""
    modules = [m for m in modules if m is not None] if offload else []
    for m in modules:
        m.to(device)
    try:
        yield
    finally:
        for m in modules:
            m.to("cpu")


def clean_prompt(text: str) -> str:
    """Wan's prompt cleaning (``clean='whitespace'``): ``ftfy.fix_text`` when ftfy is installed,
    HTML unescaping (twice), then runs of whitespace collapsed to one space and the ends stripped.

    >>> clean_prompt("  a &amp;amp; b\\n\\t c ")
    'a & b c'
    """
    try:
        import ftfy
    except ImportError:
        pass
    else:
        text = ftfy.fix_text(text)
    text = html.unescape(html.unescape(text)).strip()
    return re.sub(r"\s+", " ", text).strip()


def _weights_file(folder: Path, names: tuple[str, ...]) -> Path:
    for name in names:
        if (folder / name).is_file():
            return folder / name
    raise FileNotFoundError(f"{folder}: none of {', '.join(names)} found")


def _assign(
    model: torch.nn.Module, sd: dict[str, torch.Tensor], what: str, device: torch.device, dtype: torch.dtype
) -> None:
    try:
        check_state_dict(model, sd)
    except CheckpointError as err:
        raise CheckpointError(f"{what}: {err}") from None
    moved: dict[int, torch.Tensor] = {}  # tied tensors (umT5's embedding) are moved/cast once
    for v in sd.values():
        if id(v) not in moved:
            moved[id(v)] = v.to(device=device, dtype=dtype if v.is_floating_point() else None)
    assign_state_dict(model, {k: moved[id(v)] for k, v in sd.items()})
    model.eval().requires_grad_(False)


# ----------------------------------------------------------------------------- loaders
def load_tokenizer(folder: str | Path) -> Any:
    """Load a tokenizer folder with ``transformers.AutoTokenizer`` (local files only)."""
    from transformers import AutoTokenizer

    folder = Path(folder)
    try:
        return AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    except Exception as err:  # transformers raises many types; say which folder failed
        hint = ""
        if not (folder / "tokenizer.json").is_file():
            hint = " (no tokenizer.json: the slow sentencepiece tokenizer needs the 'sentencepiece' package)"
        raise ValueError(f"could not load the tokenizer from {folder}{hint}: {err}") from err


def load_text_encoder(
    path: str | Path, *, layout: str, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32
) -> torch.nn.Module:
    """Load a ``transformers.UMT5EncoderModel``.

    :param path: ``layout="diffusers"``: the ``text_encoder`` folder (config.json + safetensors);
        ``layout="original"``: Wan's ``models_t5_umt5-xxl-enc-bf16.pth``.
    """
    from transformers import UMT5Config, UMT5EncoderModel

    path = Path(path)
    if layout == "diffusers":
        config = UMT5Config.from_pretrained(str(path), local_files_only=True)
        sd = read_state_dict(_weights_file(path, _HF_WEIGHTS))
        if TIED_EMBEDDING not in sd and "shared.weight" in sd:
            sd[TIED_EMBEDDING] = sd["shared.weight"]
        elif "shared.weight" not in sd and TIED_EMBEDDING in sd:
            sd["shared.weight"] = sd[TIED_EMBEDDING]
    elif layout == "original":
        raw = read_state_dict(path)
        try:
            config = UMT5Config(**infer_umt5_config(raw))
        except ValueError as err:
            raise CheckpointError(f"text encoder {path}: {err}") from None
        sd = to_hf_t5_state_dict(raw)
    else:
        raise ValueError(f"layout must be 'diffusers' or 'original', got {layout!r}")
    with torch.device("meta"):
        model = UMT5EncoderModel(config)
    _assign(model, sd, f"text encoder {path}", torch.device(device), dtype)
    return model


def load_vae(
    path: str | Path, *, layout: str, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32
) -> torch.nn.Module:
    """Load a ``diffusers.AutoencoderKLWan``.

    :param path: ``layout="diffusers"``: the ``vae`` folder (config.json + safetensors);
        ``layout="original"``: Wan's ``Wan2.1_VAE.pth`` (with an optional sidecar
        ``Wan2.1_VAE.config.json`` next to it; see the module docstring).

    A diffusers ``vae`` folder whose config names ``PixelSpace`` gives a
    :class:`~pyrflow_fast.pipeline.pixel.PixelSpace` (pixel-space models; always float32).
    """
    path = Path(path)
    if layout == "diffusers" and is_pixel_space(path):
        return PixelSpace.from_pretrained(path).to(device=torch.device(device)).eval()
    from diffusers import AutoencoderKLWan

    if layout == "diffusers":
        config = dict(AutoencoderKLWan.load_config(str(path), local_files_only=True))
        sd = read_state_dict(_weights_file(path, _DIFF_WEIGHTS))
    elif layout == "original":
        raw = read_state_dict(path)
        try:
            config = infer_vae_config(raw)
        except ValueError as err:
            raise CheckpointError(f"VAE {path}: {err}") from None
        sidecar = path.parent / ORIGINAL_VAE_CONFIG
        if sidecar.is_file():
            overrides = json.loads(sidecar.read_text())
            config.update({k: v for k, v in overrides.items() if not k.startswith("_")})
        if "latents_mean" not in config or "latents_std" not in config:
            if config["z_dim"] != len(WAN_LATENTS_MEAN):
                raise ValueError(
                    f"VAE {path} has z_dim {config['z_dim']}; Wan's latent statistics are for z_dim 16. "
                    f"Put latents_mean and latents_std into {sidecar}"
                )
            config.setdefault("latents_mean", list(WAN_LATENTS_MEAN))
            config.setdefault("latents_std", list(WAN_LATENTS_STD))
        sd = to_diffusers_vae_state_dict(raw, config["num_res_blocks"])
    else:
        raise ValueError(f"layout must be 'diffusers' or 'original', got {layout!r}")
    if config.get("is_residual") or config.get("decoder_base_dim") not in (None, config.get("base_dim", 96)):
        raise ValueError(f"VAE {path}: only the Wan2.1 VAE is supported (config {config})")
    z = config.get("z_dim", 16)
    for key in ("latents_mean", "latents_std"):
        if key in config and len(config[key]) != z:
            raise ValueError(f"VAE {path}: {key} has {len(config[key])} entries, z_dim is {z}")
    with torch.device("meta"):
        model = AutoencoderKLWan.from_config(config)
    _assign(model, sd, f"VAE {path}", torch.device(device), dtype)
    return model


# ------------------------------------------------------------------------------ writers
def write_original_vae(vae: torch.nn.Module, path: str | Path) -> Path:
    """Save an ``AutoencoderKLWan`` as Wan's ``Wan2.1_VAE.pth`` (original key names) at ``path``.

    Writes the sidecar ``Wan2.1_VAE.config.json`` next to it when the latent statistics differ from
    Wan's (e.g. another ``z_dim``). Returns ``path``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    cfg = vae.config
    sd = {k: v.detach().cpu().contiguous() for k, v in vae.state_dict().items()}
    torch.save(to_original_vae_state_dict(sd, cfg.num_res_blocks), path)
    mean, std = list(cfg.latents_mean), list(cfg.latents_std)
    if mean != list(WAN_LATENTS_MEAN) or std != list(WAN_LATENTS_STD):
        stats = {"latents_mean": mean, "latents_std": std}
        (path.parent / ORIGINAL_VAE_CONFIG).write_text(json.dumps(stats, indent=2) + "\n")
    return path


def write_original_text_encoder(
    text_encoder: torch.nn.Module, path: str | Path, dtype: torch.dtype | None = None
) -> Path:
    """Save a ``UMT5EncoderModel`` as Wan's ``models_t5_umt5-xxl-enc-bf16.pth`` (Wan key names).

    :param dtype: cast floating weights (Wan's file is bfloat16); default keeps them as they are.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sd = {
        k: v.detach().cpu().to(dtype=dtype if v.is_floating_point() else None).contiguous()
        for k, v in text_encoder.state_dict().items()
    }
    torch.save(to_wan_t5_state_dict(sd), path)
    return path


# --------------------------------------------------------------------------- components
@dataclass
class WanComponents:
    """The non-sampler parts of Wan2.1 text-to-video.

    :param tokenizer: a transformers tokenizer (umT5's), or ``None`` when not loaded.
    :param text_encoder: a ``transformers.UMT5EncoderModel``, or ``None`` when not loaded (then only the
        ``prompt_embeddings`` can be encoded).
    :param vae: a ``diffusers.AutoencoderKLWan``.
    :param transformer: a :class:`pyrflow_fast.wan.WanDiT`, or ``None`` when not loaded.
    :param layout: ``"diffusers"`` or ``"original"``: the layout it was loaded from.
    :param text_len: prompt embeddings are padded (and prompts truncated) to this many tokens.
    :param scheduler_config: the folder's diffusers scheduler config (``scheduler/scheduler_config.json``),
        or ``None`` (:mod:`pyrflow_fast.solvers` then uses Wan's).
    :param prompt_embeddings: precomputed :meth:`encode_prompt` rows, ``{cleaned prompt: (text_len, text_dim)
        float32}`` on the CPU, made with this text encoder and tokenizer (a closed vocabulary, as the
        :mod:`~pyrflow_fast.shapes` models'); :meth:`encode_prompt` returns them instead of running the encoder.
    """

    tokenizer: Any | None
    text_encoder: torch.nn.Module | None
    vae: torch.nn.Module
    transformer: WanDiT | None
    layout: str
    text_len: int = 512
    scheduler_config: dict[str, Any] | None = None
    prompt_embeddings: Mapping[str, torch.Tensor] | None = None

    # ------------------------------------------------------------------------ properties
    @property
    def text_dim(self) -> int:
        """Width of the prompt embeddings (umT5-XXL: 4096): the text encoder's, else the transformer's, else
        the precomputed embeddings'."""
        if self.text_encoder is not None:
            return int(self.text_encoder.config.d_model)
        if self.transformer is not None:
            return int(self.transformer.config.text_dim)
        if self.prompt_embeddings:
            return int(next(iter(self.prompt_embeddings.values())).shape[-1])
        raise ValueError("the components hold no text encoder, transformer or prompt embeddings: no text width")

    @property
    def z_dim(self) -> int:
        """Latent channels (Wan2.1: 16)."""
        return int(self.vae.config.z_dim)

    @property
    def stride(self) -> tuple[int, int, int]:
        """VAE compression ``(frames, height, width)``; Wan2.1: ``(4, 8, 8)``."""
        cfg = self.vae.config
        spatial = 2 ** (len(cfg.dim_mult) - 1)
        return (2 ** sum(bool(t) for t in cfg.temperal_downsample), spatial, spatial)

    def latent_size(self, frames: int, height: int, width: int) -> tuple[int, int, int]:
        """Latent ``(F', H', W')`` of a ``frames x height x width`` video: ``((F-1)/4+1, H/8, W/8)``.

        :raises ValueError: when ``frames`` is not ``1 + 4k`` or ``height``/``width`` are not
            multiples of 8 (the VAE stride).
        """
        st, sh, sw = self.stride
        if frames < 1 or (frames - 1) % st or height % sh or width % sw or height <= 0 or width <= 0:
            raise ValueError(
                f"video size {frames}x{height}x{width} (frames x height x width) needs frames = 1 + {st}k "
                f"and height, width positive multiples of {sh}"
            )
        return ((frames - 1) // st + 1, height // sh, width // sw)

    def latent_stats(self, device: torch.device | str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-channel ``(mean, std)`` of Wan's latent normalisation, float32, shape ``(1, C, 1, 1, 1)``."""
        cfg = self.vae.config
        shape = (1, self.z_dim, 1, 1, 1)
        mean = torch.tensor(cfg.latents_mean, dtype=torch.float32, device=device).view(shape)
        std = torch.tensor(cfg.latents_std, dtype=torch.float32, device=device).view(shape)
        return mean, std

    def _module_place(self, module: torch.nn.Module) -> tuple[torch.device, torch.dtype]:
        p = next(module.parameters())
        return p.device, p.dtype

    # -------------------------------------------------------------------------- encoding
    @torch.no_grad()
    def encode_prompt(self, prompts: list[str] | str) -> torch.Tensor:
        """Embed prompts as Wan does: ``(B, text_len, text_dim)`` float32.

        Each prompt is cleaned (:func:`clean_prompt`), tokenized with the end-of-sequence token,
        truncated and right-padded to ``text_len``; the encoder runs with the attention mask, and
        every position at or beyond a prompt's true token count is set to zero (Wan keeps the first
        ``seq_len`` embeddings and zero-pads to ``text_len``).
        """
        if isinstance(prompts, str):
            prompts = [prompts]
        if not prompts or not all(isinstance(p, str) for p in prompts):
            raise ValueError("prompts must be a non-empty list of strings")
        cleaned = [clean_prompt(p) for p in prompts]
        table = self.prompt_embeddings or {}
        if all(p in table for p in cleaned):
            return torch.stack([table[p] for p in cleaned])
        if self.text_encoder is None:
            unknown = ", ".join(repr(p) for p in cleaned if p not in table)
            raise ValueError(
                f"no precomputed embedding for {unknown} and no text encoder: load the components with "
                "load_components(..., text_encoder=True)"
            )
        device, _ = self._module_place(self.text_encoder)
        tokens = self.tokenizer(
            cleaned,
            padding="max_length",
            padding_side="right",
            max_length=self.text_len,
            truncation=True,
            add_special_tokens=True,
            return_attention_mask=True,
            return_tensors="pt",
        )
        ids = tokens["input_ids"].to(device)
        mask = tokens["attention_mask"].to(device)
        hidden = self.text_encoder(input_ids=ids, attention_mask=mask).last_hidden_state.float()
        lengths = mask.gt(0).sum(dim=1)
        keep = torch.arange(hidden.shape[1], device=device)[None, :] < lengths[:, None]
        return torch.where(keep[..., None], hidden, hidden.new_zeros(()))

    @torch.no_grad()
    def encode_video(self, video: torch.Tensor) -> torch.Tensor:
        """Encode ``video`` ``(B, 3, F, H, W)`` in ``[-1, 1]`` (``F = 4k + 1``, ``H, W`` multiples
        of 8) to normalised latents ``(B, z_dim, (F-1)/4+1, H/8, W/8)`` float32.

        Uses the posterior mean ``mu`` (Wan encodes deterministically) and returns
        ``(mu - mean) * (1 / std)``, Wan's and diffusers' form of ``(mu - mean) / std``.
        """
        if video.ndim != 5 or video.shape[1] != 3:
            raise ValueError(f"video must be (B, 3, F, H, W), got {tuple(video.shape)}")
        self.latent_size(*video.shape[2:])
        device, dtype = self._module_place(self.vae)
        mu = self.vae.encode(video.to(device=device, dtype=dtype)).latent_dist.mode().float()
        mean, std = self.latent_stats(device)
        return (mu - mean) * (1.0 / std)

    @torch.no_grad()
    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """Decode normalised latents ``(B, z_dim, F', H', W')`` to video ``(B, 3, 4(F'-1)+1, 8H', 8W')``
        in ``[-1, 1]`` (float32): un-normalise ``z / (1 / std) + mean``, decode, clamp."""
        if latents.ndim != 5 or latents.shape[1] != self.z_dim:
            raise ValueError(f"latents must be (B, {self.z_dim}, F, H, W), got {tuple(latents.shape)}")
        device, dtype = self._module_place(self.vae)
        mean, std = self.latent_stats(device)
        z = latents.to(device=device, dtype=torch.float32) / (1.0 / std) + mean
        video = self.vae.decode(z.to(dtype)).sample
        return video.float().clamp(-1.0, 1.0)


def load_components(
    model_dir: str | Path,
    *,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    transformer: bool = True,
    text_len: int = 512,
    text_encoder_dtype: torch.dtype | None = None,
    vae_dtype: torch.dtype | None = None,
    text_encoder_device: torch.device | str | None = None,
    text_encoder: bool = True,
    prompt_embeddings: Mapping[str, torch.Tensor] | None = None,
) -> WanComponents:
    """Load tokenizer, text encoder, VAE and (optionally) the transformer from ``model_dir``.

    :param model_dir: a local Wan2.1 directory in the diffusers or the original layout
        (:func:`~pyrflow_fast.pipeline.layout.find_layout`).
    :param device: where the models go; checked first (:func:`check_device`).
    :param dtype: floating dtype of the weights (Wan itself runs umT5 in bfloat16, the VAE in
        float32 and the transformer with bfloat16 autocast).
    :param transformer: also load the :class:`~pyrflow_fast.wan.WanDiT`.
    :param text_len: prompt length in tokens (Wan: 512); at most the transformer's ``text_len``
        (it zero-pads shorter contexts to that length itself).
    :param text_encoder_dtype: dtype of the text encoder instead of ``dtype``.
    :param vae_dtype: dtype of the VAE instead of ``dtype``.
    :param text_encoder_device: where the text encoder runs instead of ``device`` (``"cpu"``: Wan's
        ``--t5_cpu``, umT5-XXL off the GPU; the embeddings move to the transformer's device).
    :param text_encoder: also load the tokenizer and the text encoder (``False``: neither, nor ``transformers``,
        which takes seconds to import; only ``prompt_embeddings`` can then be encoded).
    :param prompt_embeddings: :attr:`WanComponents.prompt_embeddings`, each ``(text_len, text_dim)`` float32 at
        the final ``text_len`` (checked; the caller vouches that they come from this folder's text encoder).
    :raises ValueError: for an invalid or unavailable device, or components that do not fit together.
    :raises MissingFilesError: (a ``FileNotFoundError``) when files are missing.
    :raises CheckpointError: (a ``ValueError``) when weights do not fit their configuration.
    """
    dev = check_device(device)
    root = Path(model_dir)
    layout = find_layout(root, transformer=transformer)
    if layout == "diffusers":
        files = (root / "tokenizer", root / "text_encoder", root / "vae")
    else:
        files = (root / ORIGINAL_TOKENIZER, root / ORIGINAL_T5, root / ORIGINAL_VAE)
    tokenizer = encoder = None
    if text_encoder:
        tokenizer = load_tokenizer(files[0])
        text_dev = dev if text_encoder_device is None else check_device(text_encoder_device)
        encoder = load_text_encoder(files[1], layout=layout, device=text_dev, dtype=text_encoder_dtype or dtype)
    vae = load_vae(files[2], layout=layout, device=dev, dtype=vae_dtype or dtype)
    dit = None
    if transformer:
        dit = load_wan(root, dtype=dtype, device=dev, text_len=text_len).eval().requires_grad_(False)
        problems = []
        if encoder is not None and dit.config.text_dim != encoder.config.d_model:
            problems.append(
                f"transformer text_dim {dit.config.text_dim} != text encoder width {encoder.config.d_model}"
            )
        if dit.config.in_dim != vae.config.z_dim:
            problems.append(f"transformer in_dim {dit.config.in_dim} != VAE z_dim {vae.config.z_dim}")
        if problems:
            raise ValueError(f"{root}: components do not fit together: " + "; ".join(problems))
        text_len = min(text_len, dit.config.text_len)  # the transformer zero-pads to its own length
    components = WanComponents(
        tokenizer, encoder, vae, dit, layout, text_len, read_scheduler_config(root), prompt_embeddings
    )
    if prompt_embeddings:
        want = (text_len, components.text_dim)
        wrong = {
            p: f"{tuple(e.shape)} {e.dtype}"
            for p, e in prompt_embeddings.items()
            if tuple(e.shape) != want or e.dtype != torch.float32
        }
        if wrong:
            prompt, got = next(iter(wrong.items()))
            raise ValueError(
                f"{root}: {len(wrong)} prompt embeddings are not (text_len, text_dim) = {want} float32, e.g. "
                f"{prompt!r}: {got}; recompute them with this folder's text encoder"
            )
    return components
