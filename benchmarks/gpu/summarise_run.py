"""Summarise a run's metrics.jsonl: steady-state samples/s, MFU, data-wait fraction, final losses.

    python benchmarks/gpu/summarise_run.py outputs/gpu_smoke/run/metrics.jsonl [--skip 10]

Medians over the logged steps after the first ``--skip`` (warm-up, compilation, first fill of
the loader). The speed fields are the trainer's own windowed figures (train/meters.py).
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("metrics", type=Path)
    p.add_argument("--skip", type=int, default=10, help="ignore the first N logged steps")
    args = p.parse_args()
    records = [json.loads(line) for line in args.metrics.read_text().splitlines() if line.strip()]
    steady = [r for r in records if r.get("step", 0) > args.skip and "samples_per_s" in r]
    if not steady:
        raise SystemExit(f"{args.metrics}: no logged steps after step {args.skip}")
    out = {"steps_logged": len(records), "steady_steps": len(steady)}
    for key in ("samples_per_s", "data_wait", "mfu", "step_time"):
        values = [r[key] for r in steady if isinstance(r.get(key), int | float)]
        if values:
            out[f"median_{key}"] = round(statistics.median(values), 4)
    last = records[-1]
    out["final_step"] = last.get("step")
    out["consumed"] = last.get("consumed")
    out["weights"] = last.get("weights")
    val = [r for r in records if any(k.startswith("val/") for k in r)]
    if val:
        out["final_val"] = {k: round(v, 4) for k, v in val[-1].items() if k.startswith("val/")}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
