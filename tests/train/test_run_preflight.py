"""mixpretrain.train.run.preflight: what is refused, or warned about, before any process group starts."""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from mixpretrain.config import ConfigError, config_to_dict, load_config
from mixpretrain.train.run import RUN_FILE, preflight

from .conftest import tiny_config


def _copy(shards: Path, tmp_path: Path) -> Path:
    out = tmp_path / "shards"
    shutil.copytree(shards, out)
    return out


def test_missing_validation_shard_is_refused_by_name(phantom_shards: Path, tmp_path: Path) -> None:
    shards = _copy(phantom_shards, tmp_path)
    (shards / "pet" / "val-000000.tar").unlink()
    cfg = load_config(tiny_config(tmp_path / "run.yaml", shards, tmp_path / "run"))
    with pytest.raises(ConfigError, match=r"not on disk \(pet: pet/val-000000.tar\).*shards verify"):
        preflight(cfg, 1)


def test_missing_train_shard_is_named_and_skipped_unless_strict(phantom_shards: Path, tmp_path: Path,
                                                                 caplog: pytest.LogCaptureFixture) -> None:
    shards = _copy(phantom_shards, tmp_path)
    index = json.loads((shards / "index.json").read_text())
    ghost = dict(next(s for s in index["domains"]["ct"]["shards"] if s["split"] == "train"), file="ct/train-000099.tar")
    index["domains"]["ct"]["shards"].append(ghost)
    (shards / "index.json").write_text(json.dumps(index))
    cfg = load_config(tiny_config(tmp_path / "run.yaml", shards, tmp_path / "run"))
    with caplog.at_level(logging.WARNING):
        preflight(cfg, 1)
    assert "ct: ct/train-000099.tar" in caplog.text and "will be skipped" in caplog.text
    with pytest.raises(ConfigError, match="ct/train-000099.tar"):
        preflight(load_config(tiny_config(tmp_path / "strict.yaml", shards, tmp_path / "run", data={"strict": True})), 1)


def test_attempt_without_checkpoint_does_not_block_a_corrected_config(phantom_shards: Path, tmp_path: Path,
                                                                     caplog: pytest.LogCaptureFixture) -> None:
    """A run that died before its first checkpoint (e.g. on a bad value) left only run.json: the
    corrected re-run starts afresh, saying what changed, instead of naming a checkpoint that does
    not exist."""
    out = tmp_path / "run"
    out.mkdir()
    earlier = load_config(tiny_config(tmp_path / "a.yaml", phantom_shards, out, train={"lr": 0.5}))
    (out / RUN_FILE).write_text(json.dumps({"run_id": "abcd1234", "config": config_to_dict(earlier)}))
    cfg = load_config(tiny_config(tmp_path / "b.yaml", phantom_shards, out))
    with caplog.at_level(logging.WARNING):
        plan = preflight(cfg, 1)
    assert plan.resume is None and plan.run_id == "abcd1234"
    assert "before its first checkpoint" in caplog.text and "train.lr" in caplog.text


# ----------------------------------------------------------------------------- shards over http


@pytest.fixture()
def shards_url(phantom_shards: Path, serve_directory) -> str:
    """The phantom shards served over http on a loopback port (as data.shards may be an http(s) URL)."""
    return serve_directory(phantom_shards).rstrip("/")


def test_http_shards_pass_preflight_and_give_the_same_val_crops(phantom_shards: Path, shards_url: str,
                                                                tmp_path: Path) -> None:
    """data.shards = http(s)://... (docs/multinode.md, MIXPRETRAIN_SHARDS): the index is fetched, no
    shard file is looked for on disk, and the validation crops equal those read from the folder."""
    if shutil.which("curl") is None:
        pytest.skip("curl not installed: webdataset's http(s) reader needs it")
    from mixpretrain.train.evaluator import load_val_crops

    for url in (shards_url, shards_url + "/", shards_url + "/index.json"):
        plan = preflight(load_config(tiny_config(tmp_path / "run.yaml", url, tmp_path / "run")), 1)  # type: ignore[arg-type]
        assert plan.domains == ("ct", "mri", "pet")
    cfg = load_config(tiny_config(tmp_path / "run.yaml", shards_url + "/", tmp_path / "run"))  # type: ignore[arg-type]
    local = load_config(tiny_config(tmp_path / "local.yaml", phantom_shards, tmp_path / "run"))
    over_http, on_disk = load_val_crops(cfg, plan.domains), load_val_crops(local, plan.domains)
    assert over_http.keys() == on_disk.keys() and all(over_http[d].equal(on_disk[d]) for d in on_disk)
    with pytest.raises(ConfigError, match=rf"config key 'data.shards': {shards_url}/nope/index.json: .*HTTP 404"):
        preflight(load_config(tiny_config(tmp_path / "bad.yaml", shards_url + "/nope", tmp_path / "run")), 1)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=rf"'data.domains': \['xx'\] not in {shards_url}/index.json"):
        preflight(load_config(tiny_config(tmp_path / "xx.yaml", shards_url, tmp_path / "run",  # type: ignore[arg-type]
                                          data={"domains": ["xx"]})), 1)


def test_two_step_run_over_http_shards(shards_url: str, tmp_path: Path) -> None:
    """launch/pretrain.py with data.shards an http URL: trains, evaluates and exports."""
    if shutil.which("curl") is None:
        pytest.skip("curl not installed: webdataset's http(s) reader needs it")
    repo = Path(__file__).resolve().parents[2]
    out = tmp_path / "run"
    cfg = tiny_config(tmp_path / "run.yaml", shards_url + "/", out,  # type: ignore[arg-type]
                      train={"max_steps": 2, "checkpoint_every": 2, "eval_every": 2})
    env = dict(os.environ, DS_ACCELERATOR="cpu", OMP_NUM_THREADS="1", WANDB_MODE="offline")
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    res = subprocess.run([sys.executable, str(repo / "launch" / "pretrain.py"), "--config", str(cfg)], env=env,
                         cwd=repo, capture_output=True, text=True, timeout=180)
    assert res.returncode == 0, (res.stdout + res.stderr)[-4000:]
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
    assert [r["step"] for r in records] == [1, 2] and all(f"val/{d}" in records[-1] for d in ("ct", "mri", "pet"))
    assert (out / "encoder.pt").is_file()
    assert "skipped shard" not in res.stderr, res.stderr[-4000:]


def test_http_validation_shard_the_server_lacks_is_refused(phantom_shards: Path, tmp_path: Path,
                                                          serve_directory) -> None:
    """Over http the validation shards are checked by a HEAD request each, as on disk by a stat."""
    shards = _copy(phantom_shards, tmp_path)
    (shards / "pet" / "val-000000.tar").unlink()
    url = serve_directory(shards)
    with pytest.raises(ConfigError, match=r"validation shards the server does not have \(pet: pet/val-000000.tar "
                                          r"\(HTTP 404"):
        preflight(load_config(tiny_config(tmp_path / "run.yaml", url, tmp_path / "run")), 1)  # type: ignore[arg-type]
