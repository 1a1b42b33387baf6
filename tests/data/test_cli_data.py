"""CLI: ingest, synth, shards verify, shards stats (run in-process through mixpretrain.cli.main)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from mixpretrain.cli import main
from mixpretrain.data import shards as S


def test_help_lists_data_commands():
    out = subprocess.run([sys.executable, "-m", "mixpretrain.cli", "ingest", "--help"],
                         capture_output=True, text=True, check=True).stdout
    for flag in ("--input", "--manifest", "--modality", "--domain", "--out", "--spacing", "--workers",
                 "--val-fraction", "--overwrite", "--frames"):
        assert flag in out


def test_ingest_stats_verify_and_corruption(tmp_path, real_data_dir, capsys):
    out = tmp_path / "shards"
    bad = tmp_path / "in" / "broken.nii.gz"
    bad.parent.mkdir()
    bad.write_bytes((real_data_dir / "pet/juspace_FDOPA_f18.nii").read_bytes()[:500])
    rc = main(["ingest", "--input", str(real_data_dir / "mri/pyradiomics_breast1_image.nrrd"), str(bad.parent),
               "--modality", "mri", "--domain", "breast", "--out", str(out), "--no-progress"])
    printed = capsys.readouterr().out
    assert rc == 0 and "breast (mri): 1 written, 0 already ingested, 1 skipped" in printed
    assert "skipped" in printed and "broken.nii.gz" in printed

    assert main(["shards", "stats", str(out)]) == 0
    stats = capsys.readouterr().out
    assert "breast" in stats and "train" in stats and "1 skipped input(s)" in stats

    assert main(["shards", "verify", str(out)]) == 0
    assert "all 1 shard(s) OK" in capsys.readouterr().out
    (out / "breast" / "train-000007.tar").write_bytes(b"")  # e.g. renamed just before a crash
    assert main(["shards", "verify", str(out)]) == 0
    assert "breast/train-000007.tar is not in index.json" in capsys.readouterr().err

    shard = Path(S.shard_urls(out, "breast", "train")[0])
    shard.write_bytes(shard.read_bytes()[:-2000])  # truncated
    assert main(["shards", "verify", str(out)]) == 1
    err = capsys.readouterr().err
    assert str(shard) in err and "truncated" in err


def test_ingest_argument_errors_exit_2(tmp_path, capsys):
    assert main(["ingest", "--input", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    assert "--input needs --modality and --domain" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["ingest", "--input", str(tmp_path / "empty"), "--modality", "ct", "--domain", "d",
                 "--out", str(tmp_path / "o")]) == 2
    assert "empty input" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main(["ingest", "--input", str(tmp_path), "--modality", "xray", "--domain", "d", "--out", "o"])
    assert exc.value.code == 2
    assert main(["shards", "stats", str(tmp_path / "nowhere")]) == 2
    assert "no shard index" in capsys.readouterr().err


def test_synth_writes_verifiable_shards(tmp_path, capsys):
    out = tmp_path / "phantoms"
    assert main(["synth", "--out", str(out), "--domains", "ct,mri", "--cases", "2", "--size", "16"]) == 0
    index = S.load_index(out)
    assert set(index["domains"]) == {"ct", "mri"}
    assert all(d["samples"] == 2 for d in index["domains"].values())
    assert main(["shards", "verify", str(out)]) == 0
    # A second run without --overwrite refuses to replace the domains.
    assert main(["synth", "--out", str(out), "--domains", "ct", "--cases", "2", "--size", "16"]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert main(["synth", "--out", str(out), "--domains", "ct", "--cases", "3", "--size", "16", "--overwrite"]) == 0
    assert S.load_index(out)["domains"]["ct"]["samples"] == 3


def test_synth_labels_writes_phantom_tasks(tmp_path, capsys):
    tasks = tmp_path / "tasks"
    assert main(["synth", "--out", str(tmp_path / "shards"), "--domains", "ct", "--cases", "4",
                 "--size", "16", "--labels", str(tasks)]) == 0
    dataset = json.loads((tasks / "dataset.json").read_text())
    assert len(dataset["training"]) + len(dataset["validation"]) == 4
    assert (tasks / "classification.csv").read_text().splitlines()[0].startswith("image")
    assert len(list((tasks / "labelsTr").iterdir())) == 4


def test_shards_verify_and_stats_arguments(tmp_path, capsys, serve_directory):
    """verify: unknown --domains and URLs are clear errors; stats reads an http(s) shards dir's index."""
    out = tmp_path / "phantoms"
    assert main(["synth", "--out", str(out), "--domains", "ct,mri", "--cases", "2", "--size", "16"]) == 0
    capsys.readouterr()
    assert main(["shards", "verify", str(out), "--domains", "nope"]) == 2
    assert f"--domains 'nope': ['nope'] not in {out}/index.json (has ['ct', 'mri'])" in capsys.readouterr().err
    assert main(["shards", "verify", str(out), "--domains", "ct", "--quick"]) == 0
    assert "all 2 shard(s) OK" in capsys.readouterr().out
    url = serve_directory(out)
    assert main(["shards", "verify", url]) == 2
    assert f"verify needs a local shards folder, not the URL {url}" in capsys.readouterr().err
    assert main(["shards", "stats", url, "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert {(r["domain"], r["split"]) for r in rows} == {(d, s) for d in ("ct", "mri") for s in ("train", "val")}
    assert main(["shards", "stats", url + "nope"]) == 2
    assert f"{url}nope/index.json: cannot fetch the shard index: HTTP 404" in capsys.readouterr().err
