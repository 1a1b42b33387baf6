"""Unit tests of the trainer's small parts: schedules, DeepSpeed config, checkpoint choice, meters."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from mixpretrain.config import ConfigError, config_to_dict, load_config
from mixpretrain.train.checkpoint import check_resume, complete_tags, latest_complete, tag_for
from mixpretrain.train.engine import deepspeed_config
from mixpretrain.train.loggers import truncate_after
from mixpretrain.train.meters import DomainMeter
from mixpretrain.train.schedule import lr_multiplier


def test_cosine_schedule_warms_up_then_decays_to_min_lr() -> None:
    cfg = load_config(None, ["train.max_steps=100", "train.warmup_steps=10", "train.lr=1.0e-3", "train.min_lr=1.0e-5"]).train
    f = lr_multiplier(cfg)
    assert f(0) == pytest.approx(0.1) and f(9) == pytest.approx(1.0)
    vals = [f(s) for s in range(10, 100)]
    assert all(a >= b for a, b in zip(vals, vals[1:], strict=False))  # monotone decay
    assert f(99) == pytest.approx(0.01, abs=2e-3) and f(10_000) == pytest.approx(0.01)


def test_wsd_schedule_is_flat_then_decays_linearly() -> None:
    cfg = load_config(None, ["train.max_steps=100", "train.warmup_steps=10", "train.schedule=wsd",
                             "train.decay_fraction=0.2", "train.lr=1.0e-3", "train.min_lr=0.0"]).train
    f = lr_multiplier(cfg)
    assert [f(s) for s in (10, 50, 79)] == [1.0, 1.0, 1.0]
    assert f(90) == pytest.approx(0.5) and f(100) == pytest.approx(0.0)


def test_deepspeed_templates_fill_every_auto_value() -> None:
    for stage in range(4):
        cfg = load_config(None, [f"train.zero_stage={stage}", "train.micro_batch_size=3", "train.grad_accum_steps=2"])
        ds = deepspeed_config(cfg, "bf16")
        assert "auto" not in json.dumps(ds)
        assert ds["zero_optimization"]["stage"] == stage
        assert ds["train_micro_batch_size_per_gpu"] == 3 and ds["gradient_accumulation_steps"] == 2
        assert ds["bf16"]["enabled"] is True and ds["fp16"]["enabled"] is False


def test_deepspeed_template_conflict_is_refused(tmp_path: Path) -> None:
    bad = tmp_path / "ds.json"
    bad.write_text(json.dumps({"train_micro_batch_size_per_gpu": 64, "zero_optimization": {"stage": 0}}))
    cfg = load_config(None, [f"train.deepspeed_config={bad}"])
    with pytest.raises(ConfigError, match="train_micro_batch_size_per_gpu"):
        deepspeed_config(cfg, "fp32")


def _fake_tag(ckpt: Path, step: int, complete: bool) -> None:
    d = ckpt / tag_for(step)
    d.mkdir(parents=True)
    (d / "mp_rank_00_model_states.pt").write_bytes(b"partial")
    if complete:
        (d / "meta.json").write_text(json.dumps({"step": step}))
        (d / "COMPLETE").write_text(f"{step}\n")


def test_half_written_checkpoint_is_never_picked(tmp_path: Path) -> None:
    _fake_tag(tmp_path, 10, complete=True)
    _fake_tag(tmp_path, 20, complete=False)  # a save cut by SIGKILL
    (tmp_path / "latest").write_text(tag_for(20))  # DeepSpeed's pointer may already name it
    assert [s for s, _ in complete_tags(tmp_path)] == [10]
    assert latest_complete(tmp_path)[0] == 10
    assert latest_complete(tmp_path / "missing") is None


def test_resume_check_names_differing_keys_and_allows_longer_runs() -> None:
    old = load_config(None, ["train.max_steps=10"])
    meta = {"step": 10, "world_size": 2, "config": config_to_dict(old)}
    assert check_resume(load_config(None, ["train.max_steps=20"]), meta, 2) == ["train.max_steps"]
    with pytest.raises(ConfigError, match=r"train\.lr: 0\.00015 -> 0\.1"):
        check_resume(load_config(None, ["train.lr=0.1"]), meta, 2)
    check_resume(load_config(None, ["train.lr=0.1", "train.allow_config_change=true"]), meta, 2)
    with pytest.raises(ConfigError, match="2 data-parallel ranks"):
        check_resume(old, meta, 1)


def test_domain_meter_counts_realised_consumption() -> None:
    m = DomainMeter(("a", "b", "c"), torch.device("cpu"))
    m.add(torch.tensor([1.0, 2.0, 4.0]), torch.tensor([0, 0, 2]))
    step = m.reduce_step()
    np.testing.assert_allclose(step, [[3.0, 0.0, 4.0], [2.0, 0.0, 1.0]])
    m.add(torch.tensor([6.0]), torch.tensor([1]))
    m.reduce_step()
    assert m.consumed.tolist() == [2, 1, 1]
    assert m.pop_interval() == {"a": 1.5, "b": 6.0, "c": 4.0}
    assert m.pop_interval() == {}


def test_metrics_past_the_checkpoint_are_moved_aside(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(json.dumps({"step": s}) + "\n" for s in range(1, 8)) + '{"step": 8, "lo')
    assert truncate_after(path, 5) == 3
    assert [json.loads(x)["step"] for x in path.read_text().splitlines()] == [1, 2, 3, 4, 5]
    assert len((tmp_path / "metrics.discarded.jsonl").read_text().splitlines()) == 3


def test_deepspeed_template_stage_must_agree_with_the_config(tmp_path: Path) -> None:
    """A ZeRO-3 template named by train.deepspeed_config used to run as ZeRO 0 (stage overwritten)."""
    tpl = tmp_path / "ds.json"
    tpl.write_text(json.dumps({"zero_optimization": {"stage": 3}}))
    with pytest.raises(ConfigError, match=r"stage 3 conflicts with train.zero_stage 0: set train.zero_stage=3"):
        deepspeed_config(load_config(None, [f"train.deepspeed_config={tpl}"]), "fp32")
    assert deepspeed_config(load_config(None, [f"train.deepspeed_config={tpl}", "train.zero_stage=3"]),
                            "fp32")["zero_optimization"]["stage"] == 3
    tpl.write_text(json.dumps({"zero_optimization": {"stage": "auto"}}))
    assert deepspeed_config(load_config(None, [f"train.deepspeed_config={tpl}", "train.zero_stage=2"]),
                            "fp32")["zero_optimization"]["stage"] == 2


def test_wandb_login_is_read_from_the_key_or_netrc(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from mixpretrain.train.loggers import _logged_in

    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_BASE_URL", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "netrc"))
    assert not _logged_in()  # no netrc at all
    (tmp_path / "netrc").write_text("machine api.wandb.ai\n  login user\n  password " + "k" * 40 + "\n")
    (tmp_path / "netrc").chmod(0o600)
    assert _logged_in()
    monkeypatch.setenv("WANDB_BASE_URL", "https://wandb.example.org")
    assert not _logged_in()  # a key for another server
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    assert _logged_in()
