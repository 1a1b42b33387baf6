"""How many batches until new mixture weights reach the model, against the prefetch bound.

    python benchmarks/mixture_latency.py [--trials 5]

Phantom shards (3 domains) in a temp dir; for each (num_workers, prefetch_factor) a MixtureStream
over real DomainStreams runs in a real DataLoader; weights switch from one-hot domain 0 to one-hot
domain 2 after a few batches and we count the batches until the last one drawn under the old
weights has passed. Printed: observed max / mean lag and the ratio to the bound W x P + 1.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from mixpretrain.data.mixture import MixtureStream, build_loader, latency_bound
from mixpretrain.data.synth import write_phantom_shards

STREAM = {"crop_size": (16, 16, 16), "crops_per_volume": 2, "shuffle_buffer": 4}


def one_trial(shards: Path, workers: int, prefetch: int, seed: int) -> int:
    mix = MixtureStream(shards, ("ct", "mri", "pet"), weights=[1, 0, 0], seed=seed, stream_kwargs=STREAM)
    it = iter(build_loader(mix, 4, num_workers=workers, prefetch_factor=prefetch))
    for _ in range(3 * max(workers, 1)):
        next(it)
    time.sleep(0.2)  # let the workers fill their prefetch queue (the worst case)
    version = mix.set_weights([0, 0, 1])
    bound = latency_bound(workers, prefetch)
    after = [next(it) for _ in range(2 * bound)]
    stale = [i for i, b in enumerate(after) if b["weights_version"] < version]
    del it
    return max(stale) + 2 if stale else 1


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--trials", type=int, default=5)
    args = ap.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        shards = Path(tmp) / "shards"
        write_phantom_shards(shards, ["ct", "mri", "pet"], cases=10, size=24)
        print(f"{'workers':>7} {'prefetch':>8} {'bound':>5} {'max lag':>7} {'mean lag':>8} {'max/bound':>9}")
        for workers, prefetch in ((0, 2), (1, 2), (2, 2), (2, 4), (4, 2)):
            lags = [one_trial(shards, workers, prefetch, seed) for seed in range(args.trials)]
            bound = latency_bound(workers, prefetch)
            print(f"{workers:>7} {prefetch:>8} {bound:>5} {max(lags):>7} {statistics.mean(lags):>8.2f} "
                  f"{max(lags) / bound:>9.2f}")


if __name__ == "__main__":
    main()
