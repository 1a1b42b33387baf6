"""Sampler contract: registry, options, state round trip, determinism, robustness."""

from __future__ import annotations

import json
import logging
import math

import numpy as np
import pytest

from mixpretrain.samplers import SamplerError, available_samplers, build, project_to_floor
from mixpretrain.samplers.base import cap_fill

DOMAINS = ["ct", "mri", "pet"]
BUDGET = 30_000.0
AVAILABLE = {"ct": 20_000, "mri": 6_000, "pet": 1_500}


def options(name: str, seed: int = 0) -> dict:
    common = {"seed": seed, "total_budget": BUDGET, "available": AVAILABLE, "floor": 0.02}
    extra = {
        "temperature": {"tau": 2.0, "max_epochs": 4},
        "fixed": {"weights": {"ct": 0.5, "mri": 0.3, "pet": 0.2}},
        "doremi": {"reference": {"ct": 0.3, "mri": 0.35, "pet": 0.4}},
        # Small run: refit often, so the round trip crosses several refits.
        "transfer": {"explore_fraction": 0.1, "min_points": 5, "refit_every": 1, "warmup_fraction": 0.02},
    }
    return {**common, **extra.get(name, {})}


ALL = ["uniform", "proportional", "temperature", "fixed", "ado", "odm", "doremi", "transfer"]


def true_loss(consumed: np.ndarray) -> np.ndarray:
    """A small world with transfer ct -> mri and ct -> pet (pet learns mostly from ct)."""
    eff = consumed + np.array([0.0, 0.5 * consumed[0], 0.8 * consumed[0]])
    return np.array([0.3, 0.35, 0.4]) + 3.0 * (1.0 + eff) ** -0.35


def drive(sampler, start: int, stop: int, per_step: float = 500.0, consumed=None, noise: float = 0.005):
    """Feed observations for steps start+1..stop; val every 2nd step. Returns (weights list, consumed)."""
    consumed = np.zeros(3) if consumed is None else consumed.copy()
    out = []
    for step in range(start + 1, stop + 1):
        w = sampler.weights()
        out.append(w.copy())
        consumed = consumed + w * per_step
        rng = np.random.default_rng(step)
        loss = true_loss(consumed) * np.exp(noise * rng.standard_normal(3))
        sampler.observe(step, consumed, dict(zip(DOMAINS, loss.tolist(), strict=True)), "train")
        if step % 2 == 0:
            sampler.observe(step, consumed, dict(zip(DOMAINS, true_loss(consumed).tolist(), strict=True)), "val")
    return out, consumed


def assert_valid(w: np.ndarray, floor: float) -> None:
    assert w.shape == (3,)
    assert np.all(np.isfinite(w)), w
    assert np.all(w >= floor - 1e-12), (w, floor)
    assert math.isclose(float(w.sum()), 1.0, abs_tol=1e-9), w


def test_registry_lists_builtins() -> None:
    names = available_samplers()
    for name in ALL:
        assert name in names


def test_unknown_sampler_names_valid_ones() -> None:
    with pytest.raises(SamplerError, match=r"unknown sampler 'nope'.*proportional.*transfer"):
        build("nope", DOMAINS)


def test_unknown_option_names_valid_ones() -> None:
    with pytest.raises(SamplerError, match=r"unknown options \['taux'\]; did you mean tau for 'taux'\?.*max_epochs"):
        build("temperature", DOMAINS, available=AVAILABLE, taux=3)


def test_resume_with_a_longer_budget_is_not_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    """An extended run (train.max_steps up) changes total_budget: info, not a warning; another change warns."""
    a = build("transfer", DOMAINS, available=AVAILABLE, total_budget=1000)
    with caplog.at_level(logging.INFO, logger="mixpretrain.samplers.base"):
        build("transfer", DOMAINS, available=AVAILABLE, total_budget=2000).load_state_dict(a.state_dict())
    assert "total_budget 1000 -> 2000" in caplog.text and not [r for r in caplog.records if r.levelno >= logging.WARNING]
    with caplog.at_level(logging.INFO, logger="mixpretrain.samplers.base"):
        build("transfer", DOMAINS, available=AVAILABLE, total_budget=1000, cooldown=0.2).load_state_dict(a.state_dict())
    assert "cooldown: 0.15 -> 0.2" in caplog.text


