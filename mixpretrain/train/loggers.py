"""Where metrics go, all on rank 0: console progress bar, JSONL files and wandb.

- ``output_dir/metrics.jsonl``: one JSON object per logged step (see docs/training.md).
- ``output_dir/sampler.jsonl``: ``sampler.diagnostics()`` after every sampler update that has any.
- wandb: the same scalars, plus the transfer matrix as a heatmap; offline unless the user is
  logged in (or WANDB_MODE says otherwise); ``logging.wandb=false`` or a missing wandb package
  turns it off (the latter with a warning).

On resume, records past the checkpoint step (written after the checkpoint by the run that was
killed) are moved to ``metrics.discarded.jsonl`` so ``metrics.jsonl`` holds one record per step.
"""

from __future__ import annotations

import json
import logging
import math
import netrc
import os
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import numpy as np

from mixpretrain.config import RunConfig, config_to_dict

log = logging.getLogger(__name__)


def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_jsonable(v) for v in x]
    if isinstance(x, np.ndarray):
        return _jsonable(x.tolist())
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, float) and not math.isfinite(x):
        return None  # strict JSON has no NaN / Infinity
    return x


class JsonlWriter:
    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._f = open(path, "a")  # noqa: SIM115 - kept open for the run, closed in close()

    def write(self, record: dict[str, Any]) -> None:
        self._f.write(json.dumps(_jsonable(record)) + "\n")
        self._f.flush()  # a killed run keeps every record written so far

    def close(self) -> None:
        self._f.close()


def truncate_after(path: Path, step: int) -> int:
    """Keep records with ``step <= step`` in ``path``; move the rest beside it. Returns moved count."""
    if not path.is_file():
        return 0
    keep, drop = [], []
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        try:
            rec_step = json.loads(line).get("step", -1)
        except json.JSONDecodeError:  # a line cut by SIGKILL mid-write
            drop.append(line)
            continue
        (keep if rec_step <= step else drop).append(line)
    if drop:
        with open(path.with_name(path.stem + ".discarded.jsonl"), "a") as f:
            f.write("\n".join(drop) + "\n")
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text("".join(line + "\n" for line in keep))
        os.replace(tmp, path)
    return len(drop)


def transfer_heatmap(matrix: Any, domains: tuple[str, ...], path: Path) -> Path | None:
    """Save the transfer matrix (row i -> column j) as a PNG heatmap; None if not a K x K matrix."""
    m = np.asarray(matrix, dtype=float)
    if m.shape != (len(domains), len(domains)):
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(1.2 + 0.8 * len(domains), 1 + 0.8 * len(domains)))
    im = ax.imshow(m, cmap="viridis")
    ax.set_xticks(range(len(domains)), domains, rotation=45, ha="right")
    ax.set_yticks(range(len(domains)), domains)
    ax.set_xlabel("to (target domain)")
    ax.set_ylabel("from (source domain)")
    for i in range(m.shape[0]):
        for j in range(m.shape[1]):
            ax.text(j, i, f"{m[i, j]:.2g}", ha="center", va="center", color="w", fontsize=8)
    fig.colorbar(im, ax=ax)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


class WandbLogger:
    """Thin wandb wrapper: None-safe, offline unless logged in, resumes the same run id."""

    def __init__(self, cfg: RunConfig, run_id: str) -> None:
        self.run = None
        if not cfg.logging.wandb:
            return
        try:
            import wandb
        except ImportError:
            log.warning("logging.wandb=true but the wandb package is not installed: wandb logging is off")
            return
        mode = os.environ.get("WANDB_MODE") or ("online" if _logged_in(wandb) else "offline")
        try:
            self.run = wandb.init(
                project=cfg.logging.wandb_project, dir=cfg.output_dir, id=run_id, resume="allow", mode=mode,
                config=config_to_dict(cfg), name=Path(cfg.output_dir).name,
            )
        except Exception as exc:  # wandb's service failing must not stop a training run
            log.warning("wandb.init failed (%s: %s): wandb logging is off for this run", type(exc).__name__, exc)
            return
        self._wandb = wandb
        log.info("wandb %s run %s in %s", mode, run_id, cfg.output_dir)

    def log(self, record: dict[str, Any], step: int) -> None:
        if self.run is None:
            return
        flat = {k: v for k, v in record.items() if isinstance(v, int | float) and k != "step"}
        for group in ("weights", "consumed"):
            flat.update({f"{group}/{d}": v for d, v in record.get(group, {}).items()})
        self.run.log(flat, step=step)

    def log_image(self, key: str, path: Path, step: int) -> None:
        if self.run is not None:
            self.run.log({key: self._wandb.Image(str(path))}, step=step)

    def close(self) -> None:
        if self.run is not None:
            self.run.finish()


def _logged_in(wandb: Any = None) -> bool:
    """A W&B key is configured: WANDB_API_KEY, or the netrc entry `wandb login` writes for the
    server. Read here rather than through ``wandb.api.api_key``, which newer wandb deprecates (a
    warning on every run) and which resolves the same two places."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    host = urlparse(os.environ.get("WANDB_BASE_URL") or "https://api.wandb.ai").hostname
    try:
        return netrc.netrc(os.environ.get("NETRC")).authenticators(host or "") is not None
    except (OSError, netrc.NetrcParseError):  # no netrc, or one we cannot read: not logged in
        return False


class Progress:
    """tqdm bar on rank 0 with ETA, samples/s, data wait, per-domain losses and weights."""

    def __init__(self, total: int, initial: int, enabled: bool) -> None:
        self.bar = None
        if enabled:
            from tqdm.auto import tqdm

            # In a log file (no TTY) every refresh is a new line: refresh rarely there.
            self.bar = tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True, desc="pretrain",
                            mininterval=0.5 if sys.stderr.isatty() else 30.0)

    def update(self, step: int, record: dict[str, Any], domains: tuple[str, ...]) -> None:
        if self.bar is None:
            return
        parts = {"loss": f"{record.get('loss', float('nan')):.3f}",
                 "sps": f"{record.get('samples_per_s', 0):.1f}",
                 "wait": f"{100 * record.get('data_wait', 0):.0f}%"}
        for d in domains:
            loss = record.get(f"loss/{d}")
            parts[d] = f"{record['weights'][d]:.2f}" + (f"|{loss:.3f}" if loss is not None else "")
        self.bar.set_postfix(parts, refresh=False)
        self.bar.update(step - self.bar.n)  # redraws at most every mininterval seconds

    def write(self, text: str) -> None:
        if self.bar is not None:
            self.bar.write(text)
        else:
            print(text, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
