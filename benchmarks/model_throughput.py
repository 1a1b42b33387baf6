"""Training throughput of our MAE3D against MONAI's MaskedAutoEncoderViT, side by side.

Both models get the same widths, depths, heads, MLP ratio, patch, image size and mask ratio,
the same batch (generated once, on the device), the same fused AdamW and the same per-sample
loss (MONAI's model returns none, so ours is computed outside it on its prediction and mask).
One timed step = forward + backward + optimizer step. Models alternate over several rounds of
timed steps after warm-up; each model's figure is its best round (robust to load from other
processes on a shared machine). MFU is achieved model FLOP/s (analytic matmul FLOPs, 3x
forward, see ``mixpretrain/models/flops.py``) over the device's peak measured here: a large
bf16 matmul on GPU, a large fp32 matmul on CPU.

    python benchmarks/model_throughput.py --device cuda               # base, 128^3, patch 16, bf16
    python benchmarks/model_throughput.py --device cpu --json         # small CPU config, fp32

Needs torch and monai only. The last line printed is the table, or with ``--json`` a JSON
object with ``ratio_vs_monai``.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import platform
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch

# MONAI's sin-cos builder calls meshgrid without indexing=; that warning is not ours to fix.
warnings.filterwarnings("ignore", message="torch.meshgrid: in an upcoming release")

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from mixpretrain.models import build_mae, mae_forward_flops, masked_patch_loss, patchify, train_flops  # noqa: E402

DEFAULTS = {  # per device: preset, image, batch, timed steps per round, warm-up steps, precision
    "cuda": dict(preset="base", img=[128], batch=64, steps=20, warmup=5, precision="bf16"),
    "cpu": dict(preset="small", img=[64], batch=4, steps=2, warmup=1, precision="fp32"),
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--preset", help="tiny | small | base | large")
    p.add_argument("--img", type=int, nargs="+", help="image size: one int (cube) or D H W")
    p.add_argument("--patch", type=int, default=16)
    p.add_argument("--batch", type=int)
    p.add_argument("--steps", type=int, help="timed steps per round")
    p.add_argument("--rounds", type=int, default=3, help="timing rounds per model (models alternate)")
    p.add_argument("--warmup", type=int)
    p.add_argument("--mask-ratio", type=float, default=0.75)
    p.add_argument("--precision", choices=["bf16", "fp32"], help="bf16 = autocast with fp32 master weights")
    p.add_argument("--compile", action="store_true", help="torch.compile both models (off by default)")
    p.add_argument("--activation-checkpointing", action="store_true", help="ours only")
    p.add_argument("--models", default="ours,monai", help="comma list: ours, monai")
    p.add_argument("--max-seconds", type=float, default=60.0, help="cap on timed seconds per model")
    p.add_argument("--threads", type=int, help="CPU threads (torch.set_num_threads)")
    p.add_argument("--json", action="store_true", help="last line: a JSON object with ratio_vs_monai")
    p.add_argument("--peak-n", type=int, help=argparse.SUPPRESS)  # smaller peak matmul, for smoke tests
    args = p.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: no CUDA device visible to torch")
    for key, value in DEFAULTS[args.device].items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if len(args.img) not in (1, 3):
        p.error(f"--img: one int or three ints, got {args.img}")
    args.img = tuple(args.img * 3 if len(args.img) == 1 else args.img)
    return args


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def measure_peak(device: str, n: int | None = None) -> tuple[float, str]:
    """Best achieved matmul FLOP/s over a few trials: bf16 8192^2 on GPU, fp32 1024^2 on CPU."""
    size, dtype, reps = (8192, torch.bfloat16, 20) if device == "cuda" else (1024, torch.float32, 8)
    n = n or size
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    torch.mm(a, b)  # warm-up (cuBLAS handle, CPU thread pool)
    best = 0.0
    for _ in range(5):
        sync(device)
        t0 = time.perf_counter()
        for _ in range(reps):
            torch.mm(a, b)
        sync(device)
        best = max(best, 2 * n**3 * reps / (time.perf_counter() - t0))
    return best, f"{'bf16' if dtype == torch.bfloat16 else 'fp32'} {n}x{n} matmul"


def mae_sizes(args: argparse.Namespace) -> dict[str, Any]:
    """The preset's sizes, read from a model built on the meta device (no memory, no init)."""
    with torch.device("meta"):
        m = build_mae(args.preset, img_size=args.img, patch_size=args.patch, mask_ratio=args.mask_ratio)
    e = m.encoder
    return dict(width=e.width, depth=e.depth, heads=e.heads, mlp_ratio=e.mlp_ratio, decoder_width=m.decoder_width,
                decoder_depth=m.decoder_depth, decoder_heads=m.decoder_heads, decoder_mlp_ratio=m.decoder_mlp_ratio)


