"""Simulated worlds with known laws: the transfer sampler against proportional and the oracle."""

from __future__ import annotations

import json

import numpy as np
import pytest

from mixpretrain.samplers import simulate


def test_transfer_beats_proportional_in_a_small_world() -> None:
    # 3 domains, skewed data sizes: proportional over-samples the big domain.
    world = simulate.make_world(3, seed=1, k=3)
    orc = simulate.oracle(world, floor=0.01)
    j_oracle = world.objective(world.budget * orc.weights)
    out = {}
    for name in ("proportional", "transfer"):
        reg, opts = simulate.sampler_options(world, name, 0.01, orc.weights)
        out[name] = simulate.run_sampler(world, reg, opts, intervals=40, eval_every=2)
    j_prop, j_transfer = out["proportional"]["objective"], out["transfer"]["objective"]
    assert j_oracle < j_prop
    assert j_transfer < j_prop
    assert j_transfer / j_oracle - 1 < 0.01
    diag = out["transfer"]["diagnostics"]
    assert diag["counters"]["accepted"] >= 1
    assert np.asarray(diag["transfer_matrix"]).shape == (3, 3)
    assert {"hubs", "islands", "hub_score", "island_score", "last_refit", "params"} <= set(diag)
    json.dumps(diag, allow_nan=False)


def test_benchmark_table_for_one_world() -> None:
    samplers = ("uniform", "proportional", "oracle")
    result = simulate.run_benchmark(1, seed=0, samplers=samplers, intervals=12, eval_every=3)
    table = result["table"]
    assert set(table) == set(samplers)
    assert table["proportional"]["vs_proportional_mean"] == pytest.approx(0.0)
    assert table["oracle"]["gap_to_oracle_mean"] == pytest.approx(0.0, abs=1e-9)
    assert "gap oracle" in simulate.format_table(table)
    json.dumps(result, allow_nan=False)


def test_misspecified_law_gradient_matches_finite_differences() -> None:
    world = simulate.make_world(4, seed=0)  # index 4: the misspecified kind
    assert world.kind == "misspecified"
    law = world.law
    D = world.available * 1.7  # beyond the unique data: the repetition branch is exercised
    g = law.grad(D)
    for i in range(len(world.domains)):
        h = 1e-3 * D[i]
        up, down = D.copy(), D.copy()
        up[i] += h
        down[i] -= h
        fd = (law.predict(up) - law.predict(down)) / (2 * h)
        assert np.allclose(g[i], fd, rtol=1e-4, atol=1e-12)
