"""The transfer sampler's cooldown: the last share of the budget holds the target mixture."""

from __future__ import annotations

import numpy as np
import pytest

from mixpretrain.samplers import SamplerError, build
from mixpretrain.samplers.transfer import project_to_floors

DOMAINS = ["ct", "mri", "pet"]
BUDGET = 20_000.0
PER_STEP = 500.0


def losses(consumed: np.ndarray, step: int) -> dict[str, float]:
    clean = np.array([0.3, 0.2, 0.4]) + np.array([3.0, 4.0, 2.0]) * (1.0 + consumed) ** -np.array([0.3, 0.5, 0.2])
    noisy = clean * np.exp(0.003 * np.random.default_rng(step).standard_normal(3))
    return dict(zip(DOMAINS, noisy.tolist(), strict=True))


def run(**opts) -> list[tuple[float, str, np.ndarray, np.ndarray]]:
    """(consumed fraction before the step, phase, weights, target projected to the floors) per step."""
    s = build("transfer", DOMAINS, seed=0, total_budget=BUDGET, explore_fraction=0.1, min_points=5,
              refit_every=1, warmup_fraction=0.02, family="power", **opts)
    consumed, out = np.zeros(3), []
    for step in range(1, int(BUDGET / PER_STEP) + 1):
        w = s.weights()
        out.append((consumed.sum() / BUDGET, s.phase, w.copy(), project_to_floors(s.target.copy(), s.floors)))
        consumed = consumed + w * PER_STEP
        s.observe(step, consumed, losses(consumed, step), "val")
    return out


def test_cooldown_holds_the_target_without_dither() -> None:
    steps = run(cooldown=0.2)
    late = [(phase, w, t) for frac, phase, w, t in steps if frac >= 0.8 + 1e-9]
    assert late and all(phase == "cooldown" for phase, _, _ in late)
    for _, w, t in late:
        np.testing.assert_allclose(w, t, atol=1e-9)  # no catch-up burst, no dither: the final mixture is the target
    middle = [(w, t) for frac, phase, w, t in steps if phase == "steer"]
    assert middle and max(np.abs(w - t).max() for w, t in middle) > 0.01  # before it, steering + dither move around it


def test_cooldown_prior_blends_the_prior_into_the_final_mixture() -> None:
    prior = np.array([0.5, 0.3, 0.2])  # proportional to `available`
    for share in (1.0, 0.5):
        late = [(w, t) for frac, phase, w, t in run(cooldown=0.2, cooldown_prior=share, available=[500, 300, 200],
                                                     prior="proportional")
                if phase == "cooldown"]
        assert late
        for w, t in late:
            # the target at the step (projected to the floors) blended with the prior; floors are 0.01 here
            np.testing.assert_allclose(w, (1 - share) * t + share * prior, atol=1e-6)


def test_auto_cooldown_prior_needs_evidence_of_recency_effects() -> None:
    s = build("transfer", DOMAINS, seed=0, total_budget=BUDGET)
    assert s._cooldown_prior_share() == 0.0  # nothing seen: the cooldown holds the target
    state = s.state_dict()
    s.load_state_dict({**state, "beta": [0.0, 0.02, 0.0]})  # a forgetting estimate above zero
    assert s._cooldown_prior_share() == 1.0 and s.diagnostics()["cooldown_prior"] == 1.0
    s.load_state_dict({**state, "harmed": {"pet": {"step": 10}}})  # or a harm flag
    assert s._cooldown_prior_share() == 1.0
    assert build("transfer", DOMAINS, total_budget=BUDGET, cooldown_prior=0.3)._cooldown_prior_share() == 0.3


def test_cooldown_zero_steers_to_the_end() -> None:
    steps = run(cooldown=0.0)
    assert all(phase != "cooldown" for _, phase, _, _ in steps)


@pytest.mark.parametrize("opts", [{"cooldown": 1.5}, {"cooldown_prior": -0.1}, {"cooldown_prior": "prior"}])
def test_cooldown_options_are_checked(opts: dict) -> None:
    with pytest.raises(SamplerError, match=next(iter(opts))):
        build("transfer", DOMAINS, total_budget=BUDGET, **opts)
