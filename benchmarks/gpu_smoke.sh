#!/usr/bin/env bash
# One short GPU pretraining check (bf16, NCCL, one process): samples/s, MFU, data-wait fraction.
# Run from the repo root on the GPU machine:  bash benchmarks/gpu_smoke.sh [key=value overrides]
# Synthesises phantom shards (16 cases x 112^3 per domain, ~1-2 min on one core), trains
# configs/gpu_smoke.yaml (base MAE, 96^3 crops, patch 16, 12 loader workers) for 60 steps, then
# prints the throughput figures from outputs/gpu_smoke/run/metrics.jsonl (steps 11.. only: the
# first steps include CUDA / loader warm-up). Results go to $OUT when set (the device tool's folder).
set -euo pipefail
PY=${PY:-.venv/bin/python}
[ -x "$PY" ] || PY=python
OUTDIR=outputs/gpu_smoke
"$PY" -m mixpretrain.demo --config configs/gpu_smoke.yaml --cases "${CASES:-16}" --size "${SIZE:-112}" "$@"
"$PY" - "$OUTDIR/run/metrics.jsonl" <<'PYEOF'
import json, statistics, sys, torch
recs = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
steady = [r for r in recs if r["step"] > 10]
def med(key):
    vals = [r[key] for r in steady if r.get(key) is not None]
    return statistics.median(vals) if vals else float("nan")
dev = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
print(f"device: {dev}; steps {steady[0]['step']}-{steady[-1]['step']} of {recs[-1]['step']}")
print(f"samples/s (median of 20-step windows): {med('samples_per_s'):.1f}")
print(f"step time (s): {med('step_time'):.4f}")
print(f"MFU: {med('mfu'):.3%}" if any('mfu' in r for r in steady) else "MFU: n/a (unknown peak)")
print(f"data-wait fraction: {med('data_wait'):.1%}")
print(f"final loss {recs[-1]['loss']:.4f} (first logged {recs[0]['loss']:.4f}); weights {recs[-1]['weights']}")
PYEOF
if [ -n "${OUT:-}" ]; then
  cp "$OUTDIR/run/metrics.jsonl" "$OUTDIR/run/sampler.jsonl" "$OUT/" 2>/dev/null || true
fi
