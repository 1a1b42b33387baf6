#!/usr/bin/env bash
# One lent-GPU session, run from the repo root on the device machine (see benchmarks/RESULTS.md):
#   1. model throughput, ours vs MONAI MaskedAutoEncoderViT (bf16, MFU), base 128^3 patch 16
#   2. a short pretraining run through launch/pretrain.py under the deepspeed launcher:
#      NCCL, bf16, samples/s, MFU, data-wait fraction with the machine's CPU cores
# The device image has torch but not monai/deepspeed/webdataset: wheels travel in .whl/.
# Knobs for a dry run on CPU: DEVICE=cpu SIZE=32 CASES=4 STEPS=4 CONFIG_OVERRIDES="..."
set -u
export PYTHONUNBUFFERED=1
OUT=${OUT:-outputs/gpu_session}
mkdir -p "$OUT"
SIZE=${SIZE:-112}
CASES=${CASES:-16}
STEPS=${STEPS:-60}
# shellcheck source=benchmarks/gpu/env.sh
source benchmarks/gpu/env.sh

if [ "$DEVICE" = cuda ]; then
  echo "=== 0. flash-attention path: our MAE forward+backward in bf16 with SDPA restricted to the flash kernel"
  $PY - <<'PYEOF'
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from mixpretrain.models import build_mae
m = build_mae("base", img_size=128, patch_size=16).cuda()
x = torch.randn(8, 1, 128, 128, 128, device="cuda")
for name, backend in (("flash", SDPBackend.FLASH_ATTENTION), ("efficient", SDPBackend.EFFICIENT_ATTENTION)):
    try:
        with sdpa_kernel([backend]), torch.autocast("cuda", dtype=torch.bfloat16):
            out = m(x)
            out.loss.mean().backward()
        torch.cuda.synchronize()
        print(f"sdpa {name}: ok, loss {out.loss.mean().item():.4f}, finite grads:",
              all(torch.isfinite(p.grad).all().item() for p in m.parameters() if p.grad is not None))
    except Exception as exc:  # report, do not stop the session
        print(f"sdpa {name}: FAILED {type(exc).__name__}: {exc}")
    m.zero_grad(set_to_none=True)
PYEOF
fi

echo "=== 1. model throughput ($DEVICE)"
# shellcheck disable=SC2086  # PY and MODEL_ARGS may hold several words
timeout 240 $PY benchmarks/model_throughput.py --device "$DEVICE" ${MODEL_ARGS:-} --json 2>&1 | tee "$OUT/model_throughput.log" | tail -n 25

echo "=== 2. pretraining smoke run ($DEVICE)"
rm -rf outputs/gpu_smoke
$PY -m mixpretrain.cli synth --out outputs/gpu_smoke/shards --domains ct,mri,pet --cases "$CASES" --size "$SIZE" 2>&1 | tail -n 3
LAUNCH="deepspeed --num_gpus 1"
[ "$DEVICE" = cpu ] && LAUNCH="$PY"
# shellcheck disable=SC2086  # LAUNCH and CONFIG_OVERRIDES hold several words
timeout 300 $LAUNCH launch/pretrain.py --config configs/gpu_smoke.yaml train.max_steps="$STEPS" logging.progress_bar=false ${CONFIG_OVERRIDES:-} \
  2>&1 | tee "$OUT/pretrain.log" | tail -n 40
cp outputs/gpu_smoke/run/metrics.jsonl "$OUT/" 2>/dev/null
$PY benchmarks/gpu/summarise_run.py outputs/gpu_smoke/run/metrics.jsonl 2>&1 | tee "$OUT/pretrain_summary.txt"
