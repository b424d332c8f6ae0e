r"""peft LoRA adapters on the attention and FFN Linear layers of a :class:`~pyrflow_fast.wan.WanDiT`.

Every adapted Linear ``W`` (:data:`TARGETS` in every block) gets a peft ``lora.Linear`` layer
(:class:`peft.LoraConfig`, peft's initialisation: kaiming-uniform ``A``, zero ``B``, so training
starts at the base model) with one named adapter per set: ``default`` for a shared LoRA,
``stage0 ... stage{S-1}`` for per-stage LoRA. Adapter ``s`` holds ``lora_A[s]`` ``(r, in)`` and
``lora_B[s]`` ``(out, r)``; the layer computes ``W x + (alpha / r) B_s A_s x`` with ``s`` the
active adapter.

The peft layers live in this module, not in the model: each acts through a forward hook on its
base Linear, so the base keeps Wan's state-dict keys (checkpoints, FSDP root sharding, teacher
copies and merges see a plain WanDiT) and this module's state dict holds only the adapters
(``layers.{i}.lora_A.{adapter}.weight``). Files in diffusers' and ComfyUI's LoRA formats are read and
written by :mod:`pyrflow_fast.lora_formats` (:meth:`LoRA.save`, :meth:`LoRA.load`,
:meth:`LoRA.from_files`).

Per-stage LoRA selects the adapter of the sub-batch's stage; :meth:`LoRA.merged_state_dict` folds
one adapter into the weights: one merged checkpoint per stage for per-stage LoRA (each exact at
its stage only), a single one for shared LoRA.

>>> from pyrflow_fast.wan import WanDiT
>>> base = WanDiT("tiny")
>>> lora = LoRA(base, rank=2, alpha=4.0, num_sets=3)
>>> len(lora.layers), lora.adapter_names, tuple(lora.layers[0].lora_A["stage1"].weight.shape), lora.scale
(20, ('stage0', 'stage1', 'stage2'), (2, 32), 2.0)
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch
from torch import nn

__all__ = [
    "LORA_FILE",
    "LoRA",
    "TARGETS",
    "adapter_names",
    "load_card_lora",
    "stage_lora_file",
    "stage_models",
    "write_lora_export",
]

TARGETS = (
    "self_attn.q",
    "self_attn.k",
    "self_attn.v",
    "self_attn.o",
    "cross_attn.q",
    "cross_attn.k",
    "cross_attn.v",
    "cross_attn.o",
    "ffn.0",
    "ffn.2",
)
"""Adapted Linear layers inside every block (attention projections and both FFN layers)."""


def adapter_names(num_sets: int) -> tuple[str, ...]:
    """peft adapter names of ``num_sets`` sets: ``("default",)`` for one, ``("stage0", ...)`` for several."""
    return ("default",) if num_sets == 1 else tuple(f"stage{i}" for i in range(num_sets))


@functools.cache
def _adapter_class() -> type:
    """peft's ``lora.Linear`` whose forward is the adapter's term alone (its base layer is the model's)."""
    from peft.tuners.lora import Linear as PeftLinear

    class Adapter(PeftLinear):
        def forward(self, x: torch.Tensor, name: str | None) -> torch.Tensor | None:
            """peft's ``lora.Linear`` forward for adapter ``name`` less the base term (no dropout), in the
            adapters' dtype: ``scaling * B A x``; ``None`` for ``name = None`` (adapters off). The LoRA hook calls
            the module (not its submodules) so that FSDP gathers its group around the call."""
            if name is None:
                return None
            lora_a, lora_b = self.lora_A[name], self.lora_B[name]
            return lora_b(lora_a(x.to(lora_a.weight.dtype))) * self.scaling[name]

    return Adapter


def _peft_layer(linear: nn.Linear, names: Sequence[str], rank: int, alpha: float) -> nn.Module:
    """A peft ``lora.Linear`` with adapters ``names`` on ``linear``, its base layer detached (the hook runs it)."""
    from peft import LoraConfig

    config = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=0.0, init_lora_weights=True)
    layer = _adapter_class()(linear, names[0], config, r=rank, lora_alpha=alpha)
    for name in names[1:]:
        layer.update_layer(name, rank, lora_alpha=alpha, config=config)
    # not a submodule: the base weights stay the model's (keys, sharding, dtype), not this module's
    del layer._modules["base_layer"]
    # peft trains the active adapter only; every set is trained here (the hook picks the stage's)
    layer.requires_grad_(True)
    return layer


