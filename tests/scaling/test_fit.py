"""Fitting on ground-truth worlds: recovery, extrapolation to 4x budgets, selection, warm starts."""

from __future__ import annotations

import json

import numpy as np
import pytest

from mixpretrain.scaling import LawFit, fit_laws
from mixpretrain.scaling.synthetic import BUDGETS, make_world, observe, pilot_design


@pytest.fixture(scope="module")
def world100():
    """3 domains (hub d0, island d2), 96 pilot runs at 6 budgets (500..16000), 1% noise, and its auto fit."""
    world = make_world(3, seed=4, hub=0, island=2)
    rng = np.random.default_rng(104)
    D = pilot_design(3, BUDGETS, rng, n_random=12)
    L = observe(world, D, rng)
    return world, D, L, fit_laws(D, L, world.domains, log_warnings=False)


def test_parameter_recovery(world100):
    """Stated tolerances (1% noise, 96 runs): T within 0.03 + 10% of T; alpha within 15%; E within 0.08;
    gamma within 0.1 wherever T > 0.1 (elsewhere gamma barely matters and is weakly identified)."""
    world, _, _, fit = world100
    t, f = world.params, fit.params
    assert fit.family in ("transfer", "linear")
    assert np.all(np.abs(f["T"] - t["T"]) <= 0.03 + 0.1 * t["T"]), (f["T"], t["T"])
    assert np.all(np.abs(f["alpha"] / t["alpha"] - 1) <= 0.15), (f["alpha"], t["alpha"])
    assert np.all(np.abs(f["E"] - t["E"]) <= 0.08), (f["E"], t["E"])
    if fit.family == "transfer":
        strong = t["T"] > 0.1
        assert np.all(np.abs(f["gamma"] - t["gamma"])[strong] <= 0.1)
    # The asymmetry is recovered: the hub gives far more than it receives.
    assert f["T"][0, 1] > 3 * f["T"][1, 0]


def test_predicts_4x_budget(world100):
    """Unseen runs at 4x the largest pilot budget (single-domain, uniform and random mixtures, noisy)."""
    world, _, _, fit = world100
    rng = np.random.default_rng(7)
    Dt = pilot_design(3, [4 * max(BUDGETS)], rng, n_random=12)
    Lt = observe(world, Dt, rng)
    P = fit.predict(Dt)
    assert np.corrcoef(P.ravel(), Lt.ravel())[0, 1] >= 0.995
    assert np.median(np.abs(P / Lt - 1)) <= 0.01
    assert np.median(np.abs(P / world.predict(Dt) - 1)) <= 0.0075  # against the noise-free truth


def test_auto_prefers_transfer_over_power(world100):
    _, _, _, fit = world100
    scores = fit.selection["scores"]
    assert fit.selection["method"] == "held-out larger budgets"
    assert scores["power"] > 5 * min(scores["linear"], scores["transfer"])
    assert fit.selection["min_test_budget"] == pytest.approx(max(BUDGETS))


def test_power_family_matches_independent_domains():
    """A world without transfer: the power family is chosen and fits it."""
    world = make_world(3, seed=2, hub=None)
    world.params["T"][:] = 0.0
    rng = np.random.default_rng(3)
    D = pilot_design(3, BUDGETS, rng, n_random=4)
    L = observe(world, D, rng)
    fit = fit_laws(D, L, world.domains, log_warnings=False)
    assert fit.family in ("power", "linear")
    assert np.all(fit.params["T"] < 0.02)


def test_repetition_chosen_when_unique_data_exhausted():
    world = make_world(3, seed=1, hub=0, island=2, unique=[None, 3000.0, None], r_star=2.0)
    rng = np.random.default_rng(101)
    D = pilot_design(3, BUDGETS, rng, n_random=6)
    L = observe(world, D, rng)
    fit = fit_laws(D, L, world.domains, unique={"d1": 3000}, log_warnings=False)
    assert fit.family == "repetition"
    assert fit.selection["scores"]["repetition"] < fit.selection["scores"]["transfer"]
    assert 1.0 < fit.params["r_star"][1] < 4.0  # true R* = 2
    # With plenty of unique data no run repeats: repetition is not even a candidate, and the fit says so.
    plenty = fit_laws(D, L, world.domains, unique={"d1": 1e6}, log_warnings=False)
    assert plenty.family != "repetition"
    assert any("not a candidate" in w for w in plenty.warnings)


