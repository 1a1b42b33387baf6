"""DomainStream: random 3-D crops from one domain's WebDataset shards.

    stream = DomainStream("outputs/demo/shards", "ct", crop_size=(32, 32, 32), crops_per_volume=4, seed=0)
    loader = torch.utils.data.DataLoader(stream, batch_size=8, num_workers=2)

Each item is ``{"image": float32 tensor 1 x D x H x W, "domain": str, "key": str}``.

Pipeline (built on ``webdataset``, assembled lazily in ``__iter__`` so it runs inside whichever
DataLoader worker iterates it, and can be pulled one sample at a time by MixtureStream):

    shard list --(train) ResampledShards, seeded per (seed, epoch, rank, worker, domain)
               --(finite) fixed order, split by node then by worker
    -> url_opener -> tar_file_expander -> per-shard completeness check -> group_by_keys
    -> shuffle raw (compressed) samples -> decode_sample -> k crops per volume -> shuffle crops

Modes. ``resampled=None`` means: infinite resampled mode for ``split="train"``, finite mode
otherwise. In finite mode every sample is read exactly once per epoch across ranks x workers:
shards are dealt out like ``wds.split_by_node`` then ``wds.split_by_worker`` when there are at
least as many shards as (rank, worker) slots; with fewer shards (``split_by="auto"``) every slot
reads every shard but keeps only every n-th sample, so no worker idles and nothing blocks. A slot
with nothing to read yields nothing and ends; it never waits on others.

Determinism. Shard draws, shuffles and crops come from RNGs seeded by
``(seed, epoch, rank, worker, domain)``; in finite mode crops are seeded per sample key, so
validation crops do not depend on the number of ranks or workers. To resume, construct the
stream with the same ``seed`` and a new ``epoch`` (e.g. the resume count, or pass
``state_dict()`` / ``load_state_dict()``): the resumed run draws a fresh, reproducible stream
rather than replaying the samples seen before the checkpoint.

Bad shards. A shard that cannot be opened, is truncated or corrupted, or holds fewer samples
than index.json lists, and a sample that does not decode, is logged (with the shard and the
reason) and counted in ``stream.stats`` (per process), then skipped; ``strict=True`` raises
:class:`ShardError` instead. So is a sample that decodes to NaN/Inf voxels (a corrupted payload).
If every shard fails (shard errors, or nothing but bad samples) without one good sample in
between, the stream raises rather than spin; one shard full of bad samples is only skipped.

HTTP. ``http(s)://`` shards are read by curl, with webdataset's command, plus a stall timeout: when
no byte arrives for ``HTTP_STALL_SECONDS`` (env ``MIXPRETRAIN_HTTP_STALL_S``), curl is killed and
the shard is a bad shard like any other (webdataset's curl has no transfer timeout: a server that
stalls mid-transfer would hang the stream forever).
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import random
import re
import select
import subprocess
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import IterableDataset

from mixpretrain.data.shards import (
    INDEX_NAME,
    SPLITS,
    ShardError,
    decode_sample,
    index_location,
    is_url,
    load_index,
    local_shards_dir,
    shard_location,
)

log = logging.getLogger(__name__)

Sample = dict[str, Any]


def derive_seed(*parts: int | str) -> int:
    """A stable 63-bit seed from any tuple (Python's ``hash`` is salted per process)."""
    return int.from_bytes(hashlib.sha256("/".join(map(str, parts)).encode()).digest()[:8], "little") >> 1


def _as_crop_size(crop_size: int | Sequence[int]) -> tuple[int, int, int]:
    size = (int(crop_size),) * 3 if isinstance(crop_size, int | np.integer) else tuple(int(c) for c in crop_size)
    if len(size) != 3 or min(size) < 1:
        raise ValueError(f"crop_size must be one positive int or three, got {crop_size!r}")
    return size  # type: ignore[return-value]


# ----------------------------------------------------------------------------- sources


def _from_index(source: str | Path, domain: str, split: str) -> tuple[list[str], dict[str, int]]:
    """Shard URLs of a shards dir (local or http(s)) and their sample counts, from one read of its index."""
    if split not in SPLITS:
        raise ValueError(f"split {split!r} is not one of {SPLITS}")
    index = load_index(source)
    if domain not in index["domains"]:
        raise ValueError(f"domain {domain!r} not in {index_location(source)}; domains: {sorted(index['domains'])}")
    shards = sorted((s for s in index["domains"][domain]["shards"] if s["split"] == split), key=lambda s: s["file"])
    urls = [shard_location(source, s["file"]) for s in shards]
    return urls, {u: int(s["samples"]) for u, s in zip(urls, shards, strict=True)}


def resolve_source(source: str | Path | Sequence[str], domain: str, split: str) -> tuple[list[str], dict[str, int]]:
    """Shard URLs for one domain and split, and the sample count of each shard where known.

    ``source``: a shards dir (local, read via index.json), an http(s) URL of a shards dir or of its
    index.json (any http(s) URL that is not a ``.tar`` or a pattern), one URL / path / brace pattern (``a-{000000..000003}.tar``, ``::``-separated), or
    a list of URLs (local paths, ``http(s)://``, ``pipe:`` commands) taken as given. A ``file:`` URL
    of a shards dir is that dir (a ``file:`` URL of a shard is left to webdataset, which reads it).
    """
    if isinstance(source, str) and source.startswith("file:") and Path(local := local_shards_dir(source)).is_dir():
        source = local
    if isinstance(source, str | Path) and Path(source).is_dir():
        if not (Path(source) / INDEX_NAME).is_file():
            raise ValueError(f"{source} is a directory without {INDEX_NAME}; pass a shards dir or a list of shard URLs")
        return _from_index(source, domain, split)
    if is_url(source) and (
        source.endswith(("/", INDEX_NAME)) or not (source.endswith(".tar") or "{" in source or "::" in source)
    ):  # a shards dir over http: anything that is not a shard URL or pattern
        return _from_index(source, domain, split)
    if isinstance(source, str | Path):
        from webdataset.shardlists import expand_urls

        return expand_urls(str(source)), {}
    if not all(isinstance(u, str | Path) for u in source):
        raise ValueError(f"source list must hold URL or path strings, got {source!r}")
    return [str(u) for u in source], {}


# ----------------------------------------------------------------------------- http


HTTP_STALL_SECONDS = 60.0  # no byte for this long from an http(s) shard: give it up (a counted bad shard)
STALL_ENV = "MIXPRETRAIN_HTTP_STALL_S"  # overrides HTTP_STALL_SECONDS (read at each shard open)
# webdataset's own command (webdataset/gopen.py gopen_curl), plus -S so a failure says why. Its
# --retry covers connection failures and 5xx/429 answers, before any byte is written; a transfer
# that dies mid-way (error 18/56) is not retried. curl's own --speed-time/--max-time would be
# retried too, and a retry appends a second copy of the bytes already sent to the stream: so the
# stall timeout is ours (`_CurlStream`), not curl's.
CURL = ("curl", "--connect-timeout", "30", "--retry", "30", "--retry-delay", "2", "-f", "-s", "-S", "-L")


def _stall_seconds() -> float:
    value = os.environ.get(STALL_ENV, "").strip()
    try:
        stall = float(value) if value else HTTP_STALL_SECONDS
    except ValueError:
        raise ValueError(f"{STALL_ENV}={value!r} is not a number of seconds") from None
    if not stall > 0:
        raise ValueError(f"{STALL_ENV} must be > 0 seconds, got {value!r}")
    return stall


class _CurlStream(io.RawIOBase):
    """An http(s) shard read through curl, given up when no byte arrives for ``stall`` seconds.

    Each read waits (poll) at most ``stall`` seconds for curl to write; on a stall curl is killed
    and the read raises ``OSError`` naming the URL. At the end of the transfer a non-zero curl exit
    (404, refused, cut mid-way, ...) raises ``OSError`` with curl's own message.
    """

    def __init__(self, url: str, stall: float) -> None:
        super().__init__()
        self.name, self.stall = url, stall  # name: webdataset's messages show it
        self._proc = subprocess.Popen([*CURL, url], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self._fd = self._proc.stdout.fileno()  # type: ignore[union-attr]
        self._poll = select.poll()  # not select.select: it fails for fd numbers over 1023
        self._poll.register(self._fd, select.POLLIN | select.POLLPRI | select.POLLHUP | select.POLLERR)
        self._ended = False

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        if self._ended:
            return 0
        if not self._poll.poll(self.stall * 1000):  # nothing to read (not even EOF) for `stall` seconds
            self._end(kill=True)
            raise OSError(f"{self.name}: no data for {self.stall:g} s (server or network stalled); transfer abandoned")
        n = os.readv(self._fd, [buffer])
        if n == 0:
            code, err = self._end()
            if code != 0:
                raise OSError(f"{self.name}: curl exit {code}" + (f" ({err})" if err else ""))
        return n

    def _end(self, kill: bool = False) -> tuple[int, str]:
        self._ended = True
        if kill and self._proc.poll() is None:
            self._proc.kill()
        try:
            code = self._proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            code = self._proc.wait()
        err = self._proc.stderr.read().decode(errors="replace").strip() if self._proc.stderr else ""
        return code, re.sub(r"^curl: \(\d+\) ", "", err)  # "curl: (18) transfer closed ..." -> "transfer closed ..."

    def close(self) -> None:
        if not self.closed:
            if not self._ended:
                self._end(kill=True)  # read only part of it (tar end reached, or the pipeline dropped it)
            for pipe in (self._proc.stdout, self._proc.stderr):
                if pipe is not None:
                    pipe.close()
        super().close()


def open_shard(url: str) -> Any:
    """A readable binary stream of one shard: http(s) through curl with a stall timeout
    (:class:`_CurlStream`), anything else (path, ``file:``, ``pipe:``) by webdataset's ``gopen``."""
    if is_url(url):
        return io.BufferedReader(_CurlStream(url, _stall_seconds()), buffer_size=1 << 20)
    from webdataset.gopen import gopen

    return gopen(url)


# ----------------------------------------------------------------------------- crops


def crop_starts(shape: Sequence[int], crop: Sequence[int], rng: np.random.Generator) -> list[int]:
    """Uniform random start per axis; 0 where the volume is smaller than the crop (padded)."""
    return [int(rng.integers(0, s - c + 1)) if s > c else 0 for s, c in zip(shape, crop, strict=True)]


def extract_crop(volume: np.ndarray, start: Sequence[int], crop: Sequence[int], pad_value: float) -> torch.Tensor:
    """float32 tensor crop of ``volume`` at ``start``; axes shorter than the crop are padded symmetrically.

    The float16 -> float32 conversion is done by torch into a fresh contiguous tensor: ~4x faster
    than numpy's ``astype`` on a strided float16 view, and never shares the (read-only) decoded
    buffer with the caller.
    """
    region = volume[tuple(slice(s, s + c) for s, c in zip(start, crop, strict=True))]
    with warnings.catch_warnings():  # read-only view: torch warns, but we only ever read it
        warnings.simplefilter("ignore", UserWarning)
        src = torch.from_numpy(region)
    if region.shape == tuple(crop):
        return src.to(torch.float32, memory_format=torch.contiguous_format, copy=True)
    out = torch.full(tuple(crop), float(pad_value), dtype=torch.float32)
    inner = tuple(slice((c - n) // 2, (c - n) // 2 + n) for n, c in zip(region.shape, crop, strict=True))
    out[inner] = src
    return out


def _background(volume: np.ndarray, meta: dict) -> float:
    """Padding value: the volume's minimum (air / background after normalisation).

    Taken from the ``value_range`` ingest records when present; numpy's float16 min is slow.
    """
    value_range = meta.get("value_range")
    if isinstance(value_range, list | tuple) and len(value_range) == 2:
        return float(value_range[0])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return float(torch.from_numpy(volume).min())


# ----------------------------------------------------------------------------- the stream


class DomainStream(IterableDataset):
    """Iterable of random crops from one domain; see the module docstring for modes and seeding.

    Args:
        source: shards dir, http(s) shards dir / index.json URL, URL pattern, or list of URLs.
        domain: domain name (as in index.json); also the ``domain`` of every item.
        split: "train" or "val" (which shards of a shards dir to read).
        crop_size: one int (cube) or (D, H, W).
        crops_per_volume: k random crops per decoded volume.
        seed, epoch: RNG seeds; a new ``epoch`` (or resume count) gives a new, reproducible stream.
        resampled: infinite resampled mode; None: True for "train", False otherwise.
        strict: raise on a bad shard or sample instead of a logged, counted skip.
        shuffle_buffer: raw (still compressed) samples held for shuffling; 0/1 disables.
        crop_shuffle: crops held for shuffling, so a batch does not hold k crops of one volume;
            None: 2 x crops_per_volume in resampled mode, 0 in finite mode.
        rank, world_size: override the node topology (default: RANK/WORLD_SIZE env vars or
            torch.distributed, as webdataset reads them).
        split_by: finite mode: "shard", "sample" or "auto" (shard if enough shards, else sample).
        pad_value: value for padding small volumes; None: the volume's minimum (its background).
    """

    def __init__(
        self,
        source: str | Path | Sequence[str],
        domain: str,
        split: str = "train",
        crop_size: int | Sequence[int] = (96, 96, 96),
        crops_per_volume: int = 1,
        seed: int = 0,
        resampled: bool | None = None,
        strict: bool = False,
        *,
        epoch: int = 0,
        shuffle_buffer: int = 16,
        crop_shuffle: int | None = None,
        rank: int | None = None,
        world_size: int | None = None,
        split_by: str = "auto",
        pad_value: float | None = None,
    ) -> None:
        super().__init__()
        if crops_per_volume < 1:
            raise ValueError(f"crops_per_volume must be >= 1, got {crops_per_volume}")
        if split_by not in ("auto", "shard", "sample"):
            raise ValueError(f"split_by must be auto, shard or sample, got {split_by!r}")
        if (rank is None) != (world_size is None) or (world_size is not None and not 0 <= rank < world_size):
            raise ValueError(f"rank and world_size go together with 0 <= rank < world_size, got {rank}, {world_size}")
        self.source, self.domain, self.split = source, domain, split
        self.crop_size = _as_crop_size(crop_size)
        self.crops_per_volume = int(crops_per_volume)
        self.seed, self.epoch = int(seed), int(epoch)
        self.resampled = (split == "train") if resampled is None else bool(resampled)
        self.strict = strict
        self.shuffle_buffer = int(shuffle_buffer)
        self.crop_shuffle = (2 * self.crops_per_volume if self.resampled else 0) if crop_shuffle is None else int(crop_shuffle)
        self.rank, self.world_size, self.split_by = rank, world_size, split_by
        self.pad_value = pad_value
        # Resolved eagerly so a bad source fails in the main process, with its name.
        self.urls, self.expected = resolve_source(source, domain, split)
        if not self.urls:
            raise ValueError(f"no {split} shards for domain {domain!r} in {source}")
        self.stats = {"volumes": 0, "crops": 0, "bad_shards": 0, "bad_samples": 0}
        self.errors: list[str] = []  # the reasons behind the counts (last 100)

    # -- resume ------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"domain": self.domain, "seed": self.seed, "epoch": self.epoch}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.seed, self.epoch = int(state["seed"]), int(state["epoch"])

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def num_samples(self) -> int | None:
        """Items one finite epoch yields across all ranks and workers (None when unknown)."""
        if self.resampled or set(self.expected) != set(self.urls):
            return None
        return sum(self.expected.values()) * self.crops_per_volume

    # -- topology ------------------------------------------------------------------------------
    def topology(self) -> tuple[int, int, int, int]:
        """(rank, world_size, worker, num_workers), read where the stream is iterated."""
        from webdataset.utils import pytorch_worker_info

        rank, world, worker, workers = pytorch_worker_info()
        if self.world_size is not None:
            rank, world = self.rank, self.world_size
        return int(rank), int(world), int(worker), int(workers)

    # -- errors ----------------------------------------------------------------------------------
    def _failure(self, kind: str, where: str, reason: str, shard: str) -> None:
        self.stats[kind] += 1
        msg = f"domain {self.domain!r}: skipped {'shard' if kind == 'bad_shards' else 'sample'} {where}: {reason}"
        self.errors = (self.errors + [msg])[-100:]
        if self.strict:
            raise ShardError(msg.replace("skipped", "bad", 1) + " (strict=True)")
        log.warning("%s (skipped so far: %d shards, %d samples)", msg, self.stats["bad_shards"], self.stats["bad_samples"])
        self._no_progress(shard, msg, sample=kind == "bad_samples")

    def _no_progress(self, shard: str, last: str, *, sample: bool = False) -> None:
        """Note a failure in ``shard`` (of a sample, or of the shard itself) with no good sample since
        the last one; raise once every shard has failed since then.

        Resampled mode would otherwise redraw broken shards forever without yielding anything. The
        test is on distinct shards, not on failures in a row, so a shard holding many bad samples is
        skipped while the other shards still yield. A shard fails by a shard error (unreadable,
        truncated, ...) or when as many of its samples as it holds (as read at its end, else as
        index.json lists) failed in a row. Failures that name no known shard fall back to a count
        (``2 x shards + 8`` in a row).
        """
        self._consecutive_failures += 1
        if shard not in self._url_set:
            self._unattributed += 1
        elif not sample:
            self._failing.add(shard)
        else:
            bad = self._bad_in_row[shard] = self._bad_in_row.get(shard, 0) + 1
            size = self._sizes.get(shard, self.expected.get(shard))
            if size is not None and bad >= size:
                self._failing.add(shard)
        if len(self._failing) >= len(self._url_set):
            raise ShardError(
                f"domain {self.domain!r}: every one of its {len(self._url_set)} shard(s) failed without one good "
                f"sample in between ({self._consecutive_failures} failures in a row); last: {last}"
            )
        if self._unattributed > 2 * len(self._url_set) + 8:
            raise ShardError(f"domain {self.domain!r}: {self._consecutive_failures} failures in a row without one "
                             f"good sample; last: {last}")

    def _progress(self) -> None:
        """A good sample: failures so far no longer count towards the every-shard-fails guard."""
        self._consecutive_failures = self._unattributed = 0
        self._failing.clear()
        self._bad_in_row.clear()

    def _url_of(self, exn: BaseException) -> str:
        for arg in reversed(exn.args):
            if isinstance(arg, str) and arg in self._url_set:
                return arg
        text = " ".join(map(str, exn.args))
        return next((u for u in self.urls if u in text), "<unknown shard>")

    def _on_shard_error(self, exn: Exception) -> bool:
        """webdataset handler: log, count, skip (True = carry on) or raise when strict."""
        if self.strict and isinstance(exn, ShardError):
            exn.args = exn.args[:1]  # webdataset appends (stream, url) on its way up: keep our message
            raise exn  # ours, raised by an inner handler: outer webdataset levels must not swallow it
        url = self._url_of(exn)
        if url in self._failed_now:  # one broken shard raises at several levels (or is redrawn): log it once
            self._no_progress(url, f"{url} again")
            return True
        self._failed_now.add(url)
        # OSError's first arg is its errno (e.g. "FileNotFoundError: 2"): its str names the reason and file.
        first = str(exn.args[0]) if exn.args and isinstance(exn.args[0], str) else (str(exn) or type(exn).__name__)
        first = re.sub(r" @ <[^<>]*>$", "", first)  # webdataset's " @ <_io.BufferedReader name=...>": the URL is named
        self._failure("bad_shards", url, f"{type(exn).__name__}: {first}", url)
        return True

    # -- stages ----------------------------------------------------------------------------------
    def _shards(self, rank: int, world: int, worker: int, workers: int) -> tuple[Any, Callable | None]:
        """Shard URL source and, for finite sample-level splitting, the sample filter."""
        import webdataset as wds

        if self.resampled:
            seed = derive_seed("shards", self.seed, self.epoch, rank, worker, self.domain)
            return wds.ResampledShards(self.urls, seed=seed, worker_seed=lambda: 0, deterministic=True), None
        urls = list(self.urls)
        if self.split == "train" and self.shuffle_buffer > 1:
            # Same order on every rank and worker (seed has no rank in it), so the split below
            # stays a partition of the shards.
            random.Random(derive_seed("order", self.seed, self.epoch, self.domain)).shuffle(urls)
        slots, slot = world * workers, rank * workers + worker
        if self.split_by == "shard" or (self.split_by == "auto" and len(urls) >= slots):
            # Same dealing as wds.split_by_node followed by wds.split_by_worker.
            mine = list(islice(islice(urls, rank, None, world), worker, None, workers))
            # A slot without shards gets an empty source: it yields nothing and ends.
            return lambda: iter([{"url": u} for u in mine]), None
        return lambda: iter([{"url": u} for u in urls]), lambda samples: islice(samples, slot, None, slots)

    def _checked_files(self, files: Iterator[dict]) -> Iterator[dict]:
        """Pass tar members through; at each shard's end compare its sample count with the index.

        A tar cut at a member boundary reads as a clean, shorter archive: only the count shows it.
        """
        keys: set[str] = set()
        url = None
        for f in files:
            if f == {}:  # webdataset's end-of-shard marker
                if url is not None:
                    self._sizes[url] = len(keys)  # before its last sample is decoded: group_by_keys yields it after this
                want = self.expected.get(url or "")
                if url is not None and want is not None and len(keys) < want and url not in self._failed_now:
                    self._failed_now.add(url)
                    self._failure("bad_shards", url, f"truncated: {len(keys)} of {want} samples listed in {INDEX_NAME}", url)
                keys, url = set(), None
            else:
                if f.get("__url__", url) != url:  # a shard that failed mid-way sent no end marker
                    keys, url = set(), f.get("__url__")
                keys.add(f["fname"].split("/")[-1].split(".", 1)[0])
            yield f

    def _open(self, src: Iterable[dict]) -> Iterator[dict]:
        """webdataset's ``url_opener``, with :func:`open_shard` (a stall timeout for http(s))."""
        for item in src:
            url = item["url"]
            try:
                stream = open_shard(url)
            except Exception as exn:  # noqa: BLE001 - the handler logs and counts it, or raises when strict
                exn.args = (*exn.args, url)
                if self._on_shard_error(exn):
                    continue
                break
            yield {**item, "stream": stream}

    def _samples(self, src: Iterable[dict]) -> Iterator[Sample]:
        from webdataset.tariterators import group_by_keys, tar_file_expander

        files = tar_file_expander(self._open(src), handler=self._on_shard_error)
        return group_by_keys(self._checked_files(files), handler=self._on_shard_error)

    def _crops(self, samples: Iterable[Sample], rank: int, worker: int) -> Iterator[Sample]:
        worker_rng = np.random.default_rng(derive_seed("crops", self.seed, self.epoch, rank, worker, self.domain))
        for sample in samples:
            shard = str(sample.get("__url__", "?"))
            where = f"{sample.get('__key__', '?')!r} in {shard}"
            try:
                volume, meta = decode_sample(sample)  # ShardError also for NaN/Inf voxels
            except ShardError as exc:
                self._failure("bad_samples", where, str(exc), shard)
                continue
            if volume.ndim != 3 or volume.size == 0:
                self._failure("bad_samples", where, f"volume shape {volume.shape} is not a non-empty 3-D array", shard)
                continue
            self._progress()
            self.stats["volumes"] += 1
            key = str(sample["__key__"])
            # Finite mode: crops depend on the sample only, not on which rank/worker reads it.
            rng = worker_rng if self.resampled else np.random.default_rng(derive_seed("crop", self.seed, self.epoch, self.domain, key))
            pad = self.pad_value
            if pad is None and any(s < c for s, c in zip(volume.shape, self.crop_size, strict=True)):
                pad = _background(volume, meta)
            for _ in range(self.crops_per_volume):
                crop = extract_crop(volume, crop_starts(volume.shape, self.crop_size, rng), self.crop_size, pad or 0.0)
                self.stats["crops"] += 1
                yield {"image": crop[None], "domain": self.domain, "key": key}
        if self.stats["bad_shards"] or self.stats["bad_samples"]:  # finite pass over: one summary line
            log.warning("domain %r (rank %d, worker %d): pass ended with %d volumes read, %d shards and %d samples skipped",
                        self.domain, rank, worker, self.stats["volumes"], self.stats["bad_shards"], self.stats["bad_samples"])

    def __iter__(self) -> Iterator[Sample]:
        import webdataset as wds

        rank, world, worker, workers = self.topology()
        self._url_set = set(self.urls)
        self._failed_now: set[str] = set()
        self._failing: set[str] = set()  # shards failed since the last good sample
        self._bad_in_row: dict[str, int] = {}  # bad samples per shard since the last good sample
        self._sizes: dict[str, int] = {}  # samples per shard, as read to its end
        self._consecutive_failures = self._unattributed = 0
        shards, keep = self._shards(rank, world, worker, workers)
        stages: list[Any] = [shards, self._samples]
        if keep is not None:
            stages.append(keep)
        if self.shuffle_buffer > 1:
            rng = random.Random(derive_seed("samples", self.seed, self.epoch, rank, worker, self.domain))
            # Start yielding at a quarter full: the first sample needs 4 reads, not 16.
            stages.append(wds.shuffle(self.shuffle_buffer, initial=max(2, self.shuffle_buffer // 4), rng=rng))
        stages.append(lambda samples: self._crops(samples, rank, worker))
        if self.crop_shuffle > 1:
            rng = random.Random(derive_seed("crop-order", self.seed, self.epoch, rank, worker, self.domain))
            stages.append(wds.shuffle(self.crop_shuffle, initial=self.crop_shuffle, rng=rng))
        return iter(wds.DataPipeline(*stages))

    def __repr__(self) -> str:
        mode = "resampled" if self.resampled else "finite"
        return (f"DomainStream({self.domain!r}, split={self.split!r}, {len(self.urls)} shards, {mode}, "
                f"crop={self.crop_size}, k={self.crops_per_volume}, seed={self.seed}, epoch={self.epoch})")