class LoRA(nn.Module):
    """Adapters for every Linear of :data:`TARGETS` in ``model.blocks``.

    :param model: the base :class:`~pyrflow_fast.wan.WanDiT` (hooks are registered on it).
    :param rank: adapter rank ``r``.
    :param alpha: scale numerator (``alpha / r``); 0 means ``alpha = r``.
    :param num_sets: adapter sets (``S`` for per-stage LoRA, named ``stage{i}``; 1 for a shared one,
        named ``default``).
    """

    def __init__(self, model: nn.Module, rank: int, alpha: float = 0.0, num_sets: int = 1) -> None:
        super().__init__()
        if rank < 1:
            raise ValueError(f"LoRA rank must be >= 1, got {rank}")
        if num_sets < 1:
            raise ValueError(f"LoRA num_sets must be >= 1, got {num_sets}")
        self.rank = rank
        self.alpha = float(alpha) if alpha else float(rank)
        self.scale = self.alpha / rank
        self.num_sets = num_sets
        self.adapter_names = adapter_names(num_sets)
        self.active = 0
        self.enabled = True
        self.names: list[str] = []
        """Wan module name of every layer (``blocks.{i}.{target}``), in :attr:`layers` order."""
        layers = []
        self._handles = []
        for i, block in enumerate(model.blocks):
            for target in TARGETS:
                linear = block.get_submodule(target)
                layers.append(_peft_layer(linear, self.adapter_names, rank, self.alpha))
                self.names.append(f"blocks.{i}.{target}")
                self._handles.append(linear.register_forward_hook(self._hook(len(layers) - 1)))
        self.layers = nn.ModuleList(layers)

    def _hook(self, index: int):
        def hook(module: nn.Module, inputs: tuple, output: torch.Tensor) -> torch.Tensor:
            # called also with the adapters off: an FSDP group of a block and its adapters reshards when all ran
            delta = self.layers[index](inputs[0], self.adapter_names[self.active] if self.enabled else None)
            return output if delta is None else output + delta.to(output.dtype)

        return hook

    def block_layers(self, block: int) -> list[nn.Module]:
        """The adapter layers of block ``block`` (FSDP shards them in the block's group)."""
        return [layer for layer, name in zip(self.layers, self.names) if name.startswith(f"blocks.{block}.")]

    @torch.no_grad()
    def reset_adapters(self) -> None:
        """Initialise every adapter as peft's construction does, drawing the same numbers from the global RNG in the
        same order: ``lora_A`` and ``lora_B`` as new ``nn.Linear`` s, then peft's ``reset_lora_parameters``
        (kaiming-uniform ``A``, zero ``B``). For adapters built on the meta device and materialised later."""
        for layer in self.layers:
            for name in self.adapter_names:
                layer.lora_A[name].reset_parameters()
                layer.lora_B[name].reset_parameters()
                layer.reset_lora_parameters(name, True)

    def select(self, stage: int) -> None:
        """Make the adapter of ``stage`` active (always ``default`` for a shared LoRA)."""
        if self.num_sets > 1 and not 0 <= stage < self.num_sets:
            raise IndexError(f"stage {stage} has no LoRA adapter; this per-stage LoRA has {self.num_sets}")
        self.active = stage if self.num_sets > 1 else 0

    @contextlib.contextmanager
    def disabled(self) -> Iterator[None]:
        """Run the base model without adapters (the distillation teacher)."""
        enabled, self.enabled = self.enabled, False
        try:
            yield
        finally:
            self.enabled = enabled

    def remove(self) -> None:
        """Detach the hooks from the base model."""
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def adapter_keys(self, index: int, stage: int) -> tuple[str, str]:
        """State-dict keys of layer ``index``'s ``A`` and ``B`` in set ``stage``."""
        name = self.adapter_names[stage]
        return f"layers.{index}.lora_A.{name}.weight", f"layers.{index}.lora_B.{name}.weight"

    @torch.no_grad()
    def stage_tensors(
        self, stage: int = 0, adapters: dict[str, torch.Tensor] | None = None
    ) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """``{Wan module name: (A (r, in), B (out, r))}`` of set ``stage``, from ``adapters`` (this module's
        state dict, e.g. an EMA) or the current parameters."""
        adapters = adapters if adapters is not None else {k: v.detach() for k, v in self.state_dict().items()}
        out = {}
        for i, name in enumerate(self.names):
            ka, kb = self.adapter_keys(i, stage)
            out[name] = (adapters[ka], adapters[kb])
        return out

    @torch.no_grad()
    def merged_state_dict(
        self, base_state: dict[str, torch.Tensor], stage: int = 0, adapters: dict[str, torch.Tensor] | None = None
    ) -> dict[str, torch.Tensor]:
        """Base weights with set ``stage`` folded in: ``W + (alpha / r) B_s A_s`` (float32 math).

        :param base_state: the base model's state dict (Wan key names).
        :param adapters: this module's state dict to merge (default: the current parameters).
        """
        out = dict(base_state)
        for name, (a, b) in self.stage_tensors(stage, adapters).items():
            key = f"{name}.weight"
            w = base_state[key]
            out[key] = (w.float() + self.scale * (b.float() @ a.float()).to(w.device)).to(w.dtype)
        return out

    # ------------------------------------------------------------------- interchange files
    def save(
        self,
        path: str | Path,
        stage: int = 0,
        *,
        form: str = "diffusers",
        adapters: dict[str, torch.Tensor] | None = None,
    ) -> Path:
        """Write set ``stage`` as a LoRA file in ``form`` (:data:`~pyrflow_fast.lora_formats.FORMS`):
        ``diffusers`` (``transformer.blocks.0.attn1.to_q.lora_A.weight``, ``WanPipeline.load_lora_weights``)
        or ``comfyui`` (``diffusion_model.blocks.0.self_attn.q.lora_A.weight`` + ``.alpha``)."""
        from ..lora_formats import save_lora_file

        return save_lora_file(path, self.stage_tensors(stage, adapters), self.rank, self.alpha, form=form)

    @torch.no_grad()
    def load(self, path: str | Path, stage: int = 0) -> None:
        """Read a LoRA file (diffusers, peft or ComfyUI key form; :func:`~pyrflow_fast.lora_formats.read_lora_file`)
        into set ``stage``. Modules the file does not cover get ``B = 0`` (no change there); ValueError
        for keys that match no adapted layer, or another rank or alpha than this LoRA's."""
        from ..lora_formats import read_lora_file

        lora_file = read_lora_file(path, self.names)
        if lora_file.rank != self.rank:
            raise ValueError(
                f"{path}: LoRA rank {lora_file.rank}, but this LoRA has rank {self.rank}; "
                f"create it with rank={lora_file.rank} (or use LoRA.from_files)"
            )
        if lora_file.alpha != self.alpha:
            raise ValueError(
                f"{path}: LoRA alpha {lora_file.alpha:g}, but this LoRA has alpha {self.alpha:g}; "
                f"create it with alpha={lora_file.alpha:g} (or use LoRA.from_files)"
            )
        name = self.adapter_names[stage]
        for i, module in enumerate(self.names):
            layer = self.layers[i]
            a, b = layer.lora_A[name].weight, layer.lora_B[name].weight
            if module in lora_file.tensors:
                fa, fb = lora_file.tensors[module]
                if tuple(fa.shape) != tuple(a.shape) or tuple(fb.shape) != tuple(b.shape):
                    raise ValueError(
                        f"{path}: {module} has A {tuple(fa.shape)} and B {tuple(fb.shape)}, "
                        f"the model needs A {tuple(a.shape)} and B {tuple(b.shape)}"
                    )
                a.copy_(fa)
                b.copy_(fb)
            else:
                b.zero_()

    @classmethod
    def from_files(cls, model: nn.Module, paths: Sequence[str | Path]) -> LoRA:
        """A LoRA on ``model`` with the rank and alpha of ``paths``' files: one file, a shared LoRA; ``S``
        files, a per-stage one (file ``i`` is set ``stage{i}``)."""
        from ..lora_formats import read_lora_file

        if not paths:
            raise ValueError("LoRA.from_files needs at least one LoRA file")
        names = [f"blocks.{i}.{t}" for i in range(len(model.blocks)) for t in TARGETS]
        first = read_lora_file(paths[0], names)
        lora = cls(model, first.rank, first.alpha, num_sets=len(paths))
        device = next(model.parameters()).device
        lora.to(device)
        for stage, path in enumerate(paths):
            lora.load(path, stage)
        return lora