def test_warm_start_matches_cold_fit(world3):
    world, D, L = world3
    cold = fit_laws(D, L, world.domains, family="transfer", log_warnings=False)
    warm = fit_laws(D[:-3], L[:-3], world.domains, family="transfer", init=cold, log_warnings=False)
    again = fit_laws(D, L, world.domains, family="transfer", init=warm, log_warnings=False)
    assert warm.stats["warm_start"] and again.stats["warm_start"]
    np.testing.assert_allclose(again.predict(D), cold.predict(D), rtol=2e-3)
    # A dict (as stored by a sampler's state_dict) works as init too.
    from_dict = fit_laws(D, L, world.domains, family="transfer", init=cold.to_dict(), log_warnings=False)
    np.testing.assert_allclose(from_dict.predict(D), cold.predict(D), rtol=2e-3)


def test_online_trajectory_refit():
    """One training run's history (cumulative consumption under a dithered mixture, 3% noise),
    refitted every 50 points with warm starts, as the online sampler does."""
    world = make_world(3, seed=5, hub=0, island=2)
    rng = np.random.default_rng(5)
    w = np.exp(rng.normal(0, 0.5, (300, 3)))
    D = np.cumsum(rng.poisson(32 * w / w.sum(axis=1, keepdims=True)), axis=0) + 1.0
    L = observe(world, D, rng, noise=0.03)
    fit = fit_laws(D[:100], L[:100], world.domains, family="transfer", log_warnings=False, ridge=0.01)
    for n in range(150, 301, 50):
        fit = fit_laws(D[:n], L[:n], world.domains, family="transfer", init=fit, log_warnings=False, ridge=0.01)
        assert np.all(np.isfinite(fit.predict(D[:n])))
    assert fit.stats["train_mean_abs_log_error"] < 0.035


def test_round_trip_through_json(world3):
    world, D, L = world3
    fit = fit_laws(D, L, world.domains, family="transfer", bootstrap=5, log_warnings=False)
    back = LawFit.from_dict(json.loads(json.dumps(fit.to_dict())))
    np.testing.assert_allclose(back.predict(D), fit.predict(D))
    np.testing.assert_allclose(back.transfer_matrix, fit.transfer_matrix)
    assert back.family == fit.family and back.domains == fit.domains
    lo, hi = back.predict_interval(D)
    assert np.all(lo <= hi) and len(back.bootstrap) == 5
    ci = back.param_ci()
    assert np.all(np.asarray(ci["alpha"][0]) <= np.asarray(ci["alpha"][1]))


def test_bootstrap_interval_covers_truth():
    world = make_world(3, seed=3, hub=0, island=2)
    rng = np.random.default_rng(13)
    D = pilot_design(3, BUDGETS, rng, n_random=6)
    L = observe(world, D, rng)
    fit = fit_laws(D, L, world.domains, family="transfer", bootstrap=30, log_warnings=False)
    lo, hi = (np.asarray(x) for x in fit.param_ci(level=0.98)["alpha"])
    # Loose check: most of the true exponents lie within the 98% intervals.
    assert np.mean((world.params["alpha"] >= lo) & (world.params["alpha"] <= hi)) >= 2 / 3


def test_grad_matches_finite_differences(world3):
    world, _, _ = world3
    D = np.array([1500.0, 300.0, 4000.0])
    g = world.grad(D)
    eps = 1e-3
    for i in range(3):
        step = np.eye(3)[i] * eps
        num = (world.predict(D + step) - world.predict(D - step)) / (2 * eps)
        np.testing.assert_allclose(g[i], num, rtol=1e-5, atol=1e-12)


def test_huber_fit_shrugs_off_outliers(world3):
    """Two runs with a broken evaluation (loss x1.6) barely move the fit, thanks to the Huber loss."""
    world, D, L = world3
    bad = L.copy()
    bad[[10, 25], 0] *= 1.6
    clean = fit_laws(D, L, world.domains, family="transfer", log_warnings=False)
    robust = fit_laws(D, bad, world.domains, family="transfer", log_warnings=False)
    squared = fit_laws(D, bad, world.domains, family="transfer", huber_scale=10.0, log_warnings=False)
    Dt = pilot_design(3, [4 * max(BUDGETS)], np.random.default_rng(1))
    ref = clean.predict(Dt)[:, 0]
    err_robust = np.median(np.abs(robust.predict(Dt)[:, 0] / ref - 1))
    err_squared = np.median(np.abs(squared.predict(Dt)[:, 0] / ref - 1))
    assert err_robust < 0.01 and err_squared > 3 * err_robust  # plain least squares is dragged off
