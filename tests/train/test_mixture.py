"""MixtureStream with real DomainStreams and DataLoader workers: live weights, bounded latency."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from mixpretrain.data.mixture import MixtureStream, build_loader, latency_bound

DOMAINS = ("ct", "mri", "pet")
STREAM = {"crop_size": (16, 16, 16), "crops_per_volume": 2, "shuffle_buffer": 4}


def test_weight_change_reaches_batches_within_the_bound(phantom_shards: Path) -> None:
    workers, prefetch = 2, 2
    mix = MixtureStream(phantom_shards, DOMAINS, weights=[1.0, 0.0, 0.0], seed=0, stream_kwargs=STREAM)
    loader = build_loader(mix, 4, num_workers=workers, prefetch_factor=prefetch)
    it = iter(loader)
    first = [next(it) for _ in range(3)]
    assert all((b["domain"] == 0).all() for b in first)  # only ct while its weight is 1
    assert first[0]["image"].shape == (4, 1, 16, 16, 16) and first[0]["image"].dtype == torch.float32

    version = mix.set_weights([0.0, 0.0, 1.0])  # in place, workers keep running
    bound = latency_bound(workers, prefetch)
    after = [next(it) for _ in range(3 * bound)]
    stale = [i for i, b in enumerate(after) if b["weights_version"] < version]
    lag = (max(stale) + 2) if stale else 1  # position of the first batch after the last stale one
    assert lag <= bound, f"weights took {lag} batches, more than the prefetch bound {bound}"
    # Every batch past the bound was drawn entirely under the new weights.
    assert all((b["domain"] == 2).all() and b["weights_version"] >= version for b in after[bound - 1 :])
    assert all(((b["domain"] == 0) | (b["domain"] == 2)).all() for b in after)
    print(f"weight change took effect after {lag} batches (bound {bound}), stale batches at {stale}")


def test_realised_mixture_follows_the_weights_in_process(phantom_shards: Path) -> None:
    mix = MixtureStream(phantom_shards, DOMAINS, weights=[0.2, 0.3, 0.5], seed=1, stream_kwargs=STREAM)
    it = iter(build_loader(mix, 8, num_workers=0, prefetch_factor=2))
    counts = np.bincount(torch.cat([next(it)["domain"] for _ in range(25)]).numpy(), minlength=3)
    assert counts.sum() == 200
    np.testing.assert_allclose(counts / 200, [0.2, 0.3, 0.5], atol=0.1)
    assert latency_bound(0, 2) == 1


@pytest.mark.parametrize("bad", [[1.0, 2.0], [np.nan, 1.0, 1.0], [-1.0, 1.0, 1.0], [0.0, 0.0, 0.0]])
def test_bad_weights_are_refused(phantom_shards: Path, bad: list[float]) -> None:
    mix = MixtureStream(phantom_shards, DOMAINS, stream_kwargs=STREAM)
    with pytest.raises(ValueError, match="mixture weights"):
        mix.set_weights(bad)


def test_ranks_read_disjoint_shards(phantom_shards: Path) -> None:
    keys = []
    for rank in (0, 1):
        mix = MixtureStream(phantom_shards, DOMAINS, weights=[1.0, 0.0, 0.0], seed=2, rank=rank, world_size=2,
                            stream_kwargs=STREAM)
        it = iter(build_loader(mix, 4, num_workers=0, prefetch_factor=2))
        keys.append({k for _ in range(12) for k in next(it)["key"]})
    assert keys[0] and keys[1] and not keys[0] & keys[1]  # 3 ct shards: rank 0 reads 0 and 2, rank 1 reads 1
