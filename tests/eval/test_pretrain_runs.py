"""Sampler comparison and pilot sweep through the real trainer (launch/pretrain.py subprocesses)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import yaml

from mixpretrain.eval.runner import pretrain_script

REPO = Path(__file__).resolve().parents[2]
if not (REPO / "launch" / "pretrain.py").is_file():  # the only reason to skip: no trainer in this checkout
    pytest.skip("launch/pretrain.py does not exist", allow_module_level=True)

TINY = {
    "data": {"crop_size": [16, 16, 16], "crops_per_volume": 2, "num_workers": 0, "val_crops_per_domain": 2},
    "model": {"preset": "custom", "patch_size": 8, "overrides": {"width": 32, "depth": 2, "heads": 2}},
    "sampler": {"name": "uniform", "update_every": 2},
    "train": {"max_steps": 4, "micro_batch_size": 4, "eval_every": 2, "checkpoint_every": 100, "warmup_steps": 1},
    "logging": {"wandb": False, "progress_bar": False},
}


def _config(path: Path, shards: Path, **extra: dict) -> Path:
    raw = json.loads(json.dumps(TINY))
    raw["output_dir"] = str(path.parent / "unused")
    raw["data"]["shards"] = str(shards)
    raw.update(extra)
    path.write_text(yaml.safe_dump(raw))
    return path


def test_two_sampler_comparison_produces_the_table(tmp_path: Path) -> None:
    from mixpretrain.eval.compare import format_table, run_comparison

    cfg = _config(tmp_path / "bench.yaml", tmp_path / "shards",
                  bench={"samplers": ["uniform", "proportional"], "phantom": {"size": 16, "cases": {"ct": 6, "mri": 3}}})
    result = run_comparison(cfg, tmp_path / "cmp")
    assert pretrain_script().is_file()
    assert all(s["status"] == "ok" for s in result["runs"].values()), result["runs"]
    assert result["domains"] == ["ct", "mri"] and result["reference"] == "proportional"
    prop, uni = result["samplers"]["proportional"], result["samplers"]["uniform"]
    assert prop["mean_normalised"] == pytest.approx(1.0)
    assert all(math.isfinite(v) and v > 0 for v in uni["final_val"].values())
    # same budget for every sampler; realised consumption follows each sampler's mixture
    assert len(set(result["total_samples"].values())) == 1
    assert sum(prop["consumed_fraction"].values()) == pytest.approx(1.0)
    # each run trained under its own sampler: proportional weights follow the data sizes (ct has 2x mri)
    first = json.loads((tmp_path / "cmp/runs/proportional-seed0/metrics.jsonl").read_text().splitlines()[0])
    assert first["weights"]["ct"] > 0.55
    table = format_table(result)
    assert "| uniform |" in table and "Δ% mean" in table
    for name in ("comparison.json", "comparison.md", "loss_curves.png", "weights.png"):
        assert (tmp_path / "cmp" / name).is_file()


def test_a_variant_is_a_row_normalised_by_the_same_reference_and_finished_runs_are_reused(tmp_path: Path) -> None:
    from mixpretrain.eval.compare import run_comparison

    cfg = _config(tmp_path / "bench.yaml", tmp_path / "shards",
                  bench={"samplers": ["proportional"], "phantom": {"size": 16, "cases": {"ct": 6, "mri": 3}},
                         "variants": {"temperature-tau1": {"sampler": "temperature", "options": {"tau": 1.0}}}})
    first = run_comparison(cfg, tmp_path / "cmp")
    assert list(first["samplers"]) == ["proportional", "temperature-tau1"]
    assert first["runs"]["temperature-tau1-seed0"]["status"] == "ok"
    saved = yaml.safe_load((tmp_path / "cmp/configs/temperature-tau1-seed0.yaml").read_text())
    assert saved["sampler"]["name"] == "temperature" and saved["sampler"]["options"]["tau"] == 1.0
    # tau 1 is proportional sampling: the variant row consumes what proportional consumed
    row, prop = first["samplers"]["temperature-tau1"], first["samplers"]["proportional"]
    assert row["consumed_fraction"]["ct"] == pytest.approx(prop["consumed_fraction"]["ct"], abs=0.15)
    assert all(math.isfinite(v) for v in row["normalised"].values())
    # A second call with one more transfer row and a fixed mixture (--variants) trains only those.
    fixed = {"ct90": {"sampler": "fixed", "options": {"weights": {"ct": 0.9, "mri": 0.1}}}}
    second = run_comparison(cfg, tmp_path / "cmp", transfer_variants={"band": {"steer_band": 1.5}}, variants=fixed)
    assert second["runs"]["proportional-seed0"]["status"] == "done-before"
    assert second["runs"]["temperature-tau1-seed0"]["status"] == "done-before"
    assert second["runs"]["band-seed0"]["status"] == "ok" and second["runs"]["ct90-seed0"]["status"] == "ok"
    assert second["samplers"]["ct90"]["consumed_fraction"]["ct"] > prop["consumed_fraction"]["ct"]
    assert second["variants"]["band"] == {"sampler": "transfer", "options": {"steer_band": 1.5}}
    assert "other_code" not in second["runs"]["proportional-seed0"]


def test_a_reused_run_of_other_code_is_named_in_the_table(tmp_path: Path) -> None:
    """Reuse is checked against the config; a change of code (a sampler's defaults) is only visible
    through the code fingerprint in run.json."""
    from mixpretrain.eval.compare import format_table, run_comparison
    from mixpretrain.provenance import code_fingerprint

    cfg = _config(tmp_path / "bench.yaml", tmp_path / "shards",
                  bench={"samplers": ["proportional"], "phantom": {"size": 16, "cases": {"ct": 4, "mri": 2}}})
    run_comparison(cfg, tmp_path / "cmp")
    run_json = tmp_path / "cmp/runs/proportional-seed0/run.json"
    record = json.loads(run_json.read_text())
    assert record["code"]["fingerprint"] == code_fingerprint()
    record["code"]["fingerprint"] = "0123456789abcdef"  # as if trained before a code change
    run_json.write_text(json.dumps(record))
    again = run_comparison(cfg, tmp_path / "cmp")
    status = again["runs"]["proportional-seed0"]
    assert status["status"] == "done-before" and "0123456789abcdef" in status["other_code"]
    assert "reused 1 finished run(s) trained by other mixpretrain code: proportional-seed0" in format_table(again)


def test_parallel_comparison_trains_doremi_after_its_reference(tmp_path: Path) -> None:
    from mixpretrain.eval.compare import run_comparison

    cfg = _config(tmp_path / "bench.yaml", tmp_path / "shards",
                  bench={"samplers": ["doremi", "proportional"], "jobs": 3,
                         "phantom": {"size": 16, "cases": {"ct": 6, "mri": 3}}})
    result = run_comparison(cfg, tmp_path / "cmp")
    assert result["jobs"] == 3
    # doremi reads the uniform run's validation losses: it could only succeed after that run finished
    assert set(result["runs"]) == {"uniform-seed0", "doremi-seed0", "proportional-seed0"}
    assert all(s["status"] == "ok" for s in result["runs"].values()), result["runs"]
    uniform_done = (tmp_path / "cmp/runs/uniform-seed0/metrics.jsonl").stat().st_mtime
    doremi_log = (tmp_path / "cmp/logs/doremi-seed0.log").read_text()
    assert doremi_log and uniform_done <= (tmp_path / "cmp/runs/doremi-seed0/metrics.jsonl").stat().st_mtime


def test_bench_jobs_must_be_a_positive_integer(tmp_path: Path) -> None:
    from mixpretrain.eval.compare import split_bench_config

    cfg = _config(tmp_path / "bench.yaml", tmp_path / "shards", bench={"jobs": 0})
    with pytest.raises(ValueError, match="bench.jobs must be an integer >= 1, got 0"):
        split_bench_config(cfg)


def test_pilot_sweep_runs_collects_fits_and_allocates(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from mixpretrain.data.synth import write_phantom_shards
    from mixpretrain.eval.pilot import run_pilot_sweep

    write_phantom_shards(tmp_path / "shards", ["ct"], cases=4, size=16)
    base = _config(tmp_path / "base.yaml", tmp_path / "shards")
    emitted = run_pilot_sweep(tmp_path / "pilot", base, [8, 16, 24, 32], mode="emit")
    script = Path(emitted["script"]).read_text()
    assert emitted["n_runs"] == 4 and script.count("launch/pretrain.py --config") == 4

    summary = run_pilot_sweep(tmp_path / "pilot", base, [8, 16, 24, 32], report=False)  # resumes the same plan
    assert summary["runs_fitted"] == ["single-ct-8", "single-ct-16", "single-ct-24", "single-ct-32"]
    assert (tmp_path / "pilot" / "results.csv").read_text().startswith("run,D_ct,L_ct")
    laws = json.loads((tmp_path / "pilot" / "laws.json").read_text())
    assert laws["domains"] == ["ct"]
    alloc = json.loads((tmp_path / "pilot" / "allocation.json").read_text())
    assert alloc["weights"]["ct"] == pytest.approx(1.0) and alloc["budget"] == 128
    # a re-run finds every pilot finished and runs nothing
    again = run_pilot_sweep(tmp_path / "pilot", base, [8, 16, 24, 32], report=False)
    assert {s["status"] for s in again["runs"].values()} == {"done-before"}
    with pytest.raises(ValueError, match="was planned for"):
        run_pilot_sweep(tmp_path / "pilot", base, [8, 64], mode="collect")