LORA_FILE = "pytorch_lora_weights.safetensors"
"""diffusers' default LoRA file name (``WanPipeline.load_lora_weights(folder)`` reads it)."""


def stage_lora_file(stage: int) -> str:
    """The per-stage LoRA file of an export: ``pytorch_lora_weights_stage{stage}.safetensors``."""
    return f"pytorch_lora_weights_stage{stage}.safetensors"


def write_lora_export(
    folder: Path,
    lora: LoRA,
    base_sd: dict[str, torch.Tensor],
    card,
    model_cfg,
    adapters: dict[str, torch.Tensor] | None = None,
    **dir_kwargs,
) -> list[Path]:
    """Export a LoRA finetune of the base ``base_sd`` (Wan keys) as model directories; returns the files written.

    Shared LoRA: ``folder`` is the merged model, and ``folder/lora/pytorch_lora_weights.safetensors``
    the adapter alone (for the base model; a subfolder, so loading both never applies it twice).
    Per-stage LoRA (``S`` sets): ``folder`` is the base model with one diffusers LoRA file per stage
    (:func:`stage_lora_file`) listed in its card's ``lora_files``, which ``pyrflow-sample`` switches at
    every stage transition (:func:`load_card_lora`) and ``WanPipeline.load_lora_weights(folder,
    weight_name=..., adapter_name="stage0")`` loads; ``folder/stage{i}`` holds the model with set ``i``
    merged (exact at stage ``i`` only).

    :param lora: the :class:`~pyrflow_fast.train.lora.LoRA`.
    :param card: the export's :class:`~pyrflow_fast.card.ModelCard` (without ``lora_files``).
    :param adapters: ``lora``'s state dict to export (e.g. its EMA; default: the current parameters).
    :param dir_kwargs: ``source_path``, ``layout``, ``link_components`` of :func:`~pyrflow_fast.card.write_model_dir`.
    """
    from dataclasses import replace

    from ..card import write_model_dir

    folder = Path(folder)
    if lora.num_sets == 1:
        write_model_dir(folder, lora.merged_state_dict(base_sd, 0, adapters), card, model_cfg, **dir_kwargs)
        return [lora.save(folder / "lora" / LORA_FILE, 0, adapters=adapters)]
    files = [stage_lora_file(i) for i in range(lora.num_sets)]
    write_model_dir(folder, base_sd, replace(card, lora_files=tuple(files)), model_cfg, **dir_kwargs)
    written = [lora.save(folder / f, i, adapters=adapters) for i, f in enumerate(files)]
    for i in range(lora.num_sets):
        write_model_dir(
            folder / f"stage{i}", lora.merged_state_dict(base_sd, i, adapters), card, model_cfg, **dir_kwargs
        )
    return written


