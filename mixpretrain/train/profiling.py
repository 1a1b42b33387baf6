"""Opt-in profiling of a few training steps, to see where a step's time goes.

    MIXPRETRAIN_PROFILE=20:25 deepspeed launch/pretrain.py --config ...

profiles optimizer steps 21..25 on rank 0 with ``torch.profiler`` (CPU and, where present, CUDA
activity) and writes ``output_dir/profile/steps_<a>-<b>.txt`` (operators by self time) and a
Chrome trace ``steps_<a>-<b>.json`` (open in chrome://tracing or Perfetto). An environment
variable rather than a config key: profiling changes nothing about the run, so it must not
change the config fingerprint that resume checks.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

log = logging.getLogger(__name__)

ENV = "MIXPRETRAIN_PROFILE"


class StepProfiler:
    """Profiles the optimizer steps in (start, stop]; call :meth:`after_step` after every step."""

    def __init__(self, start: int, stop: int, out_dir: Path) -> None:
        if not 0 <= start < stop:
            raise ValueError(f"{ENV}={start}:{stop}: expected START:STOP with 0 <= START < STOP")
        self.start, self.stop, self.out_dir = start, stop, out_dir
        self._prof: profile | None = None

    @classmethod
    def from_env(cls, out_dir: Path, is_main: bool) -> StepProfiler | None:
        spec = os.environ.get(ENV, "").strip()
        if not spec or not is_main:
            return None
        try:
            start, stop = (int(v) for v in spec.split(":"))
        except ValueError as exc:
            raise ValueError(f"{ENV}={spec!r}: expected START:STOP, e.g. 20:25") from exc
        return cls(start, stop, out_dir)

    def after_step(self, step: int) -> None:
        if step == self.start:
            activities = [ProfilerActivity.CPU]
            if torch.cuda.is_available():
                activities.append(ProfilerActivity.CUDA)
            self._prof = profile(activities=activities, record_shapes=False)
            self._prof.__enter__()
        elif step == self.stop and self._prof is not None:
            self._prof.__exit__(None, None, None)
            self._write(self._prof)
            self._prof = None

    def _write(self, prof: profile) -> None:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        name = f"steps_{self.start + 1}-{self.stop}"
        sort = "self_cuda_time_total" if torch.cuda.is_available() else "self_cpu_time_total"
        table = prof.key_averages().table(sort_by=sort, row_limit=40)
        (self.out_dir / f"{name}.txt").write_text(table)
        prof.export_chrome_trace(str(self.out_dir / f"{name}.json"))
        log.info("profile of steps %d-%d written to %s", self.start + 1, self.stop, self.out_dir)
