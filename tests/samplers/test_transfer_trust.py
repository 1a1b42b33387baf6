"""The transfer sampler's skill test: a law that forecasts no better than persistence ("the next
loss equals the last one") does not move the mixture away from the prior."""

from __future__ import annotations

import numpy as np
import pytest

from mixpretrain.samplers import SamplerError, build

DOMAINS = ["ct", "mri", "pet"]
AVAILABLE = [50_000, 30_000, 20_000]
BUDGET = 40_000.0
PER_STEP = 1_000.0


def run(wandering: bool, **opts) -> object:
    s = build("transfer", DOMAINS, seed=0, total_budget=BUDGET, available=AVAILABLE, min_points=5, refit_every=1,
              warmup_fraction=0.02, cooldown=0.0, **opts)
    consumed, drift = np.zeros(3), np.zeros(3)
    for step in range(1, int(BUDGET / PER_STEP) + 1):
        consumed = consumed + s.weights() * PER_STEP
        clean = np.array([0.3, 0.2, 0.1]) + np.array([2.0, 1.0, 6.0]) * (1.0 + consumed) ** -np.array([0.2, 0.2, 0.4])
        rng = np.random.default_rng(step)
        if wandering:  # the losses also wander (as under an LR schedule or forgetting): a random walk in log space
            drift = drift + 0.03 * rng.standard_normal(3)
        loss = clean * np.exp(drift + 0.002 * rng.standard_normal(3))
        s.observe(step, consumed, dict(zip(DOMAINS, loss.tolist(), strict=True)), "val")
    return s


def test_a_law_without_skill_leaves_the_prior() -> None:
    s = run(wandering=True, trust="skill")
    scores = s.diagnostics()["family_scores"]
    assert scores[s.chosen] >= scores["persistence"]  # a law in cumulative counts cannot forecast the walk
    assert s.last_refit.get("untrusted") is True
    np.testing.assert_allclose(s.target, s.prior_w, atol=0.03)
    blind = run(wandering=True)  # the default (trust: always) acts on the law's optimum anyway
    assert np.abs(blind.target - blind.prior_w).max() > 0.1


def test_a_law_with_skill_moves_the_mixture() -> None:  # the same laws without the walk
    s = run(wandering=False, trust="skill")
    scores = s.diagnostics()["family_scores"]
    assert scores[s.chosen] < scores["persistence"]
    assert "untrusted" not in s.last_refit
    assert s.target[2] > s.prior_w[2] + 0.1  # toward pet, the fastest learner


def test_trust_option_is_checked() -> None:
    with pytest.raises(SamplerError, match="trust"):
        build("transfer", DOMAINS, total_budget=BUDGET, trust="sometimes")
