"""The pilot planner (``laws plan``) and the report's run-to-curve matching: regressions from a review."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
import yaml

from mixpretrain.config import load_config
from mixpretrain.samplers.registry import build
from mixpretrain.scaling.planner import check_unique, plan_pilots
from mixpretrain.scaling.report import planned_fractions


@pytest.fixture
def base(tmp_path):
    """A base config whose own sampler has a floor: the pilots must not inherit it."""
    path = tmp_path / "base.yaml"
    path.write_text(yaml.safe_dump({"train": {"micro_batch_size": 4, "eval_every": 25},
                                    "sampler": {"name": "fixed", "options": {"weights": [1, 1, 1], "floor": 0.05}},
                                    "logging": {"wandb": False}}))
    return path


def test_single_domain_pilots_train_on_their_domain_only(tmp_path, base):
    """A single-ct pilot ran as [0.98, 0.01, 0.01]: the fixed sampler's default floor raised the zeros."""
    plan = plan_pilots(["ct", "mri", "pet"], [64, 128], base, tmp_path / "p", n_random=2)
    for entry in plan["runs"]:
        cfg = load_config(entry["config"])
        assert cfg.sampler.options == {"weights": entry["weights"], "floor": 0.0}
        used = build("fixed", ("ct", "mri", "pet"), **cfg.sampler.options).weights()
        planned = np.array([entry["weights"][d] for d in ("ct", "mri", "pet")])
        np.testing.assert_allclose(used, planned / planned.sum(), atol=1e-12)
    assert build("fixed", ("ct", "mri", "pet"),
                 **load_config(tmp_path / "p" / "configs" / "single-ct-64.yaml").sampler.options).weights().tolist() == [1, 0, 0]


def test_duplicate_budgets_are_refused_and_names_are_exact(tmp_path, base):
    with pytest.raises(ValueError, match="--budgets lists 200 more than once"):
        plan_pilots(["ct", "mri"], [200, 200, 400], base, tmp_path / "dup")
    assert not (tmp_path / "dup" / "plan.json").exists()
    # f"{b:g}" named both of these 1.23457e+06: the second run's config overwrote the first's
    plan = plan_pilots(["ct", "mri"], [1234567, 1234568, 2.5], base, tmp_path / "big", n_random=0)
    names = [r["run"] for r in plan["runs"]]
    assert len(set(names)) == len(names) == len(list((tmp_path / "big" / "configs").glob("*.yaml")))
    assert {"single-ct-1234567", "single-ct-1234568", "uniform-2.5"} <= set(names)


def test_proportional_equal_to_uniform_is_left_out(tmp_path, base):
    plan = plan_pilots(["ct", "mri"], [100, 200, 400], base, tmp_path / "eq", unique={"ct": 50, "mri": 50}, n_random=1)
    kinds = [r["kind"] for r in plan["runs"]]
    assert kinds.count("proportional") == 0 and kinds.count("uniform") == 3 and len(kinds) == 12
    assert "proportional left out at budget(s) 100, 200, 400: same weights as uniform (the unique counts are equal)" \
        in plan["notes"]
    plan = plan_pilots(["ct", "mri"], [100, 200, 400], base, tmp_path / "neq", unique={"ct": 50, "mri": 150}, n_random=1)
    assert [r["kind"] for r in plan["runs"]].count("proportional") == 3
    assert not any("left out" in n for n in plan["notes"])


def test_partial_unique_names_the_missing_domains(tmp_path, base):
    with pytest.raises(ValueError, match=r"--unique must give every domain \(ct, mri, pet\) and no other: missing mri, pet"):
        check_unique({"ct": 100.0}, ["ct", "mri", "pet"])
    with pytest.raises(ValueError, match="unknown xray"):
        plan_pilots(["ct"], [100], base, tmp_path / "u", unique={"ct": 1.0, "xray": 2.0})
    check_unique(None, ["ct"])  # not given: fine


def test_report_matches_runs_to_curves_by_plan_name():
    """Sampled runs only come near their weights (uniform-64 consumed 30/17/17, single-ct-256 253/2/1):
    matching by consumed shares within 1e-3 put no run on curves.png."""
    fit = SimpleNamespace(domains=("ct", "mri", "pet"))
    runs = ["single-ct-256", "uniform-64", "run7", "single-mri-64"]
    D = np.array([[253.0, 2, 1], [30, 17, 17], [10, 0, 0], [2, 62, 0]])
    plan = {"runs": [{"run": "run7", "weights": {"ct": 0.0, "mri": 0.0, "pet": 1.0}}]}
    frac = planned_fractions(fit, runs, D, plan)
    np.testing.assert_allclose(frac, [[1, 0, 0], [1 / 3] * 3, [0, 0, 1], [0, 1, 0]])
    # no plan: the planner's names, then the consumed shares
    frac = planned_fractions(fit, runs, D)
    np.testing.assert_allclose(frac[2], [1, 0, 0])
    np.testing.assert_allclose(frac[[0, 1, 3]], [[1, 0, 0], [1 / 3] * 3, [0, 1, 0]])
    # a domain whose name extends another's is matched to the longer one
    fit2 = SimpleNamespace(domains=("ct", "ct-a"))
    np.testing.assert_allclose(planned_fractions(fit2, ["single-ct-a-100"], np.array([[5.0, 95.0]])), [[0, 1]])


def test_plan_json_records_the_planning_arguments(tmp_path, base):
    plan = plan_pilots(["ct", "mri"], [100, 200], base, tmp_path / "a", n_random=3, seed=7, world_size=2)
    saved = json.loads((tmp_path / "a" / "plan.json").read_text())
    assert (saved["n_random"], saved["seed"], saved["world_size"]) == (3, 7, 2) == \
        (plan["n_random"], plan["seed"], plan["world_size"])


def test_unique_counts_all_zero_or_negative_are_refused() -> None:
    from mixpretrain.scaling.planner import check_unique

    with pytest.raises(ValueError, match="not all 0"):
        check_unique({"ct": 0, "mri": 0}, ["ct", "mri"])
    with pytest.raises(ValueError, match="'mri': -5"):
        check_unique({"ct": 10, "mri": -5}, ["ct", "mri"])
    check_unique({"ct": 10, "mri": 0}, ["ct", "mri"])
