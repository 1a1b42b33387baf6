"""samplers.recency: forgetting and poor company from a law's residuals against the recent mixture."""

from __future__ import annotations

import numpy as np
import pytest

from mixpretrain.samplers.recency import bonferroni_z, company, own_forgetting, shrunk_slopes

PRIOR = np.array([0.4, 0.3, 0.3])


def trajectory(n: int = 60, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Recent shares that wander around the prior (domains 1 and 2 trade places), and total consumption."""
    rng = np.random.default_rng(seed)
    swing = 0.15 * np.sin(np.linspace(0, 6 * np.pi, n)) + 0.03 * rng.standard_normal(n)
    recent = np.column_stack([np.full(n, 0.4), 0.3 + swing, 0.3 - swing])
    return recent, np.linspace(1e4, 1e5, n)


def test_company_finds_a_planted_pair_and_nothing_else() -> None:
    recent, total = trajectory()
    rng = np.random.default_rng(1)
    res = 0.003 * rng.standard_normal(recent.shape)
    res[:, 0] += 0.4 * np.maximum(0.0, recent[:, 2] - PRIOR[2])  # domain 2's excess hurts domain 0
    C = company(res, recent, PRIOR, total, z=2.0, min_points=6)
    assert C[2, 0] == pytest.approx(0.4, abs=0.1)
    off = np.ones_like(C, dtype=bool)
    off[2, 0] = False
    assert not C[off].any()
    assert not company(0.003 * rng.standard_normal(recent.shape), recent, PRIOR, total, 2.0, 6).any()


def test_a_source_above_its_prior_at_few_points_is_not_judged() -> None:
    recent, total = trajectory()
    recent[:, 1:] = PRIOR[1:]  # steady, except one early boost of domain 1
    recent[2:4, 1], recent[2:4, 2] = 0.6, 0.0
    res = np.zeros_like(recent)
    res[2:4, 0] = 0.2  # domain 0 happens to be off its law at the same two points
    assert company(res, recent, PRIOR, total, z=0.0, min_points=6)[1, 0] == 0.0


def test_own_forgetting() -> None:
    recent, _ = trajectory()
    short = np.maximum(0.0, 1.0 - recent / PRIOR)
    res = 0.002 * np.random.default_rng(2).standard_normal(recent.shape)
    res[:, 1] += 0.3 * short[:, 1]
    beta = own_forgetting(res, short, z=2.0, min_points=6)
    assert beta[1] == pytest.approx(0.3, abs=0.05)
    assert beta[0] == 0.0  # its share never moved
    assert beta[2] == 0.0  # short at times, but its loss never rose with it


def test_shrunk_slopes() -> None:
    rng = np.random.default_rng(0)
    X = rng.uniform(0.0, 0.3, (200, 3))
    X[:, 2] = 0.1  # never moved
    y = 0.4 * X[:, 0] - 0.2 * X[:, 1] + 0.001 * rng.standard_normal(200)
    slopes = shrunk_slopes(X, y, z=0.0, min_points=5)
    assert slopes[0] == pytest.approx(0.4, abs=0.01)
    assert slopes[1] == 0.0  # negative: clipped (company only costs)
    assert slopes[2] == 0.0  # no variation: no evidence
    assert not shrunk_slopes(X[:4], y[:4], z=0.0, min_points=5).any()  # too few points
    noisy = 0.05 * X[:, 0] + 0.2 * rng.standard_normal(200)
    assert shrunk_slopes(X, noisy, z=2.0, min_points=5)[0] == 0.0  # within its standard errors: 0
    # Autocorrelated residuals widen the standard errors: the same points in a shuffled order give the
    # same least-squares slope, but in run order their errors wander together and count for less.
    t = np.linspace(0, 1, 200)
    x = np.column_stack([np.sin(9 * t) + 0.3 * rng.standard_normal(200)])
    y = 0.05 * x[:, 0] + 0.01 * np.cumsum(rng.standard_normal(200))
    perm = rng.permutation(200)
    in_order = shrunk_slopes(x, y, z=2.0, min_points=5)[0]
    shuffled = shrunk_slopes(x[perm], y[perm], z=2.0, min_points=5)[0]
    assert shrunk_slopes(x, y, z=0.0, min_points=5)[0] == pytest.approx(shrunk_slopes(x[perm], y[perm], z=0.0, min_points=5)[0])
    assert in_order < shuffled - 0.02


def test_bonferroni_z() -> None:
    assert bonferroni_z(2.0, 1) == pytest.approx(2.0)
    assert bonferroni_z(2.0, 12) == pytest.approx(2.895, abs=0.005)


def test_two_domains_company_is_not_told_from_forgetting() -> None:
    """With two domains one's excess is the other's shortfall: no pair can be judged, and a loss that
    rises with the other's share shows up as forgetting instead."""
    n = 60
    r0 = 0.5 + 0.2 * np.sin(np.linspace(0, 6 * np.pi, n))
    recent = np.column_stack([r0, 1.0 - r0])
    prior = np.array([0.5, 0.5])
    res = 0.002 * np.random.default_rng(3).standard_normal((n, 2))
    res[:, 0] += 0.3 * np.maximum(0.0, recent[:, 1] - 0.5)
    assert not company(res, recent, prior, np.linspace(1e4, 1e5, n), z=2.0, min_points=6).any()
    assert own_forgetting(res, np.maximum(0.0, 1.0 - recent / prior), z=2.0, min_points=6)[0] > 0.1
