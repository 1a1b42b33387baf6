"""Learning-rate schedules as multipliers of the peak LR, handed to DeepSpeed as a LambdaLR.

DeepSpeed steps a client scheduler once per optimizer step (at the gradient-accumulation
boundary) and saves / restores its state with the checkpoint, so a LambdaLR is all we need and
the schedule stays a pure function of the step (easy to test, identical on every rank).

- ``cosine``: linear warm-up to the peak, then half a cosine down to ``min_lr``.
- ``wsd`` (warm-up, stable, decay): linear warm-up, constant peak, then a linear decay to
  ``min_lr`` over the last ``decay_fraction`` of the steps. A WSD run can be extended from its
  stable phase, which suits scaling-law sweeps over budgets.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from mixpretrain.config import TrainConfig


def lr_multiplier(cfg: TrainConfig) -> Callable[[int], float]:
    """step (0-based, optimizer steps) -> LR / peak LR."""
    total = max(cfg.max_steps, 1)
    warm = min(cfg.warmup_steps, total)
    floor = min(cfg.min_lr / cfg.lr, 1.0) if cfg.lr > 0 else 0.0
    decay_start = total - max(int(round(cfg.decay_fraction * total)), 1)

    def cosine(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        progress = min((step - warm) / max(total - warm, 1), 1.0)
        return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))

    def wsd(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        if step < max(decay_start, warm):
            return 1.0
        progress = min((step - decay_start) / max(total - decay_start, 1), 1.0)
        return floor + (1.0 - floor) * (1.0 - progress)

    return cosine if cfg.schedule == "cosine" else wsd


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lr_multiplier(cfg))
