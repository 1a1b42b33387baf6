"""Fixed 3-D sin-cos position embeddings for anisotropic token grids.

Each axis gets its own coordinate and its own block of channels (``2 * (dim // 6)`` each:
half sin, half cos over geometric frequencies), so a 12 x 12 x 4 grid is embedded as such,
not as a cube. Widths that are not a multiple of 6 (e.g. 1024) are padded with zero channels
instead of being refused. Computed in float64, then stored as float32.
"""

from __future__ import annotations

import torch

POS_EMBED_KIND = "sincos3d"


def sincos_3d(grid: tuple[int, int, int], dim: int, temperature: float = 10000.0) -> torch.Tensor:
    """[gd*gh*gw, dim] embedding; row t is the grid point (i, j, k) with t = (i*gh + j)*gw + k."""
    per_axis = 2 * (dim // 6)
    if per_axis == 0:
        raise ValueError(f"sin-cos position embedding needs a width of at least 6, got {dim}")
    half = per_axis // 2
    omega = 1.0 / temperature ** (torch.arange(half, dtype=torch.float64) / half)
    axes = [torch.arange(n, dtype=torch.float64) for n in grid]
    coords = torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1).reshape(-1, 3)
    parts = []
    for a in range(3):
        angle = coords[:, a, None] * omega[None, :]
        parts += [torch.sin(angle), torch.cos(angle)]
    emb = torch.cat(parts, dim=1)
    pad = dim - emb.shape[1]
    if pad:
        emb = torch.cat([emb, emb.new_zeros(emb.shape[0], pad)], dim=1)
    return emb.float()