def load_card_lora(model_dir: str | Path, transformer: nn.Module, card=None) -> LoRA | None:
    """The :class:`LoRA` of the LoRA files a model directory's card lists (``lora_files``; one per stage for
    per-stage LoRA, one for a shared one) on ``transformer`` (hooks registered, adapters on its device);
    ``None`` when the card lists none.

    Sampling: ``BackboneDenoiser(backbone, lora=lora)`` and :func:`stage_models` of it, which switch the
    adapter at every stage transition.
    """
    from ..card import ModelCard

    card = card if card is not None else ModelCard.load(model_dir)
    if not card.lora_files:
        return None
    return LoRA.from_files(transformer, [Path(model_dir) / f for f in card.lora_files]).eval()


def stage_models(model: nn.Module, num_stages: int) -> nn.Module | list:
    """The samplers' model(s) of a :class:`~pyrflow_fast.contract.BackboneDenoiser` ``model``: with a per-stage
    LoRA (``model.lora``), one denoiser per stage (finest first) that selects its stage's adapter, so
    :func:`~pyrflow_fast.samplers.sample_euler` / ``sample_few_step`` switch adapter at every stage transition;
    otherwise ``model`` itself. Wrap each entry in :func:`~pyrflow_fast.samplers.guided` for CFG.
    """
    lora = getattr(model, "lora", None)
    if lora is None or lora.num_sets == 1:
        return model
    if lora.num_sets != num_stages:
        raise ValueError(f"a per-stage LoRA with {lora.num_sets} adapters cannot sample {num_stages} stages")
    return [functools.partial(model, stage=i) for i in range(num_stages)]
