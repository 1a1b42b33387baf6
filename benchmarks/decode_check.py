"""What the NaN/Inf check on every decoded volume costs the training data path.

``shards.decode_sample`` refuses a volume with non-finite voxels (a corrupted payload decodes to
NaN/Inf, most often under zstd; the writer never stores them). This measures crops per CPU-second
of ``DomainStream`` over real scans (../shared/data/real, ingested once into a temp folder, as in
``benchmarks/data_pipeline.py``) with the check and with it replaced by a no-op, alternating in
the same process for ``--rounds`` rounds (after one untimed warm-up pass, the order alternating
between rounds); the ratio is the median of the per-round ratios.

    python benchmarks/decode_check.py [--crop 96] [--k 4] [--rounds 5] [--codec blosc2|zstd]
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "BLOSC_NTHREADS"):
    os.environ.setdefault(_var, "1")  # per-core figures: one thread everywhere

import argparse  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.data_pipeline import MODALITIES, pick_scans  # noqa: E402


def ingest(scans: dict[str, list[Path]], out: Path, codec: str) -> None:
    from mixpretrain.data.ingest import cases_from_inputs, ingest

    for m, files in scans.items():
        ingest(cases_from_inputs(files, domain=m, modality=m), out, workers=1, val_fraction=0.0, progress=False,
               codec=codec)


def crops_per_cpu_second(shards: Path, crop: int, k: int, epoch: int) -> tuple[int, float]:
    from mixpretrain.data.stream import DomainStream

    c0, n = time.process_time(), 0
    for m in MODALITIES:
        for item in DomainStream(shards, m, split="train", resampled=False, crop_size=crop, crops_per_volume=k,
                                 shuffle_buffer=0, epoch=epoch):
            n += item["image"].shape[0]
    return n, time.process_time() - c0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--crop", type=int, default=96)
    p.add_argument("--k", type=int, default=4, help="crops per volume")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--codec", default="blosc2", choices=["blosc2", "zstd"])
    args = p.parse_args()
    from mixpretrain.data import shards as S

    checked = S._all_finite
    scans = pick_scans(0)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "shards"
        ingest(scans, out, args.codec)
        crops_per_cpu_second(out, args.crop, args.k, epoch=-1)  # warm-up pass (page cache, imports), not timed
        variants = [("check", checked), ("no check", lambda v, chunk=0: True)]
        ratios, rows = [], []
        for r in range(args.rounds):
            speed = {}
            for name, fn in variants if r % 2 == 0 else variants[::-1]:  # alternate which goes first
                S._all_finite = fn
                n, cpu = crops_per_cpu_second(out, args.crop, args.k, epoch=r)
                speed[name] = n / cpu
            S._all_finite = checked
            ratios.append(speed["check"] / speed["no check"])
            rows.append(speed)
            print(f"round {r}: with check {speed['check']:.1f} crops/CPU-s, without {speed['no check']:.1f}, "
                  f"ratio {ratios[-1]:.3f}")
    n_scans = sum(len(v) for v in scans.values())
    print(f"{n_scans} real scans, codec {args.codec}, crop {args.crop}^3 x {args.k} per volume: "
          f"with/without the NaN check = {statistics.median(ratios):.3f} (median of {args.rounds} rounds); "
          f"crops/CPU-s {statistics.median(r['check'] for r in rows):.1f} vs "
          f"{statistics.median(r['no check'] for r in rows):.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
