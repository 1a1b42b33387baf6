"""`make demo` path, shrunk: synthesise, train, table, resume without retraining, wandb offline."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_demo_small_runs_and_resumes(tmp_path: Path) -> None:
    out, shards = tmp_path / "run", tmp_path / "shards"
    cmd = [sys.executable, "-m", "mixpretrain.demo", "--cases", "5", "--size", "24",
           f"output_dir={out}", f"data.shards={shards}", "data.crop_size=16", "data.num_workers=1",
           "data.val_crops_per_domain=2", "model.overrides={width: 32, depth: 2, heads: 2, decoder_width: 32, "
           "decoder_depth: 1, decoder_heads: 2}", "train.max_steps=10", "train.micro_batch_size=4",
           "train.eval_every=5", "train.checkpoint_every=5", "logging.progress_bar=false"]
    env = dict(os.environ, DS_ACCELERATOR="cpu", OMP_NUM_THREADS="1", WANDB_MODE="offline", WANDB_SILENT="true")
    res = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=240)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "domain   train loss  val loss  weight  consumed" in res.stdout
    for d in ("ct", "mri", "pet"):
        assert any(line.startswith(d) for line in res.stdout.splitlines())
    assert (out / "metrics.jsonl").is_file() and (out / "sampler.jsonl").is_file() and (out / "encoder.pt").is_file()
    assert (out / "wandb").is_dir()  # offline run files, nothing sent
    # Re-running reuses the shards and the finished run: no new training steps.
    before = (out / "metrics.jsonl").read_text()
    res = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=240)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "reusing them" in res.stderr and (out / "metrics.jsonl").read_text() == before