@pytest.mark.parametrize(
    ("name", "opts", "match"),
    [
        ("uniform", {"floor": 0.5}, "floor"),
        ("proportional", {}, "available"),
        ("proportional", {"available": {"ct": 1, "mri": 2}}, "missing domains"),
        ("proportional", {"available": {"ct": 1, "mri": 2, "pet": -1}}, "finite and >= 0"),
        ("transfer", {}, "total_budget"),
        ("fixed", {}, "exactly one"),
        ("doremi", {}, "reference"),
        ("temperature", {"available": AVAILABLE, "tau": 0}, "tau"),
        ("transfer", {"total_budget": 10.0, "family": "cubic"}, "family"),
    ],
)
def test_bad_options_are_named(name: str, opts: dict, match: str) -> None:
    with pytest.raises(SamplerError, match=match):
        build(name, DOMAINS, **opts)


def test_bad_observations_are_named() -> None:
    s = build("uniform", DOMAINS)
    with pytest.raises(SamplerError, match="unknown domains"):
        s.observe(1, [1, 1, 1], {"xray": 0.3}, "val")
    with pytest.raises(SamplerError, match="3 domains"):
        s.observe(1, [1, 1], {}, "val")
    with pytest.raises(SamplerError, match="split"):
        s.observe(1, [1, 1, 1], {}, "test")


@pytest.mark.parametrize("name", ALL)
def test_state_round_trip_continues_identically(name: str) -> None:
    a = build(name, DOMAINS, **options(name))
    _, consumed = drive(a, 0, 24)
    state = json.loads(json.dumps(a.state_dict(), allow_nan=False))  # strict JSON, as stored in checkpoints
    b = build(name, DOMAINS, **options(name))
    b.load_state_dict(state)
    assert np.array_equal(a.weights(), b.weights())
    wa, _ = drive(a, 24, 40, consumed=consumed)
    wb, _ = drive(b, 24, 40, consumed=consumed)
    assert np.array_equal(np.array(wa), np.array(wb))
    assert a.state_dict() == b.state_dict()
    json.dumps(a.diagnostics(), allow_nan=False)


def test_transfer_round_trip_state_is_identical() -> None:
    a = build("transfer", DOMAINS, **options("transfer"))
    _, consumed = drive(a, 0, 20)
    b = build("transfer", DOMAINS, **options("transfer"))
    b.load_state_dict(json.loads(json.dumps(a.state_dict())))
    drive(a, 20, 30, consumed=consumed)
    drive(b, 20, 30, consumed=consumed)
    assert a.state_dict() == b.state_dict()  # no wall-clock timings in the state
    assert a.counters["accepted"] >= 2
    assert a.diagnostics()["last_refit"]["seconds"] > 0


def test_load_state_of_other_sampler_is_refused() -> None:
    state = build("uniform", DOMAINS).state_dict()
    with pytest.raises(SamplerError, match="saved by sampler 'uniform'"):
        build("odm", DOMAINS).load_state_dict(state)


@pytest.mark.parametrize("name", ["transfer", "odm", "ado"])
def test_deterministic_by_seed(name: str) -> None:
    runs = []
    for seed in (3, 3, 4):
        s = build(name, DOMAINS, **options(name, seed))
        runs.append(np.array(drive(s, 0, 30)[0]))
    assert np.array_equal(runs[0], runs[1])
    if name == "transfer":  # exploration order and dither depend on the seed
        assert not np.array_equal(runs[0], runs[2])


