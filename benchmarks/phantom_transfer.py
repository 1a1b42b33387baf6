"""Is cross-domain transfer between phantom domains real? A measured single-domain transfer matrix.

For each phantom domain i, a small MAE is trained on i alone (same seed, steps and batch for
every i); then every domain j's validation loss is measured with fixed crops and fixed masks.
``transfer[i, j] = (L_j(untrained) - L_j(trained on i)) / (L_j(untrained) - L_j(trained on j))``:
1 means training on i helps j as much as training on j itself, 0 means not at all, negative
means it hurts. This is the quantity the transfer scaling law's T_ij summarises, measured
directly on the phantoms that the sampler benchmarks and the demo use.

    python benchmarks/phantom_transfer.py [--domains ct,mri_t2,pet,cells] [--steps 300] [--json]
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def batches(shards: Path, domain: str, split: str, n: int, batch: int, crop: int, seed: int):
    import torch

    from mixpretrain.data.stream import DomainStream

    it = iter(DomainStream(shards, domain, split=split, crop_size=crop, crops_per_volume=4, seed=seed, resampled=True))
    for _ in range(n):
        yield torch.stack([next(it)["image"] for _ in range(batch)])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--domains", default="ct,mri_t2,pet,cells")
    ap.add_argument("--cases", type=int, default=24)
    ap.add_argument("--size", type=int, default=48, help="phantom volume edge")
    ap.add_argument("--crop", type=int, default=32)
    ap.add_argument("--patch", type=int, default=8)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    import numpy as np
    import torch

    from mixpretrain.data.synth import write_phantom_shards
    from mixpretrain.models import build_mae

    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    doms = [d for d in args.domains.split(",") if d]
    tokens = (args.crop // args.patch) ** 3
    with tempfile.TemporaryDirectory(prefix="transfer_") as tmp:
        shards = Path(tmp)
        write_phantom_shards(shards, doms, cases=args.cases, size=args.size, val_fraction=0.25)
        gen = torch.Generator().manual_seed(1)
        val = {d: list(batches(shards, d, "val", 4, args.batch, args.crop, 123)) for d in doms}
        masks = {d: [torch.rand(args.batch, tokens, generator=gen) for _ in range(4)] for d in doms}

        def evaluate(model: torch.nn.Module) -> list[float]:
            model.eval()
            with torch.no_grad():
                out = [float(torch.stack([model(x, noise=m).loss.mean() for x, m in zip(val[d], masks[d], strict=True)]).mean())
                       for d in doms]
            model.train()
            return out

        losses, seconds = {}, {}
        for train_on in [None, *doms]:
            torch.manual_seed(0)
            model = build_mae(None, img_size=args.crop, patch_size=args.patch, width=96, depth=3, heads=3, decoder_depth=1)
            opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.05)
            t0 = time.perf_counter()
            if train_on is not None:
                for x in batches(shards, train_on, "train", args.steps, args.batch, args.crop, 0):
                    loss = model(x).loss.mean()
                    opt.zero_grad()
                    loss.backward()
                    opt.step()
            seconds[train_on or "untrained"] = round(time.perf_counter() - t0, 1)
            losses[train_on or "untrained"] = evaluate(model)
            print(f"trained on {train_on or '(none)':<10} {seconds[train_on or 'untrained']:6.1f}s  "
                  + "  ".join(f"{d}={v:.3f}" for d, v in zip(doms, losses[train_on or 'untrained'], strict=True)), flush=True)
    base = np.array(losses["untrained"])
    own = np.array([losses[d][j] for j, d in enumerate(doms)])
    transfer = np.array([(base - np.array(losses[i])) / np.maximum(base - own, 1e-9) for i in doms])
    print(f"\ntransfer[i -> j] (1 = as good as training on j itself); {args.steps} steps x {args.batch} crops "
          f"{args.crop}^3, patch {args.patch}")
    print(" " * 12 + "".join(f"{d:>10}" for d in doms))
    for i, d in enumerate(doms):
        print(f"{d:<12}" + "".join(f"{v:>10.2f}" for v in transfer[i]))
    if args.json:
        print(json.dumps({"domains": doms, "transfer": np.round(transfer, 3).tolist(), "val_loss": losses,
                          "train_seconds": seconds, "steps": args.steps, "batch": args.batch, "crop": args.crop,
                          "patch": args.patch, "device": f"cpu, {os.environ['OMP_NUM_THREADS']} thread(s)",
                          "python": platform.python_version(), "torch": torch.__version__}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
