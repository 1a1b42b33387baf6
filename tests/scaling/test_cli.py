"""The ``laws`` command group end to end: fit -> predict -> allocate -> report, plan -> collect."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest
import yaml

from mixpretrain.config import load_config
from mixpretrain.scaling import commands
from mixpretrain.scaling.results import read_results, write_results
from mixpretrain.scaling.synthetic import BUDGETS, make_world, observe, pilot_design


def laws(*argv: str) -> int:
    """Run ``mixpretrain laws ...`` in-process through the same parser the CLI registers."""
    parser = argparse.ArgumentParser(prog="mixpretrain")
    commands.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["laws", *argv])
    return args.func(args)


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("laws")
    world = make_world(3, seed=1, hub=0, island=2)
    rng = np.random.default_rng(0)
    D = pilot_design(3, BUDGETS, rng)
    L = observe(world, D, rng)
    names = ("ct", "mri", "pet")
    write_results(tmp / "results.csv", [f"run{i}" for i in range(len(D))], names, D, L)
    assert laws("fit", str(tmp / "results.csv"), "-o", str(tmp / "laws.json"), "--bootstrap", "8") == 0
    return tmp, world, names


def test_fit_writes_laws_json(fitted, capsys):
    tmp, _, names = fitted
    doc = json.loads((tmp / "laws.json").read_text())
    assert doc["domains"] == list(names) and doc["family"] in ("linear", "transfer")
    assert len(doc["bootstrap"]) == 8 and len(doc["data"]["runs"]) == 42
    with pytest.raises(FileExistsError, match="--overwrite"):
        laws("fit", str(tmp / "results.csv"), "-o", str(tmp / "laws.json"))


def test_predict_csv_and_point(fitted, capsys):
    tmp, world, names = fitted
    mixes = np.array([[1000.0, 2000.0, 3000.0], [0.0, 0.0, 5000.0]])
    (tmp / "mixes.csv").write_text("D_ct,D_mri,D_pet,note\n" + "\n".join(",".join(map(str, r)) + ",x" for r in mixes))
    capsys.readouterr()
    laws("predict", str(tmp / "laws.json"), "--csv", str(tmp / "mixes.csv"), "--json")
    rows = json.loads(capsys.readouterr().out)
    assert [list(r) for r in rows] == [list(names)] * 2
    got = np.array([[r[d] for d in names] for r in rows])
    np.testing.assert_allclose(got, world.predict(mixes), rtol=0.03)
    laws("predict", str(tmp / "laws.json"), "--consumed", "ct=1000,pet=50", "--json")
    (point,) = json.loads(capsys.readouterr().out)
    assert set(point) == set(names)
    with pytest.raises(ValueError, match="unknown domain 'xray'"):
        laws("predict", str(tmp / "laws.json"), "--consumed", "xray=5")


def test_allocate_json(fitted, capsys):
    tmp, _, names = fitted
    capsys.readouterr()
    laws("allocate", str(tmp / "laws.json"), "--budget", "64000", "--importance", "ct=1,mri=1,pet=2",
         "--floor", "0.05", "--json", "-o", str(tmp / "alloc.json"))
    doc = json.loads(capsys.readouterr().out)
    for key in ("weights", "predicted", "gain_vs_proportional", "hubs", "islands"):
        assert key in doc
    assert set(doc["weights"]) == set(names)
    assert sum(doc["weights"].values()) == pytest.approx(1.0)
    assert min(doc["weights"].values()) >= 0.05 - 1e-9
    assert json.loads((tmp / "alloc.json").read_text())["weights"] == doc["weights"]


def test_report_writes_pngs_and_summary(fitted):
    tmp, _, names = fitted
    laws("report", str(tmp / "laws.json"), "-o", str(tmp / "report"))
    for name in ("curves.png", "transfer_matrix.png", "hubs_islands.png", "allocation_vs_budget.png", "parity.png"):
        data = (tmp / "report" / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
    summary = (tmp / "report" / "summary.md").read_text()
    assert "## Transfer matrix" in summary and "## Allocation at" in summary and "hubs:" in summary


def _fake_run(run_dir, consumed_per_step, losses, steps, planned, torn=False):
    """A run directory as the trainer leaves it: run.json (config) and metrics.jsonl."""
    run_dir.mkdir(parents=True)
    (run_dir / "run.json").write_text(json.dumps({"config": {"train": {"max_steps": planned}}}))
    lines = []
    for s in range(1, steps + 1):
        rec = {"step": s, "consumed": {d: n * s for d, n in consumed_per_step.items()}, "loss": 1.0}
        if s % 2 == 0 or s == steps:
            rec.update({f"val/{d}": v + 1.0 / s for d, v in losses.items()})
        lines.append(json.dumps(rec))
    text = "\n".join(lines) + "\n" + ('{"step": 99, "consum' if torn else "")
    (run_dir / "metrics.jsonl").write_text(text)


def test_plan_then_collect(tmp_path, capsys):
    base = tmp_path / "base.yaml"
    base.write_text(yaml.safe_dump({"train": {"micro_batch_size": 4, "eval_every": 25}, "logging": {"wandb": False}}))
    out = tmp_path / "pilots"
    laws("plan", "--domains", "ct,mri,pet", "--unique", "ct=300,mri=500,pet=100", "--budgets", "200,400,800",
         "--base-config", str(base), "-o", str(out), "--random", "1")
    plan = json.loads((out / "plan.json").read_text())
    kinds = [r["kind"] for r in plan["runs"]]
    assert kinds.count("single") == 9 and kinds.count("uniform") == 3 and kinds.count("proportional") == 3
    assert kinds.count("random") == 3 and len(plan["runs"]) == 18
    outputs = {r["output_dir"] for r in plan["runs"]}
    assert len(outputs) == 18  # every run its own output_dir
    cfg = load_config(out / "configs" / "proportional-400.yaml")  # the trainer's schema accepts it
    assert cfg.sampler.name == "fixed" and cfg.train.max_steps == 100 and cfg.logging.wandb is False
    assert cfg.sampler.options["weights"] == pytest.approx({"ct": 300 / 900, "mri": 500 / 900, "pet": 100 / 900})
    assert any("repeat its data" in n for n in plan["notes"])
    with pytest.raises(FileExistsError):
        laws("plan", "--domains", "ct", "--budgets", "100,200,300", "-o", str(out))

    runs = tmp_path / "runs"
    _fake_run(runs / "a", {"ct": 4, "mri": 0}, {"ct": 0.5, "mri": 0.9}, steps=10, planned=10)
    _fake_run(runs / "b", {"ct": 2, "mri": 2}, {"ct": 0.6, "mri": 0.6}, steps=9, planned=9, torn=True)
    _fake_run(runs / "c", {"ct": 1, "mri": 3}, {"ct": 0.7}, steps=4, planned=10)  # unfinished
    (runs / "d").mkdir()  # never started
    capsys.readouterr()
    laws("collect", str(runs / "a"), str(runs / "b"), str(runs / "c"), str(runs / "d"), "-o", str(tmp_path / "res.csv"))
    assert "skipped 2" in capsys.readouterr().out
    res = read_results(tmp_path / "res.csv")
    assert res.runs == ["a", "b"] and res.domains == ("ct", "mri")
    np.testing.assert_allclose(res.D, [[40, 0], [18, 18]])
    np.testing.assert_allclose(res.L, [[0.6, 1.0], [0.6 + 1 / 9, 0.6 + 1 / 9]])
    laws("collect", str(runs / "c"), "--allow-unfinished", "-o", str(tmp_path / "res2.csv"))
    res2 = read_results(tmp_path / "res2.csv")
    assert res2.D.tolist() == [[4.0, 12.0]] and np.isnan(res2.L[0, 1])
    with pytest.raises(ValueError, match="no finished run"):
        laws("collect", str(runs / "d"), "-o", str(tmp_path / "res3.csv"))


def test_allocate_output_is_handled_like_fit(fitted, capsys):
    """-o: an existing file is kept without --overwrite, a directory is named, a new folder is created."""
    tmp, _, _ = fitted
    target = tmp / "alloc_new" / "sub" / "alloc.json"
    assert laws("allocate", str(tmp / "laws.json"), "--budget", "64000", "-o", str(target)) == 0
    doc = json.loads(target.read_text())
    assert doc["floor"] == 0.0 and set(doc["weights"]) == {"ct", "mri", "pet"}
    target.write_text("keep me")
    with pytest.raises(FileExistsError, match=f"{target} exists; pass --overwrite to replace it"):
        laws("allocate", str(tmp / "laws.json"), "--budget", "64000", "-o", str(target))
    assert target.read_text() == "keep me"
    laws("allocate", str(tmp / "laws.json"), "--budget", "64000", "-o", str(target), "--overwrite")
    assert json.loads(target.read_text())["weights"] == doc["weights"]
    with pytest.raises(ValueError, match=f"-o {target.parent} is a directory; give the path of the file to write"):
        laws("allocate", str(tmp / "laws.json"), "--budget", "64000", "-o", str(target.parent), "--overwrite")


def test_allocate_output_notes_the_fixed_samplers_floor(tmp_path, capsys):
    """Weights below the fixed sampler's default floor would be raised to it unless its floor is given."""
    world = make_world(2, seed=0, hub=0, island=1)
    D = pilot_design(2, BUDGETS, np.random.default_rng(0))
    write_results(tmp_path / "r.csv", [f"r{i}" for i in range(len(D))], ("ct", "mri"), D, observe(world, D, np.random.default_rng(1)))
    laws("fit", str(tmp_path / "r.csv"), "-o", str(tmp_path / "laws.json"), "--bootstrap", "0", "--family", "power")
    capsys.readouterr()
    laws("allocate", str(tmp_path / "laws.json"), "--budget", "64000", "--importance", "ct=1,mri=0", "--json",
         "-o", str(tmp_path / "a.json"))
    out, err = capsys.readouterr()
    doc = json.loads(out)  # stdout stays JSON
    assert doc["weights"]["mri"] < 0.01
    assert f"mri below the fixed sampler's default floor 0.01; to train with these weights, give sampler 'fixed' " \
           f"floor: 0 beside laws: {tmp_path / 'a.json'}" in err


