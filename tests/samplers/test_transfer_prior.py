"""The transfer sampler's prior: the centre of exploration, the fallback, the floors and the cooldown mixture."""

from __future__ import annotations

import numpy as np
import pytest

from mixpretrain.samplers import SamplerError, build

DOMAINS = ["ct", "mri", "pet"]
AVAILABLE = [6400, 1600, 400]


def test_prior_auto_is_the_temperature_mixture_given_the_data_sizes() -> None:
    s = build("transfer", DOMAINS, total_budget=10_000, available=AVAILABLE)
    np.testing.assert_allclose(s.prior_w, np.array([80.0, 40.0, 20.0]) / 140.0)  # available^(1/2), prior_tau 2
    assert np.allclose(build("transfer", DOMAINS, total_budget=10_000).prior_w, 1 / 3)  # no sizes: uniform
    proportional = build("transfer", DOMAINS, total_budget=10_000, available=AVAILABLE, prior="proportional")
    np.testing.assert_allclose(proportional.prior_w, np.array(AVAILABLE) / sum(AVAILABLE))


@pytest.mark.parametrize(("tau", "expected"), [(2.0, [80, 40, 20]), (1.0, AVAILABLE), ("inf", [1, 1, 1])])
def test_prior_temperature_is_available_to_the_one_over_tau(tau, expected) -> None:
    s = build("transfer", DOMAINS, total_budget=10_000, available=AVAILABLE, prior="temperature", prior_tau=tau)
    np.testing.assert_allclose(s.prior_w, np.array(expected, float) / sum(expected))
    # The sampler starts on its prior, and it is what the floors of a harmed domain refer to.
    np.testing.assert_allclose(s.target, s.prior_w)
    np.testing.assert_allclose(s.diagnostics()["prior"], s.prior_w)  # written to sampler.jsonl
    np.testing.assert_allclose(s.harm_floors, np.maximum(s.floor, s.harm_floor * s.prior_w))


def test_prior_temperature_ends_a_cooldown_prior_run_on_the_temperature_mixture() -> None:
    budget, per_step = 12_000.0, 400.0
    s = build("transfer", DOMAINS, seed=0, total_budget=budget, available=AVAILABLE, prior="temperature",
              cooldown=0.2, cooldown_prior=1.0, family="power", min_points=4, refit_every=1)
    consumed = np.zeros(3)
    for step in range(1, int(budget / per_step) + 1):
        w = s.weights()
        if consumed.sum() >= 0.8 * budget + 1e-9:
            np.testing.assert_allclose(w, s.prior_w, atol=1e-9)
        consumed = consumed + w * per_step
        loss = 0.3 + 3.0 * (1.0 + consumed) ** -0.3
        s.observe(step, consumed, dict(zip(DOMAINS, loss.tolist(), strict=True)), "val")
    assert s.phase == "cooldown"


@pytest.mark.parametrize(("opts", "message"), [
    ({"prior": "temperature"}, "needs option 'available'"),
    ({"prior": "temperature", "available": AVAILABLE, "prior_tau": 0}, "prior_tau"),
    ({"prior": "sqrt", "available": AVAILABLE}, "expected auto, uniform, proportional or temperature"),
])
def test_bad_prior_options_are_refused_by_name(opts, message) -> None:
    with pytest.raises(SamplerError, match=message):
        build("transfer", DOMAINS, total_budget=10_000, **opts)


def test_resume_under_a_different_prior_is_logged(caplog) -> None:
    """A run saved under one prior (e.g. before `prior: auto` meant temperature) and resumed under
    another continues, but says so, naming the changed option and both mixtures."""
    saved = build("transfer", DOMAINS, total_budget=10_000, available=AVAILABLE, prior="proportional").state_dict()
    same = build("transfer", DOMAINS, total_budget=10_000, available=AVAILABLE, prior="proportional")
    with caplog.at_level("WARNING"):
        same.load_state_dict(saved)
    assert "differ" not in caplog.text
    resumed = build("transfer", DOMAINS, total_budget=10_000, available=AVAILABLE)
    with caplog.at_level("WARNING"):
        resumed.load_state_dict(saved)
    assert "prior: 'proportional' -> 'auto'" in caplog.text
    assert "prior mixture [0.5714, 0.2857, 0.1429] that differs from the saved run's [0.7619, 0.1905, 0.0476]" in caplog.text
    # An option added after the state was saved, at its default, is not a change (stop 23's misfit_ratio).
    caplog.clear()
    before = {**saved, "options": {k: v for k, v in same.state_dict()["options"].items() if k != "misfit_ratio"}}
    with caplog.at_level("WARNING"):
        build("transfer", DOMAINS, total_budget=10_000, available=AVAILABLE, prior="proportional").load_state_dict(before)
    assert "differ" not in caplog.text
    with caplog.at_level("WARNING"):
        build("transfer", DOMAINS, total_budget=10_000, available=AVAILABLE, prior="proportional",
              misfit_ratio=2.0).load_state_dict(before)
    assert "misfit_ratio: None -> 2.0" in caplog.text
    # A state saved before options and prior were recorded (the old defaults): the way back is named.
    caplog.clear()
    old = {k: v for k, v in saved.items() if k not in ("options", "prior_weights")}
    with caplog.at_level("WARNING"):
        build("transfer", DOMAINS, total_budget=10_000, available=AVAILABLE).load_state_dict(old)
    assert "does not record its options" in caplog.text
    assert "set prior: proportional, unidentified: fit to resume as it was saved" in caplog.text