def build_ours(args: argparse.Namespace, device: str) -> tuple[torch.nn.Module, Callable, int]:
    model = build_mae(args.preset, img_size=args.img, patch_size=args.patch, mask_ratio=args.mask_ratio,
                      activation_checkpointing=args.activation_checkpointing).to(device)

    def loss_fn(m: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
        return m(x).loss.mean()

    return model, loss_fn, model.flops_per_sample()


def build_monai(args: argparse.Namespace, device: str, s: dict[str, Any]) -> tuple[torch.nn.Module, Callable, int]:
    from monai.networks.nets import MaskedAutoEncoderViT

    # MONAI's sin-cos embedding needs widths divisible by 6; otherwise it gets learnable ones
    # (same cost in a training step: one add).
    def pos(width: int) -> str:
        return "sincos" if width % 6 == 0 else "learnable"

    mlp, dmlp = int(s["width"] * s["mlp_ratio"]), int(s["decoder_width"] * s["decoder_mlp_ratio"])
    model = MaskedAutoEncoderViT(
        in_channels=1, img_size=args.img, patch_size=args.patch, hidden_size=s["width"], mlp_dim=mlp,
        num_layers=s["depth"], num_heads=s["heads"], masking_ratio=args.mask_ratio,
        decoder_hidden_size=s["decoder_width"], decoder_mlp_dim=dmlp, decoder_num_layers=s["decoder_depth"],
        decoder_num_heads=s["decoder_heads"], pos_embed_type=pos(s["width"]),
        decoder_pos_embed_type=pos(s["decoder_width"]), qkv_bias=True,
    ).to(device)
    # MONAI fills its decoder sequence by index_put of the (bf16 under autocast) embedded tokens
    # into a float32 tensor of mask tokens, which raises "Index put requires the source and
    # destination dtypes match" under bf16 autocast. Casting that one small [B, n_keep+1, width]
    # output to float32 is the least change that lets it run; the decoder's linears still run bf16.
    model.decoder_embed.register_forward_hook(lambda _m, _i, out: out.float())
    patch = (args.patch,) * 3

    def loss_fn(m: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
        pred, mask = m(x)
        return masked_patch_loss(pred, patchify(x, patch), mask).mean()

    n = math.prod(i // args.patch for i in args.img)
    visible = int((1 - args.mask_ratio) * n)  # MONAI's own rounding
    flops = train_flops(mae_forward_flops(
        num_patches=n, visible=visible, patch_dim=args.patch**3, width=s["width"], depth=s["depth"], mlp_hidden=mlp,
        decoder_width=s["decoder_width"], decoder_depth=s["decoder_depth"], decoder_mlp_hidden=dmlp,
        embed_tokens=n, extra_tokens=1,  # conv embedding of every patch; a class token throughout
    ))
    return model, loss_fn, flops


class Runner:
    """One model, its optimizer and a compiled-or-eager training step."""

    def __init__(self, name: str, model: torch.nn.Module, loss_fn: Callable, flops: int,
                 args: argparse.Namespace, device: str) -> None:
        self.name, self.model, self.flops, self.device = name, model.train(), flops, device
        self.params = sum(p.numel() for p in model.parameters() if p.requires_grad)
        compute = functools.partial(loss_fn, model)
        # Compiled: the whole loss (model + loss outside it for MONAI), the same for both.
        self.compute = torch.compile(compute) if args.compile else compute
        try:  # fused AdamW on both models (CPU support depends on the torch build)
            self.opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.05, fused=True)
        except (RuntimeError, TypeError):
            self.opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.05, foreach=True)
        self.amp = (torch.autocast(device, dtype=torch.bfloat16) if args.precision == "bf16"
                    else nullcontext())
        self.times: list[float] = []
        self.last_loss = float("nan")
        self.error = ""

    def step(self, x: torch.Tensor) -> torch.Tensor:
        with self.amp:
            loss = self.compute(x)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        return loss.detach()

    def run(self, x: torch.Tensor, steps: int) -> float:
        """Seconds per step over ``steps`` steps, with one sync at each end (none inside)."""
        sync(self.device)
        t0 = time.perf_counter()
        for _ in range(steps):
            loss = self.step(x)
        sync(self.device)
        self.last_loss = float(loss)
        return (time.perf_counter() - t0) / steps


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    dev = args.device
    if args.threads:
        torch.set_num_threads(args.threads)
    if dev == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    torch.manual_seed(0)
    peak, peak_what = measure_peak(dev, args.peak_n)
    sizes = mae_sizes(args)
    x = torch.randn(args.batch, 1, *args.img, device=dev)
    builders = {"ours": lambda: build_ours(args, dev), "monai": lambda: build_monai(args, dev, sizes)}
    runners: list[Runner] = []
    failed: dict[str, str] = {}
    for name in [n.strip() for n in args.models.split(",") if n.strip()]:
        if name not in builders:
            raise SystemExit(f"--models: unknown model {name!r} (ours, monai)")
        try:
            runners.append(Runner(name, *builders[name](), args, dev))
        except Exception as exc:  # one model failing must not lose the other's figures
            failed[name] = _describe(exc)

    steps = args.steps
    for r in runners:  # warm-up (and compile), then one probe step sizes the rounds to the time cap
        if _guarded(r, lambda r=r: r.run(x, args.warmup)):
            t_step = _guarded(r, lambda r=r: r.run(x, 1))
            if t_step:
                steps = max(1, min(steps, int(args.max_seconds / max(args.rounds * t_step, 1e-6))))
    for _ in range(args.rounds):
        for r in runners:
            if not r.error:
                t = _guarded(r, lambda r=r: r.run(x, steps))
                if t:
                    r.times.append(t)
    if dev == "cuda":
        for r in runners:  # memory one more step needs beyond what is resident (both models' weights)
            if not r.error:
                r.opt.zero_grad(set_to_none=True)
                resident = torch.cuda.memory_allocated()
                torch.cuda.reset_peak_memory_stats()
                if _guarded(r, lambda r=r: r.run(x, 1)):
                    r.step_mem_gb = (torch.cuda.max_memory_allocated() - resident) / 2**30
    peak = max(peak, measure_peak(dev, args.peak_n)[0])  # again after timing: on a shared machine load may hit one
    report(args, runners, failed, peak, peak_what, sizes, steps)
    return 0


def _describe(exc: BaseException) -> str:
    first = (str(exc).splitlines() or [""])[0]
    return f"{type(exc).__name__}: {first[:160]}"


def _guarded(r: Runner, fn: Callable[[], float]) -> float:
    """Run ``fn``; on failure (out of memory, a model bug) record it on ``r`` and free its memory."""
    try:
        return fn()
    except Exception as exc:
        r.error = _describe(exc)
        r.opt.zero_grad(set_to_none=True)
        if r.device == "cuda":
            torch.cuda.empty_cache()
        return 0.0


def report(args: argparse.Namespace, runners: list[Runner], failed: dict[str, str], peak: float,
           peak_what: str, sizes: dict[str, Any], steps: int) -> None:
    dev = args.device
    name = torch.cuda.get_device_name() if dev == "cuda" else f"{platform.processor() or 'cpu'} x{torch.get_num_threads()}"
    rows: dict[str, dict[str, Any]] = {name: {"error": err} for name, err in failed.items()}
    for r in runners:
        if r.error or not r.times:
            rows[r.name] = {"error": r.error or "not run"}
            continue
        t = min(r.times)
        sps = args.batch / t
        tflops = sps * r.flops / 1e12
        rows[r.name] = {
            "step_s": round(t, 5), "median_step_s": round(statistics.median(r.times), 5),
            "samples_per_s": round(sps, 3), "tflops": round(tflops, 3),
            "mfu": round(tflops * 1e12 / peak, 4), "gflop_per_sample": round(r.flops / 1e9, 3),
            "params_m": round(r.params / 1e6, 2), "loss": round(r.last_loss, 4),
            "rounds_s": [round(v, 5) for v in r.times],
        }
        if hasattr(r, "step_mem_gb"):
            rows[r.name]["step_mem_gb"] = round(r.step_mem_gb, 2)
    ours, monai = rows.get("ours", {}), rows.get("monai", {})
    ratio = (ours["samples_per_s"] / monai["samples_per_s"]
             if "samples_per_s" in ours and "samples_per_s" in monai else None)
    median_ratio = (monai["median_step_s"] / ours["median_step_s"]
                    if "median_step_s" in ours and "median_step_s" in monai else None)
    summary = {
        "device": dev, "device_name": name, "torch": torch.__version__, "monai": _monai_version(),
        "peak_tflops": round(peak / 1e12, 2), "peak_measured_with": peak_what, "preset": args.preset,
        "img": list(args.img), "patch": args.patch, "batch": args.batch, "mask_ratio": args.mask_ratio,
        "precision": args.precision, "compile": args.compile, "steps_per_round": steps, "rounds": args.rounds,
        "sizes": sizes, "models": rows, "ratio_vs_monai": None if ratio is None else round(ratio, 3),
        "ratio_vs_monai_median": None if median_ratio is None else round(median_ratio, 3),
    }
    print(f"device: {name} | torch {torch.__version__} | peak {peak / 1e12:.2f} TFLOP/s ({peak_what})")
    print(f"config: {args.preset} img {args.img} patch {args.patch} batch {args.batch} mask {args.mask_ratio} "
          f"{args.precision}{' compiled' if args.compile else ''} | {args.rounds} rounds x {steps} steps, best round")
    table = [f"{'model':<6} {'samples/s':>10} {'step ms':>9} {'TFLOP/s':>8} {'MFU':>6} {'GFLOP/smp':>10} "
             f"{'params M':>9} {'step GB':>8}"]
    for k, v in rows.items():
        if "error" in v:
            table.append(f"{k:<6} {v['error']}")
        else:
            table.append(f"{k:<6} {v['samples_per_s']:>10.2f} {v['step_s'] * 1e3:>9.1f} {v['tflops']:>8.3f} "
                         f"{v['mfu']:>6.1%} {v['gflop_per_sample']:>10.1f} {v['params_m']:>9.1f} "
                         f"{v.get('step_mem_gb', float('nan')):>8.2f}")
    table.append(f"ratio ours/MONAI (samples/s): {'n/a' if ratio is None else f'{ratio:.2f}x'} best round"
                 f"{'' if median_ratio is None else f', {median_ratio:.2f}x median round'}")
    print("\n".join(table))
    if args.json:
        print(json.dumps(summary))


def _monai_version() -> str:
    try:
        import monai

        return monai.__version__
    except ImportError:
        return "missing"


if __name__ == "__main__":
    sys.exit(main())
