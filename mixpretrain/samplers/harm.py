"""The evidence of the transfer sampler's reactive guard (``harm_guard``): a domain whose validation
loss rose after the sampler cut its share.

A law in cumulative counts predicts that a domain's loss never rises, so a material rise after a
cut is the sampler's doing (forgetting: the loss depends on the recent mixture). Real cpu_tiny runs
showed it: ct +4.5-6% within a few hundred steps at 1% of the samples. The sampler keeps the state
(which domains are flagged, their floors) and the log line; this module only reads one domain's
validation curve and says whether it shows the harm. Pure numpy, no sampler state.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

MIN_POINTS = 6  # validation points of a domain before its curve is judged
MIN_NOISE = 1e-4  # lower bound of the noise estimate (log loss), so a noise-free curve is not judged on rounding


@dataclass(frozen=True)
class HarmRule:
    """The guard's settings (the sampler's ``harm_*`` options)."""

    guard: float  # k: the rise must exceed k x the noise of one point
    smoothing: float  # EMA weight of the newest point in the smoothed curve, in (0, 1]
    min_rise: float  # and must exceed this (log loss): smaller rises cost less than the floor
    cut: str  # "prior" | "own": below what share a domain counts as cut
    recent: bool  # a recent share (EMA) below the cut line also counts as cut


def smoothed(x: np.ndarray, weight: float) -> np.ndarray:
    """EMA of ``x`` with ``weight`` on the newest value, started at the first."""
    out = np.empty_like(x)
    out[0] = x[0]
    for t in range(1, x.size):
        out[t] = (1 - weight) * out[t - 1] + weight * x[t]
    return out


def point_noise(x: np.ndarray) -> float:
    """sigma of one point's noise from the second differences (a smooth trend does not inflate
    them): median |d2| / (0.6745 sqrt 6), since d2 of independent noise has variance 6 sigma^2."""
    d2 = x[2:] - 2 * x[1:-1] + x[:-2]
    return max(float(np.median(np.abs(d2)) / (0.6745 * np.sqrt(6.0))), MIN_NOISE)


def rise_after_cut(j: int, log_loss: np.ndarray, D: np.ndarray, recent: list[float] | None, steps: np.ndarray,
                   prior: np.ndarray, rule: HarmRule) -> dict[str, Any] | None:
    """Evidence that domain j was harmed, or None. ``log_loss`` [n]: j's validation log losses in
    order; ``D`` [n, K]: consumption at those points; ``recent``: the recent shares (EMA) at the
    newest point; ``steps`` [n]; ``prior`` [K]: the prior weights.

    Harmed: the smoothed loss rose above its running minimum by more than ``guard`` x noise and
    ``min_rise``, and since that minimum j got less than its prior share of the samples (``cut:
    own``: or than its own cumulative share at the minimum; ``recent``: or its recent share is below
    that line)."""
    if log_loss.size < MIN_POINTS:
        return None
    smooth = smoothed(log_loss, rule.smoothing)
    noise = point_noise(log_loss)
    best = int(np.argmin(smooth))
    rise = float(smooth[-1] - smooth[best])
    # A rise must be beyond the noise *and* material: in real runs a flat domain with tiny
    # noise (cells: 0.1% per point) was flagged after a 0.5-1% rise and then held at its full
    # prior share (56% of the data in the island world), which cost far more than the rise.
    if rise <= max(rule.guard * noise, rule.min_rise):
        return None
    since = D[-1] - D[best]
    share = float(since[j] / since.sum()) if since.sum() > 0 else np.nan
    cut_below = float(prior[j])
    if rule.cut == "own":
        # H100 gpu_small seed 2: pet fell from 0.5-0.8 of the samples to 0.01 and its loss rose 25%,
        # but its recent share stayed above its prior (0.10) until the rise no longer cleared the
        # noise; judged against its own share at its best point it is flagged at once.
        cut_below = max(cut_below, float(D[best, j] / D[best].sum()))
    # recent: a catch-up burst right after the best point can lift the share since then above
    # the prior while the domain has been starved since (H100 gpu_small, pet: 0.72 of the samples
    # for 20 steps, then 0.01 for 80 steps, loss +25%).
    starved = rule.recent and recent is not None and recent[j] < cut_below
    if not (share < cut_below or starved):
        return None  # not cut: a rise while the domain kept its share is not the sampler's doing
    return {"rise": rise, "noise": noise, "share_since_best": share, "cut_below": cut_below,
            "recent_share": None if recent is None else float(recent[j]),
            "prior": float(prior[j]), "best_step": int(steps[best])}
