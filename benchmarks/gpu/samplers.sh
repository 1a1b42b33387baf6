#!/usr/bin/env bash
# One lent-GPU call: issue 7's sampler rows on configs/bench/gpu_small.yaml, run from the repo root
# on the device machine after `make wheels` here:
#   run(command="bash benchmarks/gpu/samplers.sh", carry=[".whl"], timeout_s=600)
# 4 samplers x 4 seeds (16 runs, 4 at a time: about 7 minutes on an H100 at stop 16); the runs stay
# on the machine, the table, its JSON and the plots come back in $OUT (the device tool's folder).
# Knobs: SAMPLERS, SEEDS, VARIANTS (--transfer-variants JSON), CONFIG, RUNS (where runs are written).
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
# Two threads per trainer (as on the H100 at stop 16): 4 trainers and their loaders share the 16 cores.
OMP_NUM_THREADS=${OMP_NUM_THREADS:-2} $PY benchmarks/compare_samplers.py "${args[@]}" 2>&1 | tee "$OUT/compare.log" | tail -n 60
for f in comparison.md comparison.json loss_curves.png weights.png; do
  cp "$RUNS/$f" "$OUT/" 2>/dev/null || echo "samplers.sh: $RUNS/$f was not written"
done
