"""The transfer sampler's recency estimates (``forgetting``): a domain whose loss rises when its recent
share falls below its prior share gets a penalty (beta) that keeps later allocations from cutting it
as far; with ``forgetting: company`` a domain whose loss rises with another domain's recent share
above its prior (poor company) makes the allocation give that other domain less."""

from __future__ import annotations

import numpy as np
import pytest

from mixpretrain.samplers import SamplerError, build
from mixpretrain.train.trainer import state_digest

DOMAINS = ["ct", "mri", "pet"]
AVAILABLE = [50_000, 25_000, 25_000]  # prior (proportional) shares 0.5 / 0.25 / 0.25
PRIOR = np.array([0.5, 0.25, 0.25])
BUDGET = 60_000.0
PER_STEP = 1_000.0
SCALE = 0.1 * BUDGET  # the recent-share EMA's time constant, as the sampler's default
# The world's recency effects are defined against the proportional shares, so that is the prior here;
# the other guards are off, so that what limits a cut is the forgetting penalty alone.
SAMPLER = dict(seed=0, total_budget=BUDGET, available=AVAILABLE, prior="proportional", family="power", min_points=5,
               refit_every=1, warmup_fraction=0.02, harm_guard=0.0, unidentified="fit")


def clean_loss(consumed: np.ndarray) -> np.ndarray:
    # ct learns slowly, pet fast: a law in cumulative counts moves data from ct to pet.
    return np.array([0.5, 0.4, 0.3]) + np.array([1.0, 2.0, 6.0]) * (1.0 + consumed) ** -np.array([0.15, 0.3, 0.4])


def run(forget_ct: float = 0.0, pet_hurts_ct: float = 0.0, stop: int | None = None, **opts) -> tuple[object, np.ndarray]:
    """Drive the sampler through a world where ct's loss is x (1 + forget_ct x shortfall of its recent
    share + pet_hurts_ct x pet's recent share above its prior share); returns the sampler and the
    realised consumption shares."""
    s = build("transfer", DOMAINS, **SAMPLER, **opts)
    consumed, recent = np.zeros(3), None
    for step in range(1, (stop or int(BUDGET / PER_STEP)) + 1):
        w = s.weights()
        consumed = consumed + w * PER_STEP
        recent = w.copy() if recent is None else recent + (1 - np.exp(-PER_STEP / SCALE)) * (w - recent)
        ct = forget_ct * max(0.0, 1.0 - recent[0] / PRIOR[0]) + pet_hurts_ct * max(0.0, recent[2] - PRIOR[2])
        penalty = np.array([1.0 + ct, 1.0, 1.0])
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


def test_poor_company_is_found_and_limits_the_boost() -> None:
    company, shares = run(pet_hurts_ct=0.6, forgetting="company")
    found = company.diagnostics()["interference"]
    assert found.get("pet", {}).get("ct", 0.0) > 0.05  # pet's excess raised ct's residuals
    assert "mri" not in found  # mri's share never hurt anyone
    _, own_only = run(pet_hurts_ct=0.6, forgetting="fit")
    assert shares[2] < own_only[2] - 0.02  # priced in, pet gets less


def test_no_company_no_penalty() -> None:
    s, _ = run(forgetting="company")
    assert s.diagnostics()["interference"] == {}


def test_interference_survives_a_state_round_trip_and_old_states_load() -> None:
    s, _ = run(pet_hurts_ct=0.6, stop=40, forgetting="company")
    state = s.state_dict()
    assert np.asarray(state["interference"]).shape == (3, 3)
    other = build("transfer", DOMAINS, **SAMPLER, forgetting="company")
    other.load_state_dict(state)
    np.testing.assert_allclose(other.weights(), s.weights())
    np.testing.assert_allclose(other.interference, s.interference)
    assert state_digest(other.state_dict()) == state_digest(state)  # what the trainer checks on resume
    old = {k: v for k, v in state.items() if k != "interference"}  # saved before this option existed
    other.load_state_dict(old)
    assert not other.interference.any()
    with pytest.raises(SamplerError, match="interference"):
        other.load_state_dict({**state, "interference": [[0.0]]})
