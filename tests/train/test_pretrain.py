"""launch/pretrain.py end to end on phantom shards: one process, two DeepSpeed ranks, kill -9, resume."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from .conftest import DOMAINS, tiny_config

REPO = Path(__file__).resolve().parents[2]
LAUNCH = REPO / "launch" / "pretrain.py"
BIN = Path(sys.executable).parent


def _env() -> dict[str, str]:
    env = dict(os.environ, DS_ACCELERATOR="cpu", OMP_NUM_THREADS="1", WANDB_MODE="offline")
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    return env


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _deepspeed(config: Path, *overrides: str) -> list[str]:
    return [str(BIN / "deepspeed"), "--num_accelerators", "2", "--master_port", str(_free_port()), str(LAUNCH),
            "--config", str(config), *overrides]


def _torchrun(config: Path, *overrides: str) -> list[str]:
    return [str(BIN / "torchrun"), "--nproc_per_node", "2", "--master_port", str(_free_port()), str(LAUNCH),
            "--config", str(config), *overrides]


def _tail(res: subprocess.CompletedProcess) -> str:
    """The end of a failed run's output, without DeepSpeed's INFO chatter."""
    lines = [x for x in (res.stdout + res.stderr).splitlines() if " INFO " not in x and "[INFO]" not in x]
    return "\n".join(lines[-60:])


def _python(config: Path, *overrides: str) -> list[str]:
    return [sys.executable, str(LAUNCH), "--config", str(config), *overrides]


def _run(cmd: list[str], timeout: float = 240) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(cmd, env=_env(), cwd=REPO, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as exc:  # show where it stood, not just that it timed out
        out = (exc.stdout or b"").decode(errors="replace") + (exc.stderr or b"").decode(errors="replace")
        pytest.fail(f"{' '.join(cmd)} timed out after {timeout}s; output tail:\n{out[-4000:]}")


def _records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_single_process_python_run_then_extend_and_refuse_changes(phantom_shards: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    cfg = tiny_config(tmp_path / "run.yaml", phantom_shards, out, sampler={"name": "uniform"},
                      train={"max_steps": 6, "checkpoint_every": 3, "eval_every": 3, "grad_accum_steps": 2,
                             "schedule": "wsd"})
    res = _run(_python(cfg))
    assert res.returncode == 0, _tail(res)
    recs = _records(out / "metrics.jsonl")
    assert [r["step"] for r in recs] == list(range(1, 7))
    for key in ("step", "samples", "consumed", "weights", "lr", "samples_per_s", "data_wait", "loss"):
        assert key in recs[-1], key
    assert sum(recs[-1]["consumed"].values()) == recs[-1]["samples"] == 6 * 4 * 2  # micro 4 x accum 2
    assert all(f"val/{d}" in recs[2] for d in DOMAINS)
    assert (out / "encoder.pt").is_file() and (out / "checkpoints" / "step00000006" / "encoder.pt").is_file()
    from mixpretrain.models import read_encoder_file

    recipes = read_encoder_file(out / "encoder.pt")["meta"]["preprocessing"]  # what the encoder was trained on
    assert sorted(recipes) == sorted(DOMAINS) and all(r["modality"] and r["spacing"] for r in recipes.values())

    # Same command with a longer horizon: resumes at step 6 and continues to 8, on the new
    # schedule from the first resumed step (WSD over 8 steps: still at the peak at step 7; the
    # restored optimizer used to carry the old schedule's LR, min_lr, into that step).
    res = _run(_python(cfg, "train.max_steps=8"))
    assert res.returncode == 0, _tail(res)
    recs = _records(out / "metrics.jsonl")
    assert [r["step"] for r in recs] == list(range(1, 9))
    from mixpretrain.config import load_config
    from mixpretrain.train.schedule import lr_multiplier

    new = load_config(cfg, ["train.max_steps=8"]).train
    assert [r["lr"] for r in recs[6:]] == pytest.approx([new.lr * lr_multiplier(new)(i) for i in (6, 7)])
    assert recs[6]["lr"] == pytest.approx(new.lr)
    versions = [r["weights_version"] for r in recs]  # continue across the resume (they restarted at 1)
    assert versions == sorted(versions) and versions[6] > versions[5]

    # The same command once more: nothing to train, said at once (no engine, no process group).
    res = _run(_python(cfg, "train.max_steps=8"))
    assert res.returncode == 0 and "already finished at step 8" in res.stderr, _tail(res)
    assert "backend gloo" not in res.stdout + res.stderr

    # A changed config is refused, naming the keys, before anything runs.
    res = _run(_python(cfg, "train.max_steps=8", "train.lr=0.01", "data.crops_per_volume=3"))
    assert res.returncode == 2
    assert "data.crops_per_volume: 2 -> 3" in res.stderr and "train.lr: 0.002 -> 0.01" in res.stderr

    # train.allow_config_change: another sampler starts afresh from the counts so far; another
    # model cannot take the weights, which is said before anything runs.
    changed = ["train.max_steps=10", "sampler.name=temperature", "train.lr=4.0e-3", "train.allow_config_change=true"]
    res = _run(_python(cfg, *changed))
    assert res.returncode == 0, _tail(res)
    assert "sampler changed from 'uniform' to 'temperature'" in res.stderr
    recs = _records(out / "metrics.jsonl")
    assert [r["step"] for r in recs] == list(range(1, 11))
    new = load_config(cfg, changed).train  # the changed peak LR applies from the first resumed step
    assert [r["lr"] for r in recs[8:]] == pytest.approx([new.lr * lr_multiplier(new)(i) for i in (8, 9)])
    res = _run(_python(cfg, "train.max_steps=12", "sampler.name=temperature", "model.overrides.width=64",
                       "train.allow_config_change=true"))
    assert res.returncode == 2 and "holds another model" in res.stderr and "model.overrides.width" in res.stderr

    # A directory that is not a run directory is never written into.
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("user data")
    res = _run(_python(cfg, f"output_dir={foreign}"))
    assert res.returncode == 2 and "not a mixpretrain run directory" in res.stderr
    assert sorted(p.name for p in foreign.iterdir()) == ["notes.txt"]


def test_bad_config_key_fails_before_any_process_group(phantom_shards: Path, tmp_path: Path) -> None:
    cfg = tiny_config(tmp_path / "run.yaml", phantom_shards, tmp_path / "run")
    res = _run(_deepspeed(cfg, "train.max_stepz=3"), timeout=120)
    assert res.returncode != 0
    assert "unknown config key 'train.max_stepz'; did you mean train.max_steps" in res.stderr
    assert "backend gloo" not in res.stdout + res.stderr  # no rank reached init_distributed
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_two_rank_deepspeed_run_survives_sigkill(phantom_shards: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    cfg = tiny_config(tmp_path / "run.yaml", phantom_shards, out,
                      data={"crops_per_volume": 3, "val_crops_per_domain": 3},  # 3 crops on 2 ranks: padded eval
                      train={"max_steps": 16, "checkpoint_every": 6, "eval_every": 4, "zero_stage": 3})
    # First attempt (deepspeed launcher): SIGKILL the whole process group once past the step-6 checkpoint.
    log_file = open(tmp_path / "first_attempt.log", "w")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(_deepspeed(cfg), env=_env(), cwd=REPO, stdout=log_file, stderr=subprocess.STDOUT,
                            start_new_session=True)
    marker, metrics = out / "checkpoints" / "step00000006" / "COMPLETE", out / "metrics.jsonl"
    deadline = time.monotonic() + 300  # generous: CI shares 2 cores
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if marker.is_file() and metrics.is_file() and _records(metrics)[-1]["step"] >= 8:
                break
            time.sleep(0.05)
        alive = proc.poll() is None
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        log_file.close()
    tail = (tmp_path / "first_attempt.log").read_text()[-4000:]
    assert alive and metrics.is_file(), f"first attempt ended or stalled before the kill point:\n{tail}"
    killed_at = _records(metrics)[-1]["step"]
    assert 8 <= killed_at < 16
    saved = json.loads((out / "checkpoints" / "step00000006" / "meta.json").read_text())

    # Run again (torchrun this time): continues from step 6 with the sampler state saved there.
    res = _run(_torchrun(cfg))
    assert res.returncode == 0, _tail(res)
    events = [r for r in _records(out / "sampler.jsonl") if r.get("event") == "resume"]
    assert [e["step"] for e in events] == [6]
    assert events[0]["sampler_state_sha256"] == saved["sampler_state_sha256"]
    recs = _records(metrics)
    assert [r["step"] for r in recs] == list(range(1, 17))  # records after step 6 were replaced
    assert (out / "metrics.discarded.jsonl").is_file()

    # Training worked: loss fell, every domain was logged, the transfer sampler moved the weights.
    first = sum(r["loss"] for r in recs[:4]) / 4
    last = sum(r["loss"] for r in recs[-4:]) / 4
    assert last < first, (first, last)
    assert all(any(f"loss/{d}" in r for r in recs) and recs[-1]["consumed"][d] > 0 for d in DOMAINS)
    assert all(f"val/{d}" in recs[15] for d in DOMAINS)
    # (at some point: the cooldown may end the run on the first, prior mixture: cooldown_prior auto)
    w0 = recs[0]["weights"]
    assert max(abs(r["weights"][d] - w0[d]) for r in recs for d in DOMAINS) > 0.05
    assert sum(recs[-1]["consumed"].values()) == recs[-1]["samples"] == 16 * 4 * 2
    assert recs[-1]["weights_lag_batches"] <= 2 * 1 + 1  # num_workers x prefetch_factor + 1
    diag = [r for r in _records(out / "sampler.jsonl") if "phase" in r]
    assert diag and diag[-1]["domains"] == list(DOMAINS)
    assert (out / "encoder.pt").is_file()
