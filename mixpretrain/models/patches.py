"""Patch geometry shared by the MAE, its encoder and the benchmark.

Token order is (D, H, W) row-major over the patch grid, the same order as the 3-D sin-cos
position embedding (``posembed.sincos_3d``) and as ``Conv3d(...).flatten(2)``. Inside one
patch the voxels are ordered (pd, ph, pw, C), channel last, as in the original MAE.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

AXES = ("D", "H", "W")

Size3 = tuple[int, int, int]


def to_3tuple(value: int | Sequence[int], name: str) -> Size3:
    """One int (a cube) or three ints -> a 3-tuple of positive ints, or a ValueError naming ``name``."""
    if isinstance(value, bool):
        raise ValueError(f"{name}: expected one int or three ints, got {value!r}")
    if isinstance(value, int):
        value = (value, value, value)
    try:
        out = tuple(int(v) for v in value)
    except TypeError as exc:
        raise ValueError(f"{name}: expected one int or three ints, got {value!r}") from exc
    if len(out) != 3 or any(v <= 0 for v in out) or any(int(v) != v for v in value):
        raise ValueError(f"{name}: expected one int or three positive ints, got {value!r}")
    return out  # type: ignore[return-value]


def grid_shape(img_size: Size3, patch_size: Size3) -> Size3:
    """Token grid (gd, gh, gw); every image axis must be a multiple of the patch on that axis."""
    for axis, size, patch in zip(AXES, img_size, patch_size, strict=True):
        if size % patch:
            raise ValueError(
                f"img_size {tuple(img_size)}: axis {axis} has size {size}, which is not a multiple of "
                f"patch_size {patch} on that axis"
            )
    return tuple(s // p for s, p in zip(img_size, patch_size, strict=True))  # type: ignore[return-value]


def patchify(x: torch.Tensor, patch_size: Size3) -> torch.Tensor:
    """[B, C, D, H, W] -> [B, N, pd*ph*pw*C] (a copy; the view cannot stay contiguous)."""
    if x.ndim != 5:
        raise ValueError(f"patchify: expected a [B, C, D, H, W] tensor, got shape {tuple(x.shape)}")
    b, c, d, h, w = x.shape
    pd, ph, pw = patch_size
    gd, gh, gw = grid_shape((d, h, w), patch_size)
    x = x.reshape(b, c, gd, pd, gh, ph, gw, pw)
    x = x.permute(0, 2, 4, 6, 3, 5, 7, 1)  # b, gd, gh, gw, pd, ph, pw, c
    return x.reshape(b, gd * gh * gw, pd * ph * pw * c)


def unpatchify(p: torch.Tensor, patch_size: Size3, grid: Size3, in_chans: int) -> torch.Tensor:
    """Exact inverse of :func:`patchify`: [B, N, pd*ph*pw*C] -> [B, C, D, H, W]."""
    pd, ph, pw = patch_size
    gd, gh, gw = grid
    expect = (gd * gh * gw, pd * ph * pw * in_chans)
    if p.ndim != 3 or tuple(p.shape[1:]) != expect:
        raise ValueError(f"unpatchify: expected [B, {expect[0]}, {expect[1]}], got shape {tuple(p.shape)}")
    b = p.shape[0]
    x = p.reshape(b, gd, gh, gw, pd, ph, pw, in_chans)
    x = x.permute(0, 7, 1, 4, 2, 5, 3, 6)  # b, c, gd, pd, gh, ph, gw, pw
    return x.reshape(b, in_chans, gd * pd, gh * ph, gw * pw)


def check_input(x: torch.Tensor, in_chans: int, img_size: Size3, who: str) -> None:
    """Shape check before any compute, with the offending axis named (metadata only: no host sync)."""
    if x.ndim != 5:
        raise ValueError(f"{who}: expected input [B, {in_chans}, D, H, W], got shape {tuple(x.shape)}")
    if x.shape[1] != in_chans:
        raise ValueError(f"{who}: input has {x.shape[1]} channels, the model was built for in_chans={in_chans}")
    for axis, got, want in zip(AXES, x.shape[2:], img_size, strict=True):
        if got != want:
            raise ValueError(
                f"{who}: input axis {axis} has size {got}, the model was built for img_size {tuple(img_size)} "
                f"(got input shape {tuple(x.shape)}); rebuild or reload the encoder with that img_size"
            )