def test_budget_zero_is_refused_not_replaced_by_the_default(fitted):
    tmp, _, _ = fitted
    with pytest.raises(ValueError, match=r"--budget 0: the budget must be a positive number of samples"):
        laws("report", str(tmp / "laws.json"), "-o", str(tmp / "report0"), "--budget", "0")
    assert not (tmp / "report0").exists()
    with pytest.raises(ValueError, match=r"--budget -5: the budget must be a positive number of samples"):
        laws("allocate", str(tmp / "laws.json"), "--budget", "-5")


def test_importance_of_unlisted_domains_is_one(fitted, capsys):
    tmp, _, _ = fitted
    capsys.readouterr()
    laws("allocate", str(tmp / "laws.json"), "--budget", "64000", "--importance", "pet=2", "--json")
    partial = json.loads(capsys.readouterr().out)
    laws("allocate", str(tmp / "laws.json"), "--budget", "64000", "--importance", "ct=1,mri=1,pet=2", "--json")
    assert json.loads(capsys.readouterr().out)["weights"] == partial["weights"]


def test_negative_floor_says_so(fitted):
    tmp, _, _ = fitted
    with pytest.raises(ValueError, match=r"floor -0.1: the minimum weight of every domain must be >= 0"):
        laws("allocate", str(tmp / "laws.json"), "--budget", "64000", "--floor", "-0.1")


