"""Checkpoints that survive SIGKILL at any moment, through DeepSpeed's save/load.

Layout under ``output_dir/checkpoints/``::

    step00000040/                 one DeepSpeed tag (model, optimizer and LR-scheduler states,
      mp_rank_00_model_states.pt    our client state inside)
      zero_pp_rank_R_...pt        ZeRO optimizer shards (stage >= 1)
      rng_rank{R}.pt              each rank's torch / CUDA / numpy / python RNG states
      meta.json                   step, config, fingerprint, data-parallel world size
      encoder.pt                  the encoder export at this step (model.save_encoder)
      COMPLETE                    written last, atomically, after every rank finished
    latest                        DeepSpeed's pointer (kept for zero_to_fp32.py), replaced atomically

Why our own marker: DeepSpeed writes ``latest`` on rank 0 before the final barrier, so other
ranks may still be writing their ZeRO shards when it appears, and it truncates ``latest`` before
writing it. We save with ``save_latest=False``, wait for every rank, then write ``COMPLETE`` with
a rename. A tag without ``COMPLETE`` (a save cut short) is never loaded, whatever ``latest`` says.
"""

from __future__ import annotations

import json
import logging
import os
import random
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mixpretrain.config import (
    ConfigError,
    RunConfig,
    config_diff,
    config_fingerprint,
    config_to_dict,
    flatten,
)
from mixpretrain.train.dist import barrier
from mixpretrain.train.schedule import apply_config_after_resume

log = logging.getLogger(__name__)

TAG_RE = re.compile(r"^step(\d{8})$")
# Keys that may change on resume without train.allow_config_change: they change neither the
# model, the data nor the mixture already trained on. A longer train.max_steps extends the run
# (the LR schedule is re-evaluated for the new horizon from the current step).
RESUMABLE_CHANGES = ("train.max_steps", "train.allow_config_change", "train.checkpoint_every",
                     "train.keep_checkpoints", "train.log_every", "logging.")


def tag_for(step: int) -> str:
    return f"step{step:08d}"


def checkpoint_dir(cfg: RunConfig) -> Path:
    return Path(cfg.output_dir) / "checkpoints"


def atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def complete_tags(ckpt_dir: Path) -> list[tuple[int, Path]]:
    """(step, dir) of every complete checkpoint, oldest first."""
    if not ckpt_dir.is_dir():
        return []
    out = []
    for p in ckpt_dir.iterdir():
        m = TAG_RE.match(p.name)
        if m and (p / "COMPLETE").is_file() and (p / "meta.json").is_file():
            out.append((int(m.group(1)), p))
    return sorted(out)


def latest_complete(ckpt_dir: Path) -> tuple[int, Path] | None:
    tags = complete_tags(ckpt_dir)
    return tags[-1] if tags else None


def read_meta(tag_dir: Path) -> dict[str, Any]:
    return json.loads((tag_dir / "meta.json").read_text())


def check_resume(cfg: RunConfig, meta: dict[str, Any], world_size: int) -> list[str]:
    """Refuse a resume under a different config or data-parallel degree; returns allowed changes."""
    diff = config_diff(meta["config"], config_to_dict(cfg))
    allowed = [k for k in diff if k.startswith(RESUMABLE_CHANGES)]
    refused = [k for k in diff if k not in allowed]
    where = f"{cfg.output_dir}/checkpoints/{tag_for(meta['step'])}"
    if refused and not cfg.train.allow_config_change:
        old, new = flatten(meta["config"]), flatten(config_to_dict(cfg))
        detail = "; ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in refused)
        raise ConfigError(
            f"output_dir {cfg.output_dir} holds a run with a different config ({where}); differing keys: "
            f"{detail}. Use another output_dir, or set train.allow_config_change=true to resume anyway."
        )
    if meta["world_size"] != world_size:
        raise ConfigError(
            f"checkpoint {where} was written by {meta['world_size']} data-parallel ranks, this run has "
            f"{world_size}: the per-rank data streams and RNG states cannot be re-split. Resume with "
            f"{meta['world_size']} ranks or use another output_dir."
        )
    return diff


def rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy_keys": torch.from_numpy(np_state[1].astype(np.int64)),
        "numpy_pos": int(np_state[2]),
        "numpy_gauss": [int(np_state[3]), float(np_state[4])],
        "python": list(random.getstate()[1]),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(("MT19937", state["numpy_keys"].numpy().astype(np.uint32), state["numpy_pos"], *state["numpy_gauss"]))
    random.setstate((3, tuple(state["python"]), None))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


class Checkpointer:
    def __init__(self, cfg: RunConfig, rank: int, world_size: int) -> None:
        self.cfg = cfg
        self.dir = checkpoint_dir(cfg)
        self.rank = rank
        self.world_size = world_size

    def save(self, engine: Any, step: int, client_state: dict[str, Any], export_encoder: Any,
             extra_meta: dict[str, Any] | None = None) -> Path:
        """All ranks call this. ``export_encoder(path)`` writes the encoder (collective under ZeRO-3)."""
        tag = tag_for(step)
        tag_dir = self.dir / tag
        if (tag_dir / "COMPLETE").is_file():  # this very step is already saved (a resumed run's end)
            return tag_dir
        if self.rank == 0 and tag_dir.exists():  # a save of this step cut short earlier
            shutil.rmtree(tag_dir)
        barrier()
        engine.save_checkpoint(str(self.dir), tag=tag, client_state=client_state, save_latest=False)
        torch.save(rng_state(), tag_dir / f"rng_rank{self.rank}.pt")
        export_encoder(tag_dir / "encoder.pt")
        if self.rank == 0:
            meta = {"step": step, "world_size": self.world_size, "config": config_to_dict(self.cfg),
                    "fingerprint": config_fingerprint(self.cfg), **(extra_meta or {})}
            atomic_write(tag_dir / "meta.json", json.dumps(meta, indent=1))
        barrier()  # every rank's files are on disk before the marker
        if self.rank == 0:
            atomic_write(tag_dir / "COMPLETE", f"{step}\n")
            atomic_write(self.dir / "latest", tag)
            self._prune(step)
        barrier()
        log.info("checkpoint %s saved", tag_dir)
        return tag_dir

    def _prune(self, newest: int) -> None:
        """Keep the newest ``train.keep_checkpoints`` complete tags; drop older and partial ones."""
        keep = {s for s, _ in complete_tags(self.dir)[-self.cfg.train.keep_checkpoints :]}
        for p in self.dir.iterdir():
            m = TAG_RE.match(p.name)
            if not m or int(m.group(1)) in keep or int(m.group(1)) > newest:
                continue
            (p / "COMPLETE").unlink(missing_ok=True)  # unmark first: a kill mid-delete leaves it ignored
            shutil.rmtree(p, ignore_errors=True)

    def load(self, engine: Any, tag_dir: Path) -> dict[str, Any]:
        """Load the engine state and this rank's RNG; returns our client state."""
        path, client = engine.load_checkpoint(str(self.dir), tag=tag_dir.name, load_optimizer_states=True,
                                              load_lr_scheduler_states=True)
        if path is None or client is None:
            raise RuntimeError(f"DeepSpeed could not load checkpoint {tag_dir}")
        if engine.lr_scheduler is not None:  # the schedule and LR of the current config, from the next step
            apply_config_after_resume(engine.lr_scheduler.optimizer, engine.lr_scheduler, self.cfg.train)
        rng_file = tag_dir / f"rng_rank{self.rank}.pt"
        set_rng_state(torch.load(rng_file, weights_only=True))
        log.info("resumed from %s", tag_dir)
        return client["mixpretrain"]
