#!/usr/bin/env bash
# One lent-GPU call: issue 7's sampler rows on configs/bench/gpu_small.yaml, run from the repo root
# on the device machine after `make wheels` here:
#   run(command="bash benchmarks/gpu/samplers.sh", carry=[".whl"], timeout_s=600)
# 4 samplers x 4 seeds (16 runs, 4 at a time: 15 runs took 283 s on an H100 at stop 20); the runs stay
# on the machine, the table, its JSON and the plots come back in $OUT (the device tool's folder).
# Knobs: SAMPLERS, SEEDS, VARIANTS (--transfer-variants JSON), CONFIG, RUNS (where runs are written),
# LIMIT (seconds for the comparison, default 540: under the tool's 600 so the copies below still run;
# a comparison cut short leaves no table, but every run's logs come back in $OUT/runs.tgz).
# A dry run on a CPU machine: DEVICE=cpu CONFIG=configs/bench/cpu_tiny.yaml SEEDS=1 SAMPLERS=proportional,transfer
set -u
export PYTHONUNBUFFERED=1
OUT=${OUT:-outputs/gpu_samplers}
mkdir -p "$OUT"
CONFIG=${CONFIG:-configs/bench/gpu_small.yaml}
SAMPLERS=${SAMPLERS:-proportional,uniform,temperature,transfer}
SEEDS=${SEEDS:-4}
RUNS=${RUNS:-outputs/bench/gpu_samplers}
# shellcheck source=benchmarks/gpu/env.sh
source benchmarks/gpu/env.sh

args=(--pretrain --config "$CONFIG" --samplers "$SAMPLERS" --seeds "$SEEDS" --out "$RUNS")
if [ -n "${VARIANTS:-}" ]; then args+=(--transfer-variants "$VARIANTS"); fi
if [ "${DEVICE:-cuda}" = cuda ]; then  # GPU use and memory every 20 s, to show the GPU was kept busy
  nvidia-smi --query-gpu=timestamp,utilization.gpu,memory.used --format=csv -l 20 >"$OUT/nvidia-smi.csv" &
fi
# Two threads per trainer (as on the H100 at stop 16): 4 trainers and their loaders share the 16 cores.
OMP_NUM_THREADS=${OMP_NUM_THREADS:-2} timeout "${LIMIT:-540}" "$PY" benchmarks/compare_samplers.py "${args[@]}" 2>&1 | tee "$OUT/compare.log" | tail -n 60
for f in comparison.md comparison.json loss_curves.png weights.png; do
  cp "$RUNS/$f" "$OUT/" 2>/dev/null || echo "samplers.sh: $RUNS/$f was not written"
done
# Each run's logs (not its checkpoints) in one archive, since the tool brings back a limited number
# of files: enough to rebuild or diagnose the table here (tar xzf runs.tgz), even after a cut.
(cd "$RUNS" && tar czf - runs/*/run.json runs/*/metrics.jsonl runs/*/sampler.jsonl configs logs) >"$OUT/runs.tgz" ||
  echo "samplers.sh: could not archive the run logs of $RUNS"
kill %1 2>/dev/null || true
