"""launch/pretrain.py with a per-rank record of what each rank computed, for tests/multinode.

The trainer writes metrics.jsonl on rank 0 only. To check that every rank of a multi-node run
holds the same per-domain metrics, this script wraps (does not replace) two methods before
running launch/pretrain.py unchanged, and appends to ``$PROBE_DIR/rank{R}.jsonl``:

* ``{"kind": "meter", ...}``: this rank's own per-domain (loss sum, count) for an optimizer step,
  taken before DomainMeter's all-reduce, and the global values that the all-reduce returned;
* ``{"kind": "log", ...}``: the metrics record Trainer._log built on this rank.
"""

from __future__ import annotations

import json
import os
import runpy
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from mixpretrain.train.meters import DomainMeter  # noqa: E402
from mixpretrain.train.trainer import Trainer  # noqa: E402

_OUT = Path(os.environ["PROBE_DIR"]) / f"rank{os.environ['RANK']}.jsonl"
_reduce_step = DomainMeter.reduce_step
_log = Trainer._log


def _write(record: dict[str, Any]) -> None:
    with open(_OUT, "a") as f:
        f.write(json.dumps(record) + "\n")


def reduce_step(self: DomainMeter) -> Any:
    local = self._step.cpu().numpy().tolist()
    reduced = _reduce_step(self)
    _write({"kind": "meter", "local": local, "global": reduced.tolist()})
    return reduced


def log(self: Trainer, *args: Any, **kwargs: Any) -> dict[str, Any]:
    record = _log(self, *args, **kwargs)
    _write({"kind": "log", "rank": self.info.rank, "world_size": self.info.world_size, "record": record})
    return record


DomainMeter.reduce_step = reduce_step  # type: ignore[method-assign]
Trainer._log = log  # type: ignore[method-assign]

if __name__ == "__main__":
    sys.argv[0] = str(REPO / "launch" / "pretrain.py")
    runpy.run_path(sys.argv[0], run_name="__main__")
