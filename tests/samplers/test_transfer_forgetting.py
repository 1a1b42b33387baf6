"""The transfer sampler's forgetting estimate: a domain whose loss rises when its recent share falls
below its prior share gets a penalty (beta) that keeps later allocations from cutting it as far."""

from __future__ import annotations

import numpy as np
import pytest

from mixpretrain.samplers import SamplerError, build

DOMAINS = ["ct", "mri", "pet"]
AVAILABLE = [50_000, 25_000, 25_000]  # prior (proportional) shares 0.5 / 0.25 / 0.25
PRIOR = np.array([0.5, 0.25, 0.25])
BUDGET = 60_000.0
PER_STEP = 1_000.0
SCALE = 0.1 * BUDGET  # the recent-share EMA's time constant, as the sampler's default


def clean_loss(consumed: np.ndarray) -> np.ndarray:
    # ct learns slowly, pet fast: a law in cumulative counts moves data from ct to pet.
    return np.array([0.5, 0.4, 0.3]) + np.array([1.0, 2.0, 6.0]) * (1.0 + consumed) ** -np.array([0.15, 0.3, 0.4])


def run(forget_ct: float, **opts) -> tuple[object, np.ndarray]:
    """Drive the sampler through a world where ct's loss is x (1 + forget_ct x shortfall of its recent
    share); returns the sampler and the realised consumption shares."""
    s = build("transfer", DOMAINS, seed=0, total_budget=BUDGET, available=AVAILABLE, family="power", min_points=5,
              refit_every=1, warmup_fraction=0.02, harm_guard=0.0, **opts)
    consumed, recent = np.zeros(3), None
    for step in range(1, int(BUDGET / PER_STEP) + 1):
        w = s.weights()
        consumed = consumed + w * PER_STEP
        recent = w.copy() if recent is None else recent + (1 - np.exp(-PER_STEP / SCALE)) * (w - recent)
        penalty = 1.0 + np.array([forget_ct, 0.0, 0.0]) * np.maximum(0.0, 1.0 - recent / PRIOR)
        noise = np.exp(0.003 * np.random.default_rng(step).standard_normal(3))
        s.observe(step, consumed, dict(zip(DOMAINS, (clean_loss(consumed) * penalty * noise).tolist(), strict=True)), "val")
    return s, consumed / consumed.sum()


def test_forgetting_is_estimated_and_limits_the_cut() -> None:
    fitted, shares = run(forget_ct=0.3)
    beta = fitted.diagnostics()["forgetting"]
    assert beta["ct"] > 0.05  # the rise after ct's cut is in the residuals
    assert beta["mri"] == 0.0 and beta["pet"] == 0.0  # their losses never rose with a shortfall
    _, blind = run(forget_ct=0.3, forgetting="off")
    assert shares[0] > blind[0] + 0.02  # with the penalty the law cuts ct less


def test_no_forgetting_no_penalty() -> None:
    s, _ = run(forget_ct=0.0)
    assert all(b == 0.0 for b in s.diagnostics()["forgetting"].values())


def test_forgetting_options_are_checked() -> None:
    with pytest.raises(SamplerError, match="forgetting"):
        build("transfer", DOMAINS, total_budget=BUDGET, forgetting="maybe")
