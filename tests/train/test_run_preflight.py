"""mixpretrain.train.run.preflight: what is refused, or warned about, before any process group starts."""

from __future__ import annotations

import json
import logging
import shutil
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
