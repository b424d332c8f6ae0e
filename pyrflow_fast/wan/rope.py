"""Wan2.1's 3-axis rotary position embedding, with integer or full-resolution-scaled positions.

Wan splits each head of width ``d`` into a frame part of ``d - 4 (d // 6)`` channels and a height and
a width part of ``2 (d // 6)`` channels each (44 + 42 + 42 for ``d = 128``). Channels are rotated in
adjacent pairs ``(x[2i], x[2i+1])`` (the interleaved form) by the angle ``pos * theta^(-2i/d_axis)``,
where ``d_axis`` is that axis's own channel count.

Two position modes exist. ``integer`` (Wan): token ``(f, h, w)`` of the patch grid sits at position ``(f, h, w)``.

``scaled`` (coarse pyramid stages): positions are expressed in units of the *full-resolution* patch
grid, so that a coarse stage sees the same geometry as the output stage. A coarse cell ``k`` that
covers fine cells ``s k ... s k + s - 1`` (factor ``s``) is placed at their centre
``s k + (s - 1) / 2``; for ``s = 2`` that is ``2k + 0.5``. On the frame axis the first-frame rule of
the pyramid applies: frame 0 is never resampled and stays at position 0, frames ``k >= 1`` cover fine
frames ``1 + s (k - 1) ... 1 + s k - 1`` and sit at ``1 + s (k - 1) + (s - 1) / 2``. The factors come
from the full grid: ``s = (F_full - 1) / (F - 1)`` on frames (``1`` when ``F = 1``) and
``s = H_full / H``, ``s = W_full / W`` in space. With factor 1 the scaled positions are exactly the
integer ones.

Because scaled positions are fractional, angles are computed as ``position * frequency`` in float64
(for integer positions this equals Wan's float64 table entry exactly), then cos and sin are rounded
to float32 and the rotation runs in float32, as in diffusers (float64 for a float64 model).

:func:`rope_tables` is what the model calls: its range check uses the grid sizes only, so the
forward has no data-dependent branch (no host sync, no graph break under ``torch.compile``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = [
    "RopeTableCache",
    "apply_rope",
    "axis_dims",
    "full_patch_grid",
    "grid_positions",
    "rope_cos_sin",
    "rope_frequencies",
    "rope_rotation",
    "rope_tables",
]


def axis_dims(head_dim: int) -> tuple[int, int, int]:
    """Channels per axis (frames, height, width): ``(d - 4 (d // 6), 2 (d // 6), 2 (d // 6))``."""
    hw = 2 * (head_dim // 6)
    return head_dim - 2 * hw, hw, hw


def rope_frequencies(head_dim: int, theta: float = 10000.0, device: torch.device | None = None) -> list[torch.Tensor]:
    """Per-axis float64 frequencies ``theta^(-arange(0, d_axis, 2) / d_axis)`` (22, 21, 21 for d=128)."""
    out = []
    for d in axis_dims(head_dim):
        exponent = torch.arange(0, d, 2, dtype=torch.float64, device=device) / d
        out.append(1.0 / torch.pow(torch.tensor(theta, dtype=torch.float64, device=device), exponent))
    return out


def _axis_positions(n: int, n_full: int | None, first_frame: bool, device: torch.device | None) -> torch.Tensor:
    k = torch.arange(n, dtype=torch.float64, device=device)
    if n_full is None:
        return k
    if first_frame:
        if n == 1:
            return k
        s = (n_full - 1) / (n - 1)
        if s < 1:
            raise ValueError(f"full frame count {n_full} is smaller than the stage's {n}")
        return torch.where(k == 0, k, 1 + s * (k - 1) + (s - 1) / 2)
    s = n_full / n
    if s < 1:
        raise ValueError(f"full size {n_full} is smaller than the stage's {n}")
    return s * k + (s - 1) / 2


def grid_positions(
    grid: Sequence[int],
    full_grid: Sequence[int] | None = None,
    device: torch.device | None = None,
) -> torch.Tensor:
    """Float64 positions of the tokens of a patch grid, shape ``(F*H*W, 3)``, ordered (f, h, w).

    :param grid: the stage's patch grid ``(F, H, W)``.
    :param full_grid: the full-resolution patch grid; ``None`` gives Wan's integer positions,
        otherwise the scaled positions described in the module docstring.
    :param device: where to create the tensor.
    """
    f, h, w = (int(n) for n in grid)
    full = (None, None, None) if full_grid is None else tuple(int(n) for n in full_grid)
    pf = _axis_positions(f, full[0], True, device)
    ph = _axis_positions(h, full[1], False, device)
    pw = _axis_positions(w, full[2], False, device)
    mesh = torch.meshgrid(pf, ph, pw, indexing="ij")
    return torch.stack([m.reshape(-1) for m in mesh], dim=-1)


def rope_cos_sin(
    positions: torch.Tensor, head_dim: int, theta: float = 10000.0, max_positions: int | None = 1024
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of the rotation angles, float32, each ``(L, head_dim // 2)``.

    :param positions: ``(L, 3)`` positions (any real dtype; computed in float64).
    :param head_dim: per-head width.
    :param theta: RoPE base.
    :param max_positions: Wan's table length; a position ``>= max_positions`` raises ValueError
        (``None`` disables the check). The check reads the positions (a host sync, and a graph break
        under ``torch.compile``); :func:`rope_tables` checks a grid from its sizes instead.
    """
    if positions.ndim != 2 or positions.shape[-1] != 3:
        raise ValueError(f"positions must have shape (L, 3), got {tuple(positions.shape)}")
    pos = positions.to(torch.float64)
    if max_positions is not None and pos.numel() and (pos.max() >= max_positions or pos.min() < 0):
        raise ValueError(f"RoPE positions must lie in [0, {max_positions}), got [{pos.min()}, {pos.max()}]")
    freqs = rope_frequencies(head_dim, theta, device=pos.device)
    angles = torch.cat([pos[:, i : i + 1] * freqs[i] for i in range(3)], dim=-1)
    return torch.cos(angles).float(), torch.sin(angles).float()


def rope_tables(
    grid: Sequence[int],
    head_dim: int,
    theta: float = 10000.0,
    full_grid: Sequence[int] | None = None,
    max_positions: int | None = 1024,
    device: torch.device | None = None,
    dtype: torch.dtype = torch.float32,
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin ``(F*H*W, head_dim // 2)`` in ``dtype`` for a patch grid, range-checked from the sizes alone.

    Positions of an axis of ``n`` tokens (``n_full`` on the full grid) lie in ``[0, n)`` (integer) or
    ``[0, n_full)`` (scaled), so ``max(full_grid or grid) <= max_positions`` is the whole check.

    :param grid: the stage's patch grid ``(F, H, W)``.
    :param full_grid: the full-resolution patch grid for scaled positions (``None``: integer positions).
    :param max_positions: Wan's table length (``None`` disables the check).
    :raises ValueError: when a position would reach ``max_positions``.
    """
    extent = tuple(int(n) for n in (grid if full_grid is None else full_grid))
    if max_positions is not None and max(extent) > max_positions:
        raise ValueError(
            f"RoPE positions must lie in [0, {max_positions}): the patch grid {extent} reaches {max(extent) - 1}; "
            "use a smaller latent or a config with a larger rope_max_positions"
        )
    pos = grid_positions(grid, full_grid, device=device)
    freqs = rope_frequencies(head_dim, theta, device=pos.device)
    angles = torch.cat([pos[:, i : i + 1] * freqs[i] for i in range(3)], dim=-1)
    return torch.cos(angles).to(dtype), torch.sin(angles).to(dtype)


def full_patch_grid(rope: str, full_size: Sequence[int] | None, patch: Sequence[int]) -> tuple[int, int, int] | None:
    """The ``full_grid`` of :func:`rope_tables` for a position mode: ``None`` for ``"integer"``, for ``"scaled"``
    the patch grid of the full-resolution latent ``full_size`` ``(F, H, W)`` (ValueError when it is missing)."""
    if rope == "integer":
        return None
    if rope != "scaled":
        raise ValueError(f"rope must be 'integer' or 'scaled', got {rope!r}")
    if full_size is None:
        raise ValueError("rope='scaled' needs full_size=(F, H, W), the full-resolution latent size")
    return tuple(int(n) // q for n, q in zip(full_size, patch, strict=True))


class RopeTableCache:
    """The last ``size`` results of :func:`rope_tables`, keyed on its arguments (least recently added dropped).

    Used in eager mode only: while ``torch.compile`` traces, the tables are computed (a dict of
    tensors would not trace, and a traced graph is built once per shape anyway).
    """

    def __init__(self, size: int = 8) -> None:
        self.size = size
        self._tables: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}

    def __len__(self) -> int:
        return len(self._tables)

    def tables(
        self,
        grid: Sequence[int],
        head_dim: int,
        theta: float,
        full_grid: Sequence[int] | None,
        max_positions: int | None,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """:func:`rope_tables` of these arguments, from the cache when it holds them."""
        full = None if full_grid is None else tuple(int(n) for n in full_grid)
        args = (tuple(int(n) for n in grid), head_dim, theta, full, max_positions)
        if torch.compiler.is_compiling():
            return rope_tables(*args, device=device, dtype=dtype)
        key = (*args, torch.device(device) if device is not None else torch.device("cpu"), dtype)
        if key not in self._tables:
            if len(self._tables) >= self.size:
                self._tables.pop(next(iter(self._tables)))
            self._tables[key] = rope_tables(*args, device=device, dtype=dtype)
        return self._tables[key]


def rope_rotation(cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor | None:
    """The unit complex numbers ``cos + i sin`` as ``(L, 1, head_dim // 2)``, broadcasting over the heads
    (complex64 for float32 tables, complex128 for float64): the factor :func:`apply_rope` multiplies by.
    ``None`` under ``torch.compile`` and for tables in other dtypes (bf16 under an FSDP mixed-precision
    policy: no bf16 complex type), where :func:`apply_rope` uses the real form."""
    if torch.compiler.is_compiling() or cos.dtype not in (torch.float32, torch.float64):
        return None
    return torch.complex(cos, sin)[:, None, :]


def apply_rope(
    x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, rotation: torch.Tensor | None = None
) -> torch.Tensor:
    """Rotate adjacent channel pairs of ``x`` (``(B, L, heads, head_dim)``) in ``cos``'s dtype.

    ``cos`` and ``sin`` are ``(L, head_dim // 2)``; ``rotation`` is their :func:`rope_rotation`, passed
    when q and k share it. Eager, each pair is one complex number times ``cos + i sin``: a single
    vectorised pass (the real form ``(x1 c - x2 s, x1 s + x2 c)`` gives the same float32 values and
    takes ~15x longer on the CPU, six ops and a strided stack). Under ``torch.compile`` the real form
    runs (inductor has no complex code generation and fuses it into one kernel anyway). Returns
    ``cos``'s dtype (float32 from :func:`rope_cos_sin`).
    """
    rotation = rope_rotation(cos, sin) if rotation is None else rotation
    if rotation is None:
        x1, x2 = x.to(cos.dtype).unflatten(-1, (-1, 2)).unbind(-1)
        c, s = cos[:, None, :], sin[:, None, :]
        return torch.stack((x1 * c - x2 * s, x1 * s + x2 * c), dim=-1).flatten(-2)
    pairs = torch.view_as_complex(x.to(cos.dtype).contiguous().unflatten(-1, (-1, 2)))
    return torch.view_as_real(pairs * rotation).flatten(-2)
