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


def apply_config_after_resume(optimizer: torch.optim.Optimizer, scheduler: torch.optim.lr_scheduler.LambdaLR,
                              cfg: TrainConfig) -> None:
    """Make a restored optimizer and scheduler follow the *current* config from the next step on.

    Why: a checkpoint restores each parameter group's ``lr`` (computed by the old schedule), its
    ``weight_decay`` and the scheduler's peak LRs, while the schedule function is built from the
    new config. Without this, the first step after extending ``train.max_steps`` trained at the
    old schedule's LR (a WSD run at ``min_lr`` instead of the peak), and a ``train.lr`` or
    ``train.weight_decay`` changed under ``train.allow_config_change`` was silently ignored.
    The decay group is the first one (``engine.param_groups``); the no-decay group keeps 0."""
    scheduler.base_lrs = [float(cfg.lr)] * len(optimizer.param_groups)
    for i, (group, fn) in enumerate(zip(optimizer.param_groups, scheduler.lr_lambdas, strict=True)):
        group["initial_lr"] = float(cfg.lr)
        group["lr"] = float(cfg.lr) * fn(scheduler.last_epoch)  # the LR of the next optimizer step
        if i == 0:
            group["weight_decay"] = float(cfg.weight_decay)
    scheduler._last_lr = [g["lr"] for g in optimizer.param_groups]
