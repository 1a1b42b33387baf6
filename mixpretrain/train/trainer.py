"""The training loop. It sees the engine, the loader, the sampler and the components; nothing else.

One optimizer step = ``train.grad_accum_steps`` micro-batches per rank. After each step:
per-domain (loss sum, count) are all-reduced (DomainMeter); every ``sampler.update_every`` steps
rank 0's sampler observes the smoothed training losses, every ``train.eval_every`` steps it also
observes the fixed-mask validation losses; the new weights are broadcast from rank 0 and written
into the mixture's shared memory on every rank, so all ranks sample from the same mixture.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mixpretrain.config import RunConfig, config_fingerprint
from mixpretrain.data.mixture import MixtureStream
from mixpretrain.train import dist
from mixpretrain.train.checkpoint import Checkpointer
from mixpretrain.train.evaluator import Evaluator
from mixpretrain.train.loggers import JsonlWriter, Progress, WandbLogger, transfer_heatmap
from mixpretrain.train.meters import DomainMeter, SpeedMonitor, Stopwatch
from mixpretrain.train.profiling import StepProfiler

log = logging.getLogger(__name__)


@dataclass
class LoopState:
    step: int = 0  # optimizer steps done
    samples: int = 0  # global samples consumed (all ranks)
    weights_version: int = 0  # version of the weights last published to the mixture
    published_at_batch: int = 0  # local micro-batch count when that version was published
    max_lag: int = 0  # most batches seen between a weight publish and its first batch
    log_acc: np.ndarray | None = None  # [2, K] per-domain loss sum / count since the last log


def state_digest(state: Any) -> str:
    """sha256 of a JSON-able state (sorted keys): equal digests mean equal states."""
    from mixpretrain.train.loggers import _jsonable

    return hashlib.sha256(json.dumps(_jsonable(state), sort_keys=True).encode()).hexdigest()


class Trainer:
    def __init__(self, cfg: RunConfig, info: dist.DistInfo, engine: Any, model: torch.nn.Module, precision: str,
                 mixture: MixtureStream, loader: Any, sampler: Any, evaluator: Evaluator,
                 checkpointer: Checkpointer, run_id: str, preprocessing: dict[str, Any] | None = None) -> None:
        self.cfg, self.info, self.engine, self.model = cfg, info, engine, model
        self.mixture, self.loader, self.sampler = mixture, loader, sampler
        self.evaluator, self.checkpointer, self.run_id = evaluator, checkpointer, run_id
        self.preprocessing = preprocessing or {}
        self.domains = mixture.domains
        self.dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision, torch.float32)
        self.meter = DomainMeter(self.domains, info.device)
        self.speed = SpeedMonitor(float(model.flops_per_sample()), info.world_size, info.device)
        self.clock = Stopwatch(info.device)
        self.state = LoopState()
        self._batches = 0  # micro-batches taken from the loader by this process
        self._lr = float(cfg.train.lr)
        self.last_val: dict[str, float] = {}
        self.out = Path(cfg.output_dir)
        self.metrics = self.sampler_log = None
        self.wandb: WandbLogger | None = None
        self.progress: Progress | None = None

    # ------------------------------------------------------------------ resume
    def client_state(self) -> dict[str, Any]:
        s = self.state
        return {"mixpretrain": {
            "step": s.step, "samples": s.samples, "meter": self.meter.state_dict(),
            "sampler": self.sampler.state_dict() if self.sampler is not None else None,
            "weights": self.mixture.weights.tolist(), "weights_version": s.weights_version,
            "last_val": self.last_val, "world_size": self.info.world_size, "seed": self.cfg.train.seed,
            # Train losses accumulated since the last metrics record (log_every > 1): without them the
            # steps between that record and the checkpoint would appear in no record after a resume.
            "log_acc": None if s.log_acc is None else s.log_acc.tolist(),
            "fingerprint": config_fingerprint(self.cfg), "run_id": self.run_id,
        }}

    def restore(self, client: dict[str, Any]) -> None:
        self.state.step, self.state.samples = int(client["step"]), int(client["samples"])
        self.meter.load_state_dict(client["meter"])
        weights = np.asarray(client["weights"], dtype=np.float64)
        if self.sampler is not None:
            state = client["sampler"]
            saved = state.get("sampler") if isinstance(state, dict) else None  # built-ins record their name
            current = getattr(self.sampler, "name", None)
            if saved is not None and current is not None and saved != current:
                # Only under train.allow_config_change (the resume check refuses it otherwise).
                log.warning("sampler changed from %r to %r: the new sampler starts from its initial state at step "
                            "%d; the consumption counts so far are kept", saved, current, self.state.step)
                weights = np.asarray(self.sampler.weights(), dtype=np.float64)
            else:
                self.sampler.load_state_dict(state)
        self.last_val = dict(client.get("last_val", {}))
        if client.get("log_acc") is not None:
            self.state.log_acc = np.asarray(client["log_acc"], dtype=np.float64)
        self.mixture.continue_versions(int(client.get("weights_version", 0)))
        self._publish(weights)
        if self.info.is_main:  # evidence that the sampler continues from exactly the saved state
            with open(self.out / "sampler.jsonl", "a") as f:
                f.write(json.dumps({"step": self.state.step, "event": "resume",
                                    "sampler_state_sha256": state_digest(self.sampler.state_dict())}) + "\n")

    # ------------------------------------------------------------------ weights
    def _publish(self, w: np.ndarray) -> None:
        """Rank 0's weights to every rank's shared-memory mixture vector."""
        t = torch.as_tensor(np.asarray(w, dtype=np.float64), device=self.info.device)
        dist.broadcast(t, src=0)
        self.state.weights_version = self.mixture.set_weights(t.cpu().numpy())
        self.state.published_at_batch = self._batches

    def _update_sampler(self, losses: dict[str, float], split: str) -> None:
        if self.info.is_main:
            self.sampler.observe(self.state.step, self.meter.consumed.copy(), losses, split)
            w = np.asarray(self.sampler.weights(), dtype=np.float64)
        else:
            w = np.zeros(len(self.domains))
        self._publish(w)
        if self.info.is_main:
            self._log_sampler(split)

    def _log_sampler(self, split: str) -> None:
        diag = self.sampler.diagnostics() or {}
        self.sampler_log.write({"step": self.state.step, "split": split,
                                "weights": dict(zip(self.domains, self.mixture.weights.tolist(), strict=True)),
                                "consumed": dict(zip(self.domains, self.meter.consumed.tolist(), strict=True)),
                                **diag})
        matrix = diag.get("transfer_matrix")
        if matrix is not None and split == "val":
            png = transfer_heatmap(matrix, self.domains, self.out / "plots" / "transfer_matrix.png")
            if png is not None:
                self.wandb.log_image("transfer_matrix", png, self.state.step)

    # ------------------------------------------------------------------ one step
    def _train_step(self, it: Any) -> tuple[float, float]:
        """Run one optimizer step; returns (mean loss on this rank, seconds waiting for data)."""
        wait, total = 0.0, 0.0
        self._lr = float(self.engine.get_lr()[0])  # the LR this step trains with
        for _ in range(self.cfg.train.grad_accum_steps):
            t = time.perf_counter()
            batch = next(it)
            wait += time.perf_counter() - t
            self._batches += 1
            self._note_version(batch["weights_version"])
            # Copy first (pinned, async), cast on the device: no float32->bf16 pass on the CPU.
            x = batch["image"].to(self.info.device, non_blocking=True).to(self.dtype)
            out = self.engine(x)
            loss = out.loss.mean()
            self.engine.backward(loss)
            self.engine.step()
            self.meter.add(out.loss, batch["domain"])
            total += float(loss.detach())
        return total / self.cfg.train.grad_accum_steps, wait

    def _note_version(self, version: int) -> None:
        """Measure how many batches a published weight change takes to reach the model.

        A batch drawn (partly) under older weights arriving as the k-th batch after the latest
        publish means the change took at least k + 1 batches; the run logs the largest such delay.
        """
        s = self.state
        k = self._batches - s.published_at_batch
        s.max_lag = max(s.max_lag, k + 1 if version < s.weights_version else 1)

    # ------------------------------------------------------------------ loop
    def fit(self, start_time: float) -> dict[str, Any]:
        cfg, s = self.cfg, self.state
        self._open_loggers()
        if s.log_acc is None or s.log_acc.shape != (2, len(self.domains)):
            s.log_acc = np.zeros((2, len(self.domains)))
        global_batch = cfg.train.micro_batch_size * cfg.train.grad_accum_steps * self.info.world_size
        it = iter(self.loader)
        self.engine.train()
        profiler = StepProfiler.from_env(self.out / "profile", self.info.is_main)
        record: dict[str, Any] = {}
        try:
            while s.step < cfg.train.max_steps:
                t0 = self.clock.now()
                loss, wait = self._train_step(it)
                s.step += 1
                sums_counts = self.meter.reduce_step()
                s.samples += int(sums_counts[1].sum())
                s.log_acc += sums_counts
                self.speed.record(self.clock.now() - t0, wait, global_batch)
                val = self._maybe_evaluate()
                if s.step % cfg.sampler.update_every == 0:  # collective: every rank
                    self._update_sampler(self.meter.pop_interval(), "train")
                if s.step % cfg.train.log_every == 0 or val or s.step == cfg.train.max_steps:
                    record = self._log(loss, val, start_time)
                if s.step % cfg.train.checkpoint_every == 0 or s.step == cfg.train.max_steps:
                    self.save()
                if profiler is not None:
                    profiler.after_step(s.step)
        finally:
            self._close_loggers()
        return record

    def _maybe_evaluate(self) -> dict[str, float]:
        if self.state.step % self.cfg.train.eval_every != 0 and self.state.step != self.cfg.train.max_steps:
            return {}
        val = self.evaluator.evaluate(self.engine, self.info.device, self.dtype)
        self.last_val = val
        self._update_sampler(val, "val")
        return val

    # ------------------------------------------------------------------ outputs
    def _log(self, loss: float, val: dict[str, float], start_time: float) -> dict[str, Any]:
        s = self.state
        sums, counts = s.log_acc
        s.log_acc = np.zeros_like(s.log_acc)
        rec: dict[str, Any] = {
            "step": s.step, "samples": s.samples,
            "consumed": dict(zip(self.domains, self.meter.consumed.tolist(), strict=True)),
            "weights": dict(zip(self.domains, self.mixture.weights.tolist(), strict=True)),
            "weights_version": s.weights_version,
            "loss": float(sums.sum() / counts.sum()) if counts.sum() else loss,
            "lr": self._lr,
            "time": time.time() - start_time,
            **self.speed.stats(),
        }
        rec.update({f"loss/{d}": float(sums[i] / counts[i]) for i, d in enumerate(self.domains) if counts[i]})
        rec.update({f"val/{d}": v for d, v in val.items()})
        rec["weights_lag_batches"] = s.max_lag
        if self.info.is_main:
            self.metrics.write(rec)
            self.wandb.log(rec, s.step)
            self.progress.update(s.step, rec, self.domains)
        return rec

    def save(self) -> None:
        extra = {"sampler_state_sha256": state_digest(self.sampler.state_dict())} if self.info.is_main else None
        self.checkpointer.save(self.engine, self.state.step, self.client_state(), self.export_encoder, extra)

    def export_encoder(self, path: Path) -> None:
        """Write the encoder (weights + metadata) so downstream tasks configure themselves."""
        meta = {"step": self.state.step, "domains": list(self.domains), "run_id": self.run_id,
                "config_fingerprint": config_fingerprint(self.cfg), "preprocessing": self.preprocessing}
        if self.cfg.train.zero_stage == 3:
            import deepspeed

            params = list(self.model.parameters())
            with deepspeed.zero.GatheredParameters(params, modifier_rank=None):
                if self.info.is_main:
                    self.model.save_encoder(str(path), overwrite=True, extra_meta=meta)
        elif self.info.is_main:
            self.model.save_encoder(str(path), overwrite=True, extra_meta=meta)

    def _open_loggers(self) -> None:
        if self.info.is_main:
            self.metrics = JsonlWriter(self.out / "metrics.jsonl")
            self.sampler_log = JsonlWriter(self.out / "sampler.jsonl")
            self.wandb = WandbLogger(self.cfg, self.run_id)
            self.progress = Progress(self.cfg.train.max_steps, self.state.step, self.cfg.logging.progress_bar)

    def _close_loggers(self) -> None:
        if self.info.is_main:
            for closable in (self.progress, self.metrics, self.sampler_log, self.wandb):
                if closable is not None:
                    closable.close()
