"""Comparison planning and run bookkeeping that need no training: configs, reuse checks, launchers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from mixpretrain.config import config_to_dict, load_config
from mixpretrain.eval.compare import collect_variants, plan_runs, split_bench_config, summarise_run
from mixpretrain.eval.runner import check_same_config, launch_command

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("name", ["cpu_tiny", "cpu_tiny_island", "gpu_small"])
def test_bench_configs_are_valid_run_configs(name: str) -> None:
    run, bench = split_bench_config(REPO / "configs" / "bench" / f"{name}.yaml")
    assert {"transfer", "proportional", "uniform"} <= set(bench["samplers"])
    assert bench["seeds"] == (2 if name == "gpu_small" else 1)
    assert set(bench["phantom"]["cases"]) == {"ct", "mri", "pet", "cells"}
    assert bench["final_evals"] == 5


def test_plan_runs_differ_only_in_sampler_seed_and_output(tmp_path: Path) -> None:
    run, bench = split_bench_config(REPO / "configs" / "bench" / "cpu_tiny.yaml")
    runs = plan_runs(run, bench, ["uniform", "doremi", "transfer"], 2, tmp_path)
    assert [r["name"] for r in runs][:2] == ["uniform-seed0", "uniform-seed1"]
    cfgs = {r["name"]: yaml.safe_load(r["config"].read_text()) for r in runs}
    base = cfgs["uniform-seed0"]
    for name, cfg in cfgs.items():
        for key in ("data", "model"):
            assert cfg[key] == base[key], (name, key)
        assert cfg["train"]["max_steps"] == base["train"]["max_steps"]
    assert cfgs["doremi-seed1"]["sampler"]["options"]["reference"] == str(tmp_path / "runs" / "uniform-seed1")
    assert cfgs["transfer-seed1"]["train"]["seed"] == 1


def test_variant_rows_train_their_sampler_with_merged_options(tmp_path: Path) -> None:
    run, bench = split_bench_config(REPO / "configs" / "bench" / "cpu_tiny.yaml")
    bench = {**bench, "sampler_options": {"transfer": {"dither": 0.1}},
             "variants": {"t-tau1": {"sampler": "temperature", "options": {"tau": 1.0}}}}
    variants = collect_variants(bench, {"band": {"steer_band": 1.25}})
    assert variants == {"t-tau1": {"sampler": "temperature", "options": {"tau": 1.0}},
                        "band": {"sampler": "transfer", "options": {"steer_band": 1.25}}}
    # --variants (any sampler, e.g. a fixed mixture) joins them; the same name replaces the config's row
    cli = {"c2p": {"sampler": "fixed", "options": {"weights": {"ct": 0.7, "mri": 0.3}}},
           "t-tau1": {"sampler": "temperature", "options": {"tau": 3.0}}}
    merged = collect_variants(bench, {"band": {"steer_band": 1.25}}, cli)
    assert merged["c2p"] == cli["c2p"] and merged["t-tau1"]["options"] == {"tau": 3.0} and "band" in merged
    with pytest.raises(ValueError, match="--variants must map row names"):
        collect_variants(bench, None, [1])  # type: ignore[arg-type]
    runs = plan_runs(run, bench, ["transfer", "band", "t-tau1"], 1, tmp_path, variants)
    by_name = {r["name"]: r for r in runs}
    assert by_name["band-seed0"]["sampler"] == "band" and by_name["band-seed0"]["registry"] == "transfer"
    band = yaml.safe_load(by_name["band-seed0"]["config"].read_text())["sampler"]
    assert band["name"] == "transfer" and band["options"]["steer_band"] == 1.25 and band["options"]["dither"] == 0.1
    plain = yaml.safe_load(by_name["transfer-seed0"]["config"].read_text())["sampler"]
    assert "steer_band" not in plain["options"]  # a variant's options stay in its own row
    assert yaml.safe_load(by_name["t-tau1-seed0"]["config"].read_text())["sampler"]["name"] == "temperature"


@pytest.mark.parametrize(("variants", "message"), [
    ({"transfer": {"sampler": "transfer"}}, "not a sampler's registry name"),
    ({"a b": {"sampler": "transfer"}}, "use letters, digits"),
    ({"x": {"sampler": "nope"}}, "unknown sampler 'nope'"),
    ({"x": {"sampler": "transfer", "options": {"steer_bnd": 2}}}, r"unknown transfer option\(s\) \['steer_bnd'\]"),
    ({"x": {"sampler": "transfer", "opts": {}}}, "expected {sampler: NAME, options"),
    ({"x": {"sampler": "transfer", "options": [1]}}, "options must be a mapping"),
])
def test_bad_variants_are_refused_before_any_run(variants: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        collect_variants({"variants": variants})


def test_island_world_makes_the_island_the_largest_source() -> None:
    """cpu_tiny_island exists to give proportional sampling something to get wrong (docs/eval.md)."""
    cases = split_bench_config(REPO / "configs" / "bench" / "cpu_tiny_island.yaml")[1]["phantom"]["cases"]
    assert max(cases, key=cases.get) == "cells" and cases["cells"] > sum(cases.values()) / 2


def test_bench_config_errors(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"train": {"max_step": 3}}))
    with pytest.raises(ValueError, match="unknown config key 'train.max_step'"):
        split_bench_config(bad)
    bad.write_text(yaml.safe_dump({"bench": {"sampler": ["uniform"]}}))
    with pytest.raises(ValueError, match=r"unknown bench key\(s\) \['sampler'\]"):
        split_bench_config(bad)
    for value in (0, 2.5, True):
        bad.write_text(yaml.safe_dump({"bench": {"final_evals": value}}))
        with pytest.raises(ValueError, match="bench.final_evals must be an integer >= 1"):
            split_bench_config(bad)


def test_final_val_is_the_mean_of_the_last_evaluations(tmp_path: Path) -> None:
    """bench.final_evals: a single late evaluation swings by a few %, so the table can average the last k."""
    recs = [{"step": 10 * i, "consumed": {"ct": 8 * i, "mri": 8 * i}, "loss": 1.0} for i in range(1, 7)]
    for i, rec in enumerate(recs):
        if i % 2:  # evaluations at steps 20, 40, 60
            rec.update({"val/ct": 0.5 + 0.1 * i, "val/mri": 1.0})
    (tmp_path / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in recs) + "\n")
    last = summarise_run(tmp_path)
    assert last["final_val"] == pytest.approx({"ct": 1.0, "mri": 1.0}) and last["final_evals"] == [60]
    mean2 = summarise_run(tmp_path, final_evals=2)
    assert mean2["final_val"]["ct"] == pytest.approx(0.9) and mean2["final_evals"] == [40, 60]
    assert summarise_run(tmp_path, final_evals=10)["final_evals"] == [20, 40, 60]  # fewer evaluations than asked: all


def test_a_run_dir_from_another_config_is_refused(tmp_path: Path) -> None:
    cfg = tmp_path / "a.yaml"
    cfg.write_text(yaml.safe_dump({"output_dir": str(tmp_path / "run"), "train": {"max_steps": 7}}))
    (tmp_path / "run").mkdir()
    old = config_to_dict(load_config(cfg))
    (tmp_path / "run" / "run.json").write_text(json.dumps({"config": old}))
    check_same_config(cfg, tmp_path / "run")  # same config: fine
    old["sampler"]["name"] = "uniform"
    (tmp_path / "run" / "run.json").write_text(json.dumps({"config": old}))
    with pytest.raises(ValueError, match="another config .*sampler.name"):
        check_same_config(cfg, tmp_path / "run")


def test_launch_commands() -> None:
    cmd = launch_command(Path("x.yaml"), "torchrun", 2)
    assert cmd[1:4] == ["-m", "torch.distributed.run", "--nproc_per_node"] and cmd[-2:] == ["--config", "x.yaml"]
    with pytest.raises(ValueError, match="launcher 'python' runs one process"):
        launch_command(Path("x.yaml"), "python", 2)


def test_pilot_cli_emit(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """`mixpretrain laws pilot` through the real CLI, in emit mode."""
    from mixpretrain.cli import main
    from mixpretrain.data.synth import write_phantom_shards

    write_phantom_shards(tmp_path / "shards", ["ct", "mri"], cases=4, size=16)
    base = tmp_path / "base.yaml"
    base.write_text(yaml.safe_dump({"data": {"shards": str(tmp_path / "shards"), "crop_size": 16},
                                    "model": {"patch_size": 8}, "train": {"micro_batch_size": 4}}))
    assert main(["laws", "pilot", "--base-config", str(base), "--budgets", "8,16,32", "--random", "1",
                 "--mode", "emit", "-o", str(tmp_path / "pilot")]) == 0
    out = capsys.readouterr().out
    # (2 single + uniform + 1 random) x 3 budgets: proportional equals uniform (equal unique counts), left out
    assert "12 pilot commands" in out
    assert "note: proportional left out at budget(s) 8, 16, 32: same weights as uniform" in out
    plan = json.loads((tmp_path / "pilot" / "plan.json").read_text())
    assert plan["unique"] == {"ct": 3 * 4, "mri": 3 * 4}  # train volumes x crops_per_volume (default 4)


def _pilot_base(tmp_path: Path) -> Path:
    from mixpretrain.data.synth import write_phantom_shards

    write_phantom_shards(tmp_path / "shards", ["ct", "mri", "pet"], cases=4, size=16)
    base = tmp_path / "base.yaml"
    base.write_text(yaml.safe_dump({"data": {"shards": str(tmp_path / "shards"), "crop_size": 16},
                                    "model": {"patch_size": 8}, "train": {"micro_batch_size": 4}}))
    return base


def test_pilot_refuses_bad_arguments_before_training(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """Partial --unique (a KeyError in collect mode), --budget 0 (silently the default), a changed
    --nproc/--random/--seed on resume (silently ignored: --nproc 2 consumed twice each budget)."""
    from mixpretrain.cli import main
    from mixpretrain.eval.pilot import run_pilot_sweep

    base = _pilot_base(tmp_path)
    out = tmp_path / "pilot"

    def pilot(*extra: str) -> str:
        assert main(["laws", "pilot", "--base-config", str(base), "--budgets", "8,16,32", "-o", str(out), *extra]) == 2
        return capsys.readouterr().err

    assert "--unique must give every domain (ct, mri, pet) and no other: missing mri, pet" in pilot(
        "--mode", "collect", "--unique", "ct=100")
    assert "--budget 0: the allocation budget must be a positive number of samples" in pilot("--mode", "emit", "--budget", "0")
    assert "--floor -0.1: the minimum weight of every domain must be in [0, 1/3]" in pilot("--mode", "emit", "--floor", "-0.1")
    assert "--importance: unknown domain(s) xray; domains are ct, mri, pet" in pilot("--mode", "emit", "--importance", "xray=2")
    assert not (out / "plan.json").exists()

    run_pilot_sweep(out, base, [8, 16, 32], n_random=2, seed=0, mode="emit")
    with pytest.raises(ValueError) as err:
        run_pilot_sweep(out, base, [8, 16, 32], n_random=1, seed=3, nproc=2, launcher="torchrun", mode="collect")
    assert str(err.value) == (f"{out / 'plan.json'} was planned for other arguments (--nproc 1 -> 2; --random 2 -> 1; "
                              "--seed 0 -> 3): resume with the saved ones, or use another output folder, or --overwrite "
                              "to plan again")
    with pytest.raises(ValueError, match=r"--budgets 8,16,32 -> 8,16,64; --unique ct=12,mri=12,pet=12 -> ct=12,mri=12,pet=24"):
        run_pilot_sweep(out, base, [8, 16, 64], unique={"ct": 12, "mri": 12, "pet": 24}, mode="emit")
    # the same arguments resume, in any order
    assert run_pilot_sweep(out, base, [32, 16, 8], unique={"pet": 12, "ct": 12, "mri": 12}, mode="emit")["n_runs"] == 18


def _ways_out(plan: Path, changes: str) -> str:
    return (f"{plan} was planned for other arguments ({changes}): resume with the saved ones, or use another "
            "output folder, or --overwrite to plan again")


def test_pilot_resume_refuses_another_base_config_file(tmp_path: Path) -> None:
    """A --base-config naming another file was not checked on resume: the sweep went on with the
    pilots of the old one (another model size, another data path) as if they were the new one's."""
    from mixpretrain.eval.pilot import run_pilot_sweep

    base = _pilot_base(tmp_path)
    out = tmp_path / "pilot"
    run_pilot_sweep(out, base, [8, 16, 32], mode="emit")
    plan = json.loads((out / "plan.json").read_text())
    assert plan["base_config"] == str(base) and plan["base_config_path"] == str(base.resolve())
    assert len(plan["base_config_fingerprint"]) == 16

    raw = yaml.safe_load(base.read_text())
    bigger = tmp_path / "bigger.yaml"
    bigger.write_text(yaml.safe_dump({**raw, "model": {"patch_size": 8, "preset": "small"}}))
    with pytest.raises(ValueError) as err:
        run_pilot_sweep(out, bigger, [8, 16, 32], mode="emit")
    assert str(err.value) == _ways_out(out / "plan.json", f"--base-config {base} -> {bigger}, content differs in model.preset")
    # another file with the same content (a config moved, or a checkout at another path) resumes
    copy = tmp_path / "copy.yaml"
    copy.write_text(base.read_text())
    assert run_pilot_sweep(out, copy, [8, 16, 32], mode="emit")["n_runs"] == 18
    with pytest.raises(ValueError) as err:  # ... unless another argument changed
        run_pilot_sweep(out, copy, [8, 16, 32], n_random=1, mode="emit")
    assert str(err.value) == _ways_out(out / "plan.json", "--random 2 -> 1")
    # --overwrite plans again from the new base config
    run_pilot_sweep(out, bigger, [8, 16, 32], mode="emit", overwrite=True)
    assert json.loads((out / "plan.json").read_text())["base_config"] == str(bigger)
    assert yaml.safe_load((out / "configs" / "uniform-8.yaml").read_text())["model"]["preset"] == "small"