def test_report_with_plan_puts_the_runs_on_the_curves(tmp_path, monkeypatch):
    """Sampled runs consume only about their weights: matched by shares within 1e-3, curves.png showed none."""
    from mixpretrain.scaling import report

    world = make_world(2, seed=0, hub=0, island=1)
    planned = [[1.0, 0.0], [0.0, 1.0], [0.5, 0.5], [0.3, 0.7]]
    realised = [[0.99, 0.01], [0.02, 0.98], [0.53, 0.47], [0.31, 0.69]]
    budgets = [500.0, 1000.0, 2000.0, 4000.0]
    names = [f"p{i}" for i in range(16)]  # not the planner's names: only the plan can tell
    D = np.array([np.array(w) * b for b in budgets for w in realised])
    write_results(tmp_path / "r.csv", names, ("ct", "mri"), D, observe(world, D, np.random.default_rng(0)))
    laws("fit", str(tmp_path / "r.csv"), "-o", str(tmp_path / "laws.json"), "--bootstrap", "0", "--family", "power")
    plan = {"runs": [{"run": n, "weights": dict(zip(("ct", "mri"), planned[i % 4], strict=True))}
                     for i, n in enumerate(names)]}
    (tmp_path / "plan.json").write_text(json.dumps(plan))
    seen = []
    real = report.planned_fractions
    monkeypatch.setattr(report, "planned_fractions", lambda *a: seen.append(real(*a)) or seen[-1])
    curves = [np.array([1.0, 0.0]), np.array([0.0, 1.0]), np.array([0.5, 0.5])]

    def on_curves(frac):
        return sum(int(np.all(np.abs(frac - w) < 1e-3, axis=1).sum()) for w in curves)

    laws("report", str(tmp_path / "laws.json"), "-o", str(tmp_path / "rep"), "--plan", str(tmp_path / "plan.json"))
    assert on_curves(seen[-1]) == 12  # single-ct, single-mri and uniform at 4 budgets
    laws("report", str(tmp_path / "laws.json"), "-o", str(tmp_path / "rep2"))
    assert on_curves(seen[-1]) == 0  # without the plan (and other names): the consumed shares
    (tmp_path / "bad.json").write_text("[]")
    with pytest.raises(ValueError, match="--plan .*bad.json: not a plan.json of `laws plan`"):
        laws("report", str(tmp_path / "laws.json"), "-o", str(tmp_path / "rep"), "--plan", str(tmp_path / "bad.json"))