def _robustness_losses(case: str, step: int) -> dict:
    if case == "nan_inf":
        return {"ct": float("nan"), "mri": float("inf"), "pet": -float("inf")} if step % 2 else {"ct": 0.5, "mri": float("nan")}
    if case == "missing":
        return {} if step % 3 == 0 else {DOMAINS[step % 3]: 0.5 + 0.1 / step}
    if case == "constant":
        return dict.fromkeys(DOMAINS, 0.7)
    if case == "rising":
        return {d: 0.3 + 0.01 * step * (i + 1) for i, d in enumerate(DOMAINS)}
    if case == "zero_and_negative":
        return {"ct": 0.0, "mri": -1.0, "pet": 1e-300}
    if case == "huge":
        return {"ct": 1e300, "mri": 1e-300, "pet": 1e6}
    raise AssertionError(case)


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("case", ["nan_inf", "missing", "constant", "rising", "zero_and_negative", "huge"])
def test_robust_weights(name: str, case: str) -> None:
    s = build(name, DOMAINS, **options(name))
    consumed = np.zeros(3)
    for step in range(1, 41):
        w = s.weights()
        assert_valid(w, 0.02)
        consumed = consumed + w * 750
        split = "val" if step % 2 == 0 else "train"
        s.observe(step, consumed, _robustness_losses(case, step), split)
    assert_valid(s.weights(), 0.02)
    json.dumps(s.state_dict(), allow_nan=False)
    json.dumps(s.diagnostics(), allow_nan=False)


@pytest.mark.parametrize("name", ALL)
def test_domain_without_data_keeps_the_floor(name: str) -> None:
    available = {"ct": 20_000, "mri": 6_000, "pet": 0}
    opts = {**options(name), "available": available}
    s = build(name, DOMAINS, **opts)
    consumed = np.zeros(3)
    for step in range(1, 31):
        w = s.weights()
        assert_valid(w, 0.02)
        consumed = consumed + w * 1000
        consumed[2] = 0.0  # the domain never yields a sample, so it never has a loss
        loss = true_loss(consumed)
        s.observe(step, consumed, {"ct": loss[0], "mri": loss[1]}, "val" if step % 2 == 0 else "train")
    assert_valid(s.weights(), 0.02)


def test_project_to_floor_keeps_ratios_above_floor() -> None:
    w = project_to_floor(np.array([0.6, 0.3, 0.1, 0.0]), 0.05)
    assert w[3] == pytest.approx(0.05)
    assert w[0] / w[1] == pytest.approx(2.0)
    assert w.sum() == pytest.approx(1.0, abs=1e-12)
    assert np.allclose(project_to_floor(np.array([np.nan, -1.0, np.inf]), 0.1), 1 / 3)


def test_temperature_respects_unimax_cap() -> None:
    s = build("temperature", DOMAINS, available=AVAILABLE, total_budget=BUDGET, tau=1.0, max_epochs=2, floor=0.0)
    w = s.weights()
    caps = 2 * np.array([20_000, 6_000, 1_500]) / BUDGET
    assert np.all(w <= caps + 1e-12)
    assert np.allclose(cap_fill(np.array([0.9, 0.05, 0.05]), np.array([0.5, 1.0, 1.0])), [0.5, 0.25, 0.25])
    inf = build("temperature", DOMAINS, available=AVAILABLE, tau="inf", floor=0.0).weights()
    assert np.allclose(inf, 1 / 3)


def test_fixed_reads_laws_json_allocation(tmp_path) -> None:
    from mixpretrain.scaling import LawFit, allocate

    k = 3
    fit = LawFit(family="transfer", domains=tuple(DOMAINS),
                 params={"E": [0.3] * k, "A": [3.0] * k, "alpha": [0.3] * k, "T": np.full((k, k), 0.2),
                         "gamma": np.ones((k, k)), "d_ref": 1e4})
    alloc = allocate(fit, BUDGET)
    path = tmp_path / "laws.json"
    path.write_text(json.dumps({**fit.to_dict(), "allocation": alloc.to_dict()}))
    w = build("fixed", DOMAINS, laws=str(path), floor=0.0).weights()
    assert np.allclose(w, alloc.weights / alloc.weights.sum())
    # `laws allocate -o` output: weights at the top level.
    (tmp_path / "alloc.json").write_text(json.dumps(alloc.to_dict()))
    assert np.allclose(build("fixed", DOMAINS, laws=str(tmp_path / "alloc.json"), floor=0.0).weights(), w)
    # A fitted laws.json without an allocation: allocated for the run's budget.
    (tmp_path / "fit.json").write_text(json.dumps(fit.to_dict()))
    assert np.allclose(build("fixed", DOMAINS, laws=str(tmp_path / "fit.json"), total_budget=BUDGET, floor=0.0).weights(),
                       w, atol=1e-4)
    with pytest.raises(SamplerError, match="total_budget"):
        build("fixed", DOMAINS, laws=str(tmp_path / "fit.json"))
    with pytest.raises(SamplerError, match="does not exist"):
        build("fixed", DOMAINS, laws=str(tmp_path / "missing.json"))


