"""Run pretraining jobs as subprocesses of ``launch/pretrain.py`` and read their outputs.

Shared by the sampler comparison (:mod:`.compare`) and the pilot sweep (:mod:`.pilot`). Each
run gets its own config YAML (a complete RunConfig) and its own log file; a run directory that
already holds a finished run (metrics at ``max_steps`` and ``encoder.pt``) is not re-run, and an
unfinished one is resumed by the trainer itself from its latest checkpoint. No torch import here.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

LAUNCHERS = ("python", "torchrun")


def pretrain_script() -> Path:
    """``launch/pretrain.py`` of this checkout (the trainer's entry point)."""
    path = Path(__file__).resolve().parents[2] / "launch" / "pretrain.py"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: the comparison and pilot sweep need a source checkout with launch/pretrain.py")
    return path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def launch_command(config: Path, launcher: str = "python", nproc: int = 1, overrides: list[str] | None = None) -> list[str]:
    script = str(pretrain_script())
    tail = [script, "--config", str(config), *(overrides or [])]
    if launcher == "python":
        if nproc != 1:
            raise ValueError(f"launcher 'python' runs one process; use launcher 'torchrun' for nproc={nproc}")
        return [sys.executable, *tail]
    if launcher == "torchrun":
        return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc),
                "--master_addr", "127.0.0.1", "--master_port", str(_free_port()), *tail]
    raise ValueError(f"launcher {launcher!r} unknown; valid: {', '.join(LAUNCHERS)}")


def run_env() -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("WANDB_MODE", "offline")  # never prompt for a login inside a sweep
    if shutil.which("nvidia-smi") is None:
        env.setdefault("DS_ACCELERATOR", "cpu")
    return env


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    """The records of ``run_dir/metrics.jsonl`` (a torn last line of a killed run is skipped)."""
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            log.warning("%s: skipped an unreadable line", path)
            continue
        if isinstance(rec, dict):
            out.append(rec)
    return out


def is_finished(run_dir: Path, max_steps: int) -> bool:
    recs = read_metrics(run_dir)
    return bool(recs) and int(recs[-1].get("step", -1)) >= max_steps and (run_dir / "encoder.pt").is_file()


def trained_by_other_code(run_dir: Path) -> str | None:
    """Why a finished run's code differs from this one (None when it is the same): the config
    check cannot see a change of, say, a sampler's defaults."""
    from mixpretrain.provenance import code_fingerprint

    path = run_dir / "run.json"
    if not path.is_file():
        return "no run.json"
    try:
        code = json.loads(path.read_text()).get("code") or {}
    except (OSError, ValueError) as exc:
        return f"run.json unreadable ({exc})"
    if not code:
        return "no code fingerprint in run.json (trained before fingerprints were recorded)"
    if code.get("fingerprint") != code_fingerprint():
        return f"fingerprint {code.get('fingerprint')}, now {code_fingerprint()}"
    return None


def check_same_config(config: Path, run_dir: Path) -> None:
    """Refuse to reuse a run directory trained under another config (its results would be stale)."""
    from mixpretrain.config import config_diff, config_to_dict, load_config

    path = run_dir / "run.json"
    if not path.is_file():
        return
    try:
        old = json.loads(path.read_text())["config"]
    except (OSError, ValueError, KeyError) as exc:
        raise ValueError(f"{path} is unreadable ({exc}); remove {run_dir} or use another output folder") from exc
    diff = config_diff(old, config_to_dict(load_config(config)))
    if diff:
        raise ValueError(f"{run_dir} holds a run trained with another config (differs in {', '.join(diff)}); "
                         "remove it or use another output folder")


def run_one(config: Path, run_dir: Path, max_steps: int, log_path: Path, launcher: str = "python", nproc: int = 1,
            timeout: float | None = None) -> dict[str, Any]:
    """Run (or skip, when finished) one pretraining job; returns {status, seconds, returncode}."""
    check_same_config(config, run_dir)
    if is_finished(run_dir, max_steps):
        other = trained_by_other_code(run_dir)
        if other:
            log.warning("%s: finished already, not re-run, but trained by other code (%s); remove it to retrain",
                        run_dir, other)
        else:
            log.info("%s: finished already, not re-run", run_dir)
        return {"status": "done-before", "seconds": 0.0, "returncode": 0, **({"other_code": other} if other else {})}
    cmd = launch_command(config, launcher, nproc)
    log.info("running %s (log: %s)", " ".join(cmd), log_path)
    t0 = time.perf_counter()
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("a") as fh:
        try:
            proc = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, env=run_env(), timeout=timeout, check=False)
            code = proc.returncode
        except subprocess.TimeoutExpired:
            code = -9
    seconds = round(time.perf_counter() - t0, 1)
    ok = code == 0 and is_finished(run_dir, max_steps)
    if not ok:
        tail = log_path.read_text().splitlines()[-15:] if log_path.is_file() else []
        log.error("run %s failed (exit %s); last lines of %s:\n%s", run_dir.name, code, log_path, "\n".join(tail))
    return {"status": "ok" if ok else "failed", "seconds": seconds, "returncode": code}
