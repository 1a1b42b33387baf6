"""Simulated worlds with known laws: the transfer sampler against proportional and the oracle."""

from __future__ import annotations

import json

import numpy as np
import pytest

from mixpretrain.samplers import simulate


def compare_samplers_script():
    """benchmarks/compare_samplers.py as a module (it is a script, not part of the package)."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "benchmarks" / "compare_samplers.py"
    spec = importlib.util.spec_from_file_location("compare_samplers", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


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


def test_seeds_pool_and_parallel_jobs_give_the_same_worlds() -> None:
    """--seeds N pools N benchmarks; --jobs only spreads the worlds over processes."""
    samplers = ("uniform", "proportional", "ado", "odm", "transfer")
    kwargs = {"samplers": samplers, "intervals": 12, "eval_every": 3, "seeds": 2}
    serial = simulate.run_benchmark(2, seed=3, **kwargs)
    parallel = simulate.run_benchmark(2, seed=3, jobs=2, **kwargs)
    assert [(w["seed"], w["world"]) for w in serial["worlds"]] == [(3, "w00-random"), (3, "w01-hub"),
                                                                  (4, "w00-random"), (4, "w01-hub")]
    for a, b in zip(serial["worlds"], parallel["worlds"], strict=True):
        assert {n: r["objective"] for n, r in a["samplers"].items()} == {n: r["objective"] for n, r in b["samplers"].items()}
    wins = serial["hard_wins_by_seed"]["transfer"]
    hard = [w for w in serial["worlds"] if w["oracle_gain_vs_proportional"] >= simulate.HARD_GAIN]
    assert wins.get("all", [0, 0])[1] == len(hard)
    assert sum(v[1] for k, v in wins.items() if k != "all") == len(hard)


def test_hard_wins_by_seed_and_their_interval() -> None:
    def world(seed: int, gain: float, transfer: float) -> dict:
        rows = {"transfer": transfer, "proportional": 1.0, "uniform": 0.99, "ado": 0.98, "odm": 0.97}
        return {"seed": seed, "oracle_gain_vs_proportional": gain, "samplers": {n: {"objective": v} for n, v in rows.items()}}

    worlds = [world(0, 0.05, 0.96), world(0, 0.05, 0.975), world(1, 0.04, 0.95), world(1, 0.01, 0.90)]
    assert simulate.hard_wins_by_seed(worlds, "transfer") == {"0": [1, 2], "1": [1, 1], "all": [2, 3]}
    lo, hi = simulate.wilson_interval(42, 56)
    assert 0.62 < lo < 0.63 and 0.84 < hi < 0.86  # 75% of 56
    assert simulate.wilson_interval(0, 5)[0] == pytest.approx(0.0, abs=1e-12) and simulate.wilson_interval(5, 5)[1] == pytest.approx(1.0)


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


def one_world_from_the_command_line(capsys, flag: str) -> tuple[dict, dict]:
    """compare_samplers.py --simulated --worlds 1 FLAG --json: (result, its one world); the oracle row
    scores 0 against itself, and no sampler scores below the oracle."""
    mod = compare_samplers_script()
    assert mod.main(["--simulated", "--worlds", "1", flag, "--samplers", "proportional,uniform,oracle", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["settings"][flag.lstrip("-")] is True
    world = result["worlds"][0]
    assert world["samplers"]["oracle"]["gap_to_oracle"] == pytest.approx(0.0, abs=1e-9)
    assert min(world["samplers"][s]["gap_to_oracle"] for s in ("proportional", "uniform")) >= -1e-9
    return result, world


def test_forgetting_benchmark_and_variants_from_the_command_line(capsys) -> None:
    mod = compare_samplers_script()
    _, world = one_world_from_the_command_line(capsys, "--forgetting")
    assert world["world"].endswith("-forget") and any(b > 0 for b in world["forget_beta"])
    with pytest.raises(SystemExit, match="transfer-variants"):
        mod.main(["--simulated", "--worlds", "1", "--transfer-variants", "[1, 2]"])
    with pytest.raises(SystemExit):  # --variants (rows of any sampler) is for --pretrain
        mod.main(["--simulated", "--worlds", "1", "--variants", "{}"])
    with pytest.raises(SystemExit, match="--variants is not valid JSON"):
        mod.main(["--pretrain", "--config", "configs/bench/cpu_tiny.yaml", "--variants", "{c2p"])
    with pytest.raises(SystemExit, match="--variants must map row names"):
        mod.main(["--pretrain", "--config", "configs/bench/cpu_tiny.yaml", "--variants", "[1]"])
    # A variant is a transfer row with its own options; the base world list is unchanged.
    result = simulate.run_benchmark(1, seed=0, samplers=("proportional", "guard_off"), intervals=12, eval_every=3,
                                    variants={"guard_off": {"harm_guard": 0.0, "family": "power"}})
    assert result["worlds"][0]["world"] == simulate.make_world(0, 0).name
    assert "harmed" in result["worlds"][0]["samplers"]["guard_off"]


def test_interference_worlds(capsys) -> None:
    """``--interference``: the same law and data plus poor company; the oracle prices it in, so no
    mixture (proportional, uniform, the company-blind optimum) scores below it."""
    from mixpretrain.scaling import allocate

    plain, world = simulate.make_world(3, 0), simulate.make_world(3, 0, interference=True)
    assert world.name == plain.name + "-company" and world.forget_beta is None
    np.testing.assert_array_equal(world.available, plain.available)
    C = world.interference
    assert (C >= 0).all() and (C > 0).any() and not np.diag(C).any()
    r0 = world.forget_ref
    w = r0.copy()
    i, j = np.argwhere(C > 0)[0]
    w[i] += 0.1
    w[(i + 1) % len(w)] -= 0.1
    pen = world.penalty(w)
    assert pen[j] == pytest.approx(1.0 + C[:, j] @ np.maximum(0.0, w - r0))
    np.testing.assert_allclose(world.penalty(r0), 1.0)  # at the reference mixture company costs nothing
    orc = simulate.oracle(world, 0.01)
    j_orc = world.objective(world.budget * orc.weights, orc.weights)
    blind = allocate(world.law, world.budget, floor=0.01).weights
    assert j_orc <= world.objective(world.budget * blind, blind) + 1e-9

    _, row = one_world_from_the_command_line(capsys, "--interference")
    assert row["world"].endswith("-company") and row["interference"] is not None


def test_plateau_worlds(capsys) -> None:
    """``--plateau``: the same law and data, with domains that stall until they have seen d0 of their
    own data; the gradient the oracle follows is the true one, and the oracle, which knows the
    plateau, is no worse than the plateau-blind optimum."""
    from mixpretrain.scaling import allocate

    plain, world = simulate.make_world(2, 0), simulate.make_world(2, 0, plateau=True)
    assert world.name == plain.name + "-plateau"
    np.testing.assert_array_equal(world.available, plain.available)
    law, h = world.law, np.array(world.info["plateau_height"])
    assert (h > 0).any() and ((h == 0) | ((h >= 0.05) & (h <= 0.15))).all()
    # Far below d0 a plateau domain's loss is flat at its level, whatever the others consume; far
    # above, it is the plain law's. Domains without a plateau follow the plain law throughout.
    on = h > 0
    tiny, huge = np.where(on, 1e-3 * law.d0, 1e3), np.where(on, 1e3 * law.d0, 1e5)
    np.testing.assert_allclose(law.predict(tiny)[on], law.level[on], rtol=1e-6)
    np.testing.assert_allclose(law.predict(tiny * np.where(on, 1.0, 50.0))[on], law.level[on], rtol=1e-6)
    np.testing.assert_allclose(law.predict(huge), plain.law.predict(huge), rtol=1e-6)
    np.testing.assert_allclose(law.predict(tiny)[~on], plain.law.predict(tiny)[~on])
    D = np.where(on, 0.8 * law.d0, 0.3 * world.budget / len(h))
    eps = 1e-4 * D
    numeric = np.stack([(law.predict(D + e) - law.predict(D - e)) / (2 * e[i])
                        for i, e in enumerate(np.diag(eps))])
    np.testing.assert_allclose(law.grad(D), numeric, rtol=1e-4, atol=1e-12)
    orc = simulate.oracle(world, 0.01)
    blind = allocate(plain.law, plain.budget, floor=0.01).weights
    assert world.objective(world.budget * orc.weights) <= world.objective(world.budget * blind) + 1e-9

    _, row = one_world_from_the_command_line(capsys, "--plateau")
    assert row["world"].endswith("-plateau") and any(x > 0 for x in row["plateau_height"])


def test_reuse_runs_only_the_new_rows(tmp_path, capsys) -> None:
    """--reuse: rows an earlier run holds come from its file, the others are run; same worlds only."""
    mod = compare_samplers_script()
    kwargs = {"seed": 2, "intervals": 12, "eval_every": 3}
    variant = {"pw": {"family": "power"}}
    fresh = simulate.run_benchmark(2, samplers=("uniform", "proportional", "pw"), variants=variant, **kwargs)
    stored = simulate.run_benchmark(2, samplers=("uniform", "proportional"), **kwargs)
    stored["worlds"][0]["samplers"]["uniform"]["objective"] = 123.0  # marks the row as taken from the file
    reused = simulate.run_benchmark(2, samplers=("uniform", "proportional", "pw"), variants=variant, reuse=stored, **kwargs)
    assert reused["settings"]["reused"] == ["proportional", "uniform"]
    assert reused["worlds"][0]["samplers"]["uniform"]["objective"] == 123.0
    for a, b in zip(fresh["worlds"], reused["worlds"], strict=True):
        assert a["samplers"]["pw"]["objective"] == b["samplers"]["pw"]["objective"]
        assert a["samplers"]["pw"]["vs_proportional"] == pytest.approx(b["samplers"]["pw"]["vs_proportional"])
    # Other worlds, another variant under a stored row's name, or worlds made by other code: refused.
    with pytest.raises(ValueError, match="seed"):
        simulate.run_benchmark(2, samplers=("uniform",), reuse=stored, **{**kwargs, "seed": 3})
    with pytest.raises(ValueError, match="another name"):
        simulate.run_benchmark(2, samplers=("pw",), variants={"pw": {"family": "linear"}}, reuse=reused, **kwargs)
    # A row made under other defaults of its sampler (a changed default) runs again.
    changed = json.loads(json.dumps(reused))
    changed["settings"]["defaults"]["pw"]["smoothing"] = 0.9
    again = simulate.run_benchmark(2, samplers=("uniform", "proportional", "pw"), variants=variant, reuse=changed, **kwargs)
    assert again["settings"]["stale"] == ["pw"] and again["settings"]["reused"] == ["proportional", "uniform"]
    assert [w["samplers"]["pw"]["objective"] for w in again["worlds"]] == [w["samplers"]["pw"]["objective"] for w in fresh["worlds"]]
    stored["worlds"][1]["oracle_objective"] *= 1.01
    with pytest.raises(ValueError, match="other world code"):
        simulate.run_benchmark(2, samplers=("uniform",), reuse=stored, **kwargs)
    # From the command line: the rows taken from the file are named; a file that is not such a run is refused.
    path = tmp_path / "earlier.json"
    path.write_text(json.dumps(simulate.run_benchmark(1, samplers=("uniform", "proportional"), seed=0)))
    assert mod.main(["--simulated", "--worlds", "1", "--samplers", "uniform,proportional,oracle", "--reuse", str(path)]) == 0
    assert "proportional, uniform" in capsys.readouterr().out
    (tmp_path / "bad.json").write_text("[]")
    with pytest.raises(SystemExit, match="worlds"):
        mod.main(["--simulated", "--worlds", "1", "--reuse", str(tmp_path / "bad.json")])


def test_a_continued_run_keeps_its_recent_mixture() -> None:
    """run_sampler(start=, consumed=, recent=) scores a continued run as the unbroken one; without
    ``recent`` a forgetting world scored it as if its recent mixture began at the resume."""
    from mixpretrain.samplers.simulate import make_world, run_sampler

    class Schedule:  # fixed weights per interval, from position i
        def __init__(self, ws, i=0):
            self.ws, self.i = ws, i

        def weights(self):
            self.i += 1
            return self.ws[min(self.i - 1, len(self.ws) - 1)]

        def observe(self, *args):
            pass

        def diagnostics(self):
            return {}

    world = make_world(3, 0, forgetting=True)
    a = np.array([0.7, 0.1, 0.1, 0.1])
    ws = [a] * 57 + [world.forget_ref.copy()] * 3
    per_interval = world.budget / 60
    recent = None
    for _ in range(57):
        recent = world.update_recent(recent, a, per_interval)
    full = run_sampler(world, "x", {}, sampler=Schedule(ws))
    cont = run_sampler(world, "x", {}, sampler=Schedule(ws, 57), start=57, consumed=57 * a * per_interval,
                       recent=recent)
    assert cont["objective"] == pytest.approx(full["objective"], rel=1e-12)