def test_pilot_resume_refuses_a_changed_base_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The same --base-config file edited since planning is refused, naming the changed keys (or the
    fingerprints when no saved pilot config is left to compare with); keys every pilot sets are not
    part of the base config's fingerprint, and the same file by another path resumes."""
    from mixpretrain.eval.pilot import run_pilot_sweep

    base = _pilot_base(tmp_path)
    out = tmp_path / "pilot"
    run_pilot_sweep(out, base, [8, 16, 32], mode="emit")
    planned = json.loads((out / "plan.json").read_text())
    original = base.read_text()

    # unchanged: resumes, also as a relative path from elsewhere
    monkeypatch.chdir(tmp_path)
    assert run_pilot_sweep(out, Path("base.yaml"), [8, 16, 32], mode="emit")["n_runs"] == len(planned["runs"])
    # keys every pilot config sets whatever the base says: no change to any pilot, resumes
    raw = yaml.safe_load(original)
    base.write_text(yaml.safe_dump({**raw, "output_dir": "elsewhere", "sampler": {"name": "uniform"}}))
    assert run_pilot_sweep(out, base, [8, 16, 32], mode="emit")["n_runs"] == len(planned["runs"])

    base.write_text(yaml.safe_dump({**raw, "data": {**raw["data"], "crops_per_volume": 2},
                                    "train": {**raw["train"], "lr": 1e-3}}))
    with pytest.raises(ValueError) as err:  # crops_per_volume also changes the unique counts from the index
        run_pilot_sweep(out, base, [8, 16, 32], mode="emit")
    assert str(err.value) == _ways_out(
        out / "plan.json", f"--base-config {base}: content changed since planning, in data.crops_per_volume, train.lr; "
        "--unique ct=12,mri=12,pet=12 -> ct=6,mri=6,pet=6")
    base.write_text(yaml.safe_dump({**raw, "train": {**raw["train"], "lr": 1e-3}}))
    (out / "configs" / f"{planned['runs'][0]['run']}.yaml").unlink()  # nothing saved to compare with
    with pytest.raises(ValueError, match=rf"--base-config {base}: content changed since planning, fingerprint "
                                         rf"{planned['base_config_fingerprint']} -> [0-9a-f]{{16}}\): resume with"):
        run_pilot_sweep(out, base, [8, 16, 32], mode="emit")


def test_pilot_resumes_an_old_plan_without_base_config_fingerprint(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A plan.json written before the base config's fingerprint was recorded still resumes, with a warning."""
    from mixpretrain.eval.pilot import run_pilot_sweep

    base = _pilot_base(tmp_path)
    out = tmp_path / "pilot"
    run_pilot_sweep(out, base, [8, 16, 32], mode="emit")
    plan = json.loads((out / "plan.json").read_text())
    del plan["base_config_fingerprint"], plan["base_config_path"]
    (out / "plan.json").write_text(json.dumps(plan))
    raw = yaml.safe_load(base.read_text())
    base.write_text(yaml.safe_dump({**raw, "train": {**raw["train"], "lr": 1e-3}}))  # not detectable
    with caplog.at_level("WARNING", logger="mixpretrain.eval.pilot"):
        assert run_pilot_sweep(out, base, [8, 16, 32], mode="emit")["n_runs"] == len(plan["runs"])
    assert (f"{out / 'plan.json'} records no fingerprint of its base config (planned before plan.json recorded one): "
            f"the base config could not be checked (planned from {base}, now --base-config {base})") in caplog.text