def test_doremi_reference_from_a_runs_metrics(tmp_path) -> None:
    lines = [{"step": 1, "loss/ct": 1.0}, {"step": 10, "val/ct": 0.5, "val/mri": 0.6, "val/pet": 0.7},
             {"step": 20, "val/ct": 0.4, "val/mri": 0.5, "val/pet": 0.6}, {"step": 21, "loss/ct": 0.9}]
    (tmp_path / "metrics.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    s = build("doremi", DOMAINS, reference=str(tmp_path))
    assert s.diagnostics()["reference"] == {"ct": 0.4, "mri": 0.5, "pet": 0.6}
    # pet is far above its reference: DoReMi moves weight to it.
    s.observe(1, [10, 10, 10], {"ct": 0.4, "mri": 0.5, "pet": 1.6}, "train")
    assert np.argmax(s.weights()) == 2


def test_cli_lists_samplers_and_rejects_unknown(capsys, tmp_path) -> None:
    from mixpretrain.cli import main

    assert main(["samplers", "list", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert "transfer" in listed["samplers"]
    assert "explore_fraction" in listed["samplers"]["transfer"]["options"]
    assert main(["samplers", "simulate", "--worlds", "1", "--samplers", "bogus"]) == 2
    assert "unknown sampler 'bogus'" in capsys.readouterr().err
    assert main(["samplers", "simulate", "--worlds", "1", "--seeds", "0"]) == 2
    assert "seeds must be >= 1, got 0" in capsys.readouterr().err
    # The world flags of benchmarks/compare_samplers.py --simulated work here too.
    assert main(["samplers", "simulate", "--worlds", "1", "--samplers", "proportional,uniform", "--plateau", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["settings"]["plateau"] and result["worlds"][0]["world"].endswith("-plateau")
    # Variants and --reuse as well: only the new row runs, the others come from the earlier JSON.
    earlier = tmp_path / "earlier.json"
    earlier.write_text(json.dumps(result))
    assert main(["samplers", "simulate", "--worlds", "1", "--samplers", "proportional,uniform", "--plateau", "--json",
                 "--transfer-variants", '{"pw": {"family": "power"}}', "--reuse", str(earlier)]) == 0
    again = json.loads(capsys.readouterr().out)
    assert again["settings"]["reused"] == ["proportional", "uniform"] and "pw" in again["worlds"][0]["samplers"]
    assert main(["samplers", "simulate", "--worlds", "1", "--transfer-variants", "[1]"]) == 2
    assert "--transfer-variants must map names" in capsys.readouterr().err


def test_samplers_simulate_cli_times_refits(capsys) -> None:
    """--timing (issue 5's refit targets: 3 and 10 domains with a full run's history), as in the benchmark script."""
    from mixpretrain.cli import main

    assert main(["samplers", "simulate", "--worlds", "1", "--samplers", "proportional", "--timing"]) == 0
    out = capsys.readouterr().out
    assert "transfer refit, 3 domains" in out and "transfer refit, 10 domains, rotating challengers" in out
    assert "last " in out and " ms over " in out


def test_transfer_family_options() -> None:
    s = build("transfer", DOMAINS, **options("transfer"), family=["power", "transfer"], ensemble=True,
              rotate_challengers=True)
    weights, _ = drive(s, 0, 24)
    for w in weights:
        assert_valid(w, 0.02)
    diag = s.diagnostics()
    assert diag["family"] in ("power", "transfer")
    assert set(diag["family_scores"]) <= {"power", "transfer", "persistence"}  # persistence: the naive yardstick
    with pytest.raises(SamplerError, match="needs option 'available'"):
        build("transfer", DOMAINS, total_budget=BUDGET, family="repetition")
    with pytest.raises(SamplerError, match="ensemble"):
        build("transfer", DOMAINS, total_budget=BUDGET, ensemble="yes")


def test_transfer_weights_do_not_depend_on_the_blas_thread_count() -> None:
    """Samplers run their arithmetic on one BLAS thread: the same world at 1 and 2 BLAS threads gives
    bit-identical mixtures (before, OpenBLAS's threaded products changed the last bits, and the
    transfer sampler's comparisons turned them into different mixtures in every simulated world)."""
    from threadpoolctl import threadpool_limits

    from mixpretrain.samplers import simulate

    world = simulate.make_world(1, 0)
    opts = simulate.sampler_options(world, "transfer", 0.01, np.full(len(world.domains), 1.0 / len(world.domains)))[1]
    runs = []
    for threads in (1, 2):
        with threadpool_limits(limits=threads, user_api="blas"):
            runs.append(simulate.run_sampler(world, "transfer", opts))
    assert runs[0]["weights"] == runs[1]["weights"]
    assert runs[0]["objective"] == runs[1]["objective"]


@pytest.mark.parametrize("name", ["ado", "transfer"])
def test_load_state_does_not_alias_the_callers_state(name: str) -> None:
    """load_state_dict copies: observing afterwards never changes the caller's state (it used to append
    to its `points` list), and two samplers loaded from one state object share nothing."""
    import copy

    a = build(name, DOMAINS, **options(name))
    _, consumed = drive(a, 0, 16)
    state = a.state_dict()
    pristine = copy.deepcopy(state)
    b, c = build(name, DOMAINS, **options(name)), build(name, DOMAINS, **options(name))
    b.load_state_dict(state)
    c.load_state_dict(state)
    assert b.points is not c.points and b.points is not state["points"]
    drive(b, 16, 24, consumed=consumed)
    assert state == pristine
    ref = build(name, DOMAINS, **options(name))
    ref.load_state_dict(pristine)
    drive(c, 16, 24, consumed=consumed)
    drive(ref, 16, 24, consumed=consumed)
    assert c.state_dict() == ref.state_dict() == b.state_dict()


def test_load_state_into_a_used_sampler_keeps_unset_fields_unset() -> None:
    """A state field is converted by its declared kind and saved value, not by the attribute it replaces:
    transfer's `recent` saved unset (None) and loaded into a sampler that had observed became array(nan),
    and the weights NaN."""
    fresh_state = json.loads(json.dumps(build("transfer", DOMAINS, **options("transfer")).state_dict()))
    assert fresh_state["recent"] is None
    used = build("transfer", DOMAINS, **options("transfer"))
    drive(used, 0, 6)
    assert used.recent is not None
    used.load_state_dict(fresh_state)
    assert used.recent is None
    fresh = build("transfer", DOMAINS, **options("transfer"))
    fresh.load_state_dict(fresh_state)
    wu, _ = drive(used, 0, 12)
    wf, _ = drive(fresh, 0, 12)
    assert np.array_equal(np.array(wu), np.array(wf))
    assert json.dumps(used.state_dict()) == json.dumps(fresh.state_dict())
    assert isinstance(used.recent, np.ndarray) and np.isfinite(used.recent).all()


def test_ado_degenerate_fit_is_no_fit() -> None:
    """Counts over a tiny log range give a near-vertical log-log slope: exp(intercept) overflowed and an
    OverflowError escaped observe(). The fit now counts as none (the domain gets the mean preference)."""
    from mixpretrain.samplers.online import fit_power_law

    n = np.array([100000.0, 100001.0, 100002.0, 100003.0])
    assert fit_power_law(n, np.array([0.70, 0.69, 0.70, 0.68])) is None
    s = build("ado", ["ct", "mri"], seed=0)
    for step, (count, loss) in enumerate(zip(n, [0.70, 0.69, 0.70, 0.68], strict=True), 1):
        s.observe(step, [1000 * step, count], {"ct": 1.0 / step, "mri": loss}, "train")
        w = s.weights()
        assert np.isfinite(w).all() and w.sum() == pytest.approx(1.0)
    assert s.diagnostics()["laws"]["mri"] is None
    # A well-posed curve still fits.
    fit = fit_power_law(np.array([100.0, 300.0, 1000.0, 3000.0]), 0.3 + 2.0 * np.array([100.0, 300.0, 1000.0, 3000.0]) ** -0.3)
    assert fit is not None and fit[2] > 0


@pytest.mark.parametrize(
    ("opts", "match"),
    [
        ({"seed": None}, "option 'seed': expected an integer, got None"),
        ({"seed": "abc"}, "option 'seed'"),
        ({"seed": 1.5}, r"option 'seed': expected an integer, got 1.5"),  # was silently truncated to 1
        ({"seed": True}, "option 'seed'"),
        ({"floor": "abc"}, "option 'floor'.*'abc'"),
        ({"floor": [0.01]}, r"option 'floor'.*\[0.01\]"),
        ({"floor": float("nan")}, "option 'floor'"),
        ({"floor": -0.1}, "option 'floor'"),
    ],
)
def test_bad_common_options_are_named(opts: dict, match: str) -> None:
    with pytest.raises(SamplerError, match=match) as err:
        build("uniform", DOMAINS, **opts)
    assert isinstance(err.value, ValueError)  # the trainer turns a ValueError into a config error


def test_whole_number_seeds_and_numpy_floors_are_accepted() -> None:
    assert build("uniform", DOMAINS, seed=3.0).seed == 3  # e.g. a JSON config
    assert build("uniform", DOMAINS, seed=np.int64(3)).seed == 3
    assert build("uniform", DOMAINS, floor=np.float32(0.25)).floor == pytest.approx(0.25)
    assert build("uniform", DOMAINS, floor=0).floor == 0.0


@pytest.mark.parametrize(
    ("name", "opts", "key"),
    [
        ("doremi", {"reference": [0.3, 0.35, 0.4], "eta": math.inf}, "eta"),  # gave a NaN state
        ("transfer", {"total_budget": BUDGET, "harm_guard": math.inf}, "harm_guard"),  # silently disabled the guard
        ("transfer", {"total_budget": BUDGET, "select_tol": math.inf}, "select_tol"),
        ("transfer", {"total_budget": BUDGET, "steer_band": math.inf}, "steer_band"),
        ("transfer", {"total_budget": BUDGET, "forget_z": -math.inf}, "forget_z"),
        ("temperature", {"available": AVAILABLE, "total_budget": BUDGET, "max_epochs": math.inf}, "max_epochs"),
    ],
)
def test_non_finite_options_are_refused(name: str, opts: dict, key: str) -> None:
    with pytest.raises(SamplerError, match=f"option '{key}': expected a finite number"):
        build(name, DOMAINS, **opts)


def test_inf_stays_valid_where_it_is_documented() -> None:
    assert np.allclose(build("temperature", DOMAINS, available=AVAILABLE, tau=math.inf, floor=0.0).weights(), 1 / 3)
    build("transfer", DOMAINS, total_budget=BUDGET, available=AVAILABLE, prior="temperature", prior_tau="inf")


@pytest.mark.parametrize("doc", [[0.5, 0.3, 0.2], "weights", 3, None])
def test_fixed_laws_json_must_be_an_object(tmp_path, doc) -> None:
    path = tmp_path / "laws.json"
    path.write_text(json.dumps(doc))
    with pytest.raises(SamplerError, match=r"option 'laws': .*laws\.json holds a JSON \w+ at the top level; expected an object"):
        build("fixed", DOMAINS, laws=str(path))
