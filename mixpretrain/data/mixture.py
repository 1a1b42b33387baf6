"""MixtureStream: samples from several domains, mixed by a *live* weight vector.

Each DataLoader worker opens one ``DomainStream`` per domain (lazily, on first draw) and picks
the domain of every sample from a weight vector that lives in shared memory. The main process
changes the mixture with :meth:`MixtureStream.set_weights`, an in-place write that every worker
sees at its next draw: no worker restart, no queue, no pickling.

Latency. A DataLoader over an IterableDataset keeps at most ``num_workers * prefetch_factor``
batches requested ahead of the consumer. Batches already built (or being built) when the weights
change were drawn under the old weights, so the first batch drawn entirely under the new weights
is at most ``num_workers * prefetch_factor + 1`` batches later (``latency_bound``). Each batch
carries ``weights_version``, the oldest version any of its samples saw, so the trainer (and the
test in ``tests/train/test_mixture.py``) can observe the delay instead of assuming it.

Ranks. With at least as many shards as ranks, rank ``r`` reads only the shards ``r::world`` of
each domain (disjoint across ranks); each of its workers resamples from that slice.

Determinism. Worker ``w`` of rank ``r`` seeds its domain draws and its DomainStreams from
``(seed, rank, w, domain, resume_step)``: runs are reproducible, ranks and workers draw different
samples, and a resumed run (new ``resume_step``) does not replay the data it saw before the
checkpoint. The realised per-domain consumption is counted by the trainer from the ``domain``
ids in the batches, never from the requested weights.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

log = logging.getLogger(__name__)

StreamFactory = Callable[..., Any]  # (source, domain, **kwargs) -> iterable of sample dicts


def derive_seed(*parts: int | str) -> int:
    """A stable 31-bit seed from any tuple (Python's hash() is salted per process)."""
    digest = hashlib.sha256("/".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


def _default_factory(source: Any, domain: str, **kwargs: Any) -> Any:
    from mixpretrain.data.stream import DomainStream

    return DomainStream(source, domain, **kwargs)


class MixtureStream(IterableDataset):
    """Infinite stream of ``{"image", "domain" (int id), "key", "weights_version"}`` samples."""

    def __init__(
        self,
        source: Any,
        domains: Sequence[str],
        *,
        weights: Sequence[float] | None = None,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        resume_step: int = 0,
        stream_kwargs: dict[str, Any] | None = None,
        stream_factory: StreamFactory | None = None,
    ) -> None:
        super().__init__()
        if not domains:
            raise ValueError("MixtureStream needs at least one domain")
        self.source = source
        self.domains = tuple(domains)
        self.seed, self.rank, self.world_size, self.resume_step = seed, rank, world_size, resume_step
        self.stream_kwargs = dict(stream_kwargs or {})
        self.stream_factory = stream_factory or _default_factory
        k = len(self.domains)
        # Shared before any worker starts: fork inherits it, spawn receives a handle to the
        # same storage. [0:k] weights, [k] version counter (exact in float64 up to 2**53).
        self._shared = torch.zeros(k + 1, dtype=torch.float64).share_memory_()
        self.set_weights(np.full(k, 1.0 / k) if weights is None else weights)

    # -- main process side -------------------------------------------------------------
    def set_weights(self, weights: Sequence[float] | np.ndarray) -> int:
        """Publish new mixture weights to every worker; returns the new version number."""
        w = np.asarray(weights, dtype=np.float64)
        k = len(self.domains)
        if w.shape != (k,) or not np.all(np.isfinite(w)) or np.any(w < 0) or w.sum() <= 0:
            raise ValueError(f"mixture weights must be {k} finite non-negative numbers with a positive sum, got {w}")
        # Weights first, version last: a worker that reads version v sees weights at least as new.
        self._shared[:k].copy_(torch.from_numpy(w / w.sum()))
        version = int(self._shared[k].item()) + 1
        self._shared[k] = float(version)
        return version

    def continue_versions(self, version: int) -> None:
        """Resume the weight-version counter at ``version`` (a resumed run's last published one), so
        versions in metrics.jsonl keep increasing across a resume instead of starting again at 1."""
        self._shared[len(self.domains)] = float(version)

    @property
    def weights(self) -> np.ndarray:
        return self._shared[: len(self.domains)].numpy().copy()

    @property
    def version(self) -> int:
        return int(self._shared[len(self.domains)].item())

    # -- worker side ---------------------------------------------------------------------
    def _worker_id(self) -> int:
        info = get_worker_info()
        return 0 if info is None else info.id

    def _open(self, d: int, worker: int) -> Iterator[dict[str, Any]]:
        seed = derive_seed(self.seed, self.rank, worker, self.domains[d], self.resume_step)
        stream = self.stream_factory(self.source, self.domains[d], seed=seed, **self.stream_kwargs)
        self._own_shards(stream)
        return iter(stream)

    def _own_shards(self, stream: Any) -> None:
        """Give each rank a disjoint slice of the domain's shards (when there are enough).

        Resampled streams draw from all their shards; with ``rank::world`` slices ranks never read
        the same shard. With fewer shards than ranks every rank keeps all of them (overlap, logged).
        """
        urls = getattr(stream, "urls", None)
        if self.world_size <= 1 or not isinstance(urls, list):
            return
        if len(urls) >= self.world_size:
            stream.urls = urls[self.rank :: self.world_size]
        elif self.rank == 0:
            log.warning("domain %s has %d shards for %d ranks: ranks share its shards", stream.domain,
                        len(urls), self.world_size)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        worker = self._worker_id()
        gen = torch.Generator().manual_seed(derive_seed(self.seed, self.rank, worker, "mixture", self.resume_step))
        k = len(self.domains)
        iters: list[Iterator[dict[str, Any]] | None] = [None] * k
        while True:
            version = int(self._shared[k].item())
            probs = self._shared[:k].clone().clamp_(min=0.0)  # normalised by multinomial
            d = int(torch.multinomial(probs, 1, generator=gen).item())
            if iters[d] is None:
                iters[d] = self._open(d, worker)
            try:
                sample = next(iters[d])
            except StopIteration:
                raise RuntimeError(
                    f"domain stream '{self.domains[d]}' ended; training streams must be infinite (resampled)"
                ) from None
            yield {
                "image": sample["image"],
                "domain": d,
                "key": str(sample.get("key", "")),
                "weights_version": version,
            }


def collate(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack a micro-batch; ``weights_version`` is the oldest version among its samples."""
    return {
        "image": torch.stack([s["image"] for s in samples]),
        "domain": torch.tensor([s["domain"] for s in samples], dtype=torch.long),
        "key": [s["key"] for s in samples],
        "weights_version": min(s["weights_version"] for s in samples),
    }


def latency_bound(num_workers: int, prefetch_factor: int) -> int:
    """Batches after a weight change until the first batch drawn entirely under the new weights."""
    return num_workers * prefetch_factor + 1 if num_workers > 0 else 1


def build_loader(
    mixture: MixtureStream, batch_size: int, *, num_workers: int, prefetch_factor: int, pin_memory: bool = False
) -> DataLoader:
    """Our own DataLoader (DeepSpeed's ``training_data`` path does not handle IterableDatasets)."""
    kwargs: dict[str, Any] = {}
    if num_workers > 0:
        kwargs = {"prefetch_factor": prefetch_factor, "persistent_workers": True}
    return DataLoader(
        mixture,
        batch_size=batch_size,
        num_workers=num_workers,
        collate_fn=collate,
        pin_memory=pin_memory,
        **kwargs,
    )
