"""WebDataset shards of preprocessed 3-D volumes, and the ``index.json`` that describes them.

Layout (see ``docs/contracts.md`` and ``docs/data.md``)::

    SHARDS_DIR/index.json
    SHARDS_DIR/<domain>/<split>-NNNNNN.tar        split: train | val

Each sample in a tar holds two entries with the same ``__key__`` (the case id):

* ``<key>.vol.<ext>``  the volume bytes: C-order raw array bytes, compressed by the codec whose
  file extension is ``<ext>`` (``b2`` blosc2 LZ4HC with byte shuffle, ``zst`` zstd, ``bin``
  uncompressed).
* ``<key>.meta.json``  modality, domain, case id, shape, dtype, codec, spacing, orientation and
  the preprocessing that was applied.

Decoding fills a numpy array from the decompressed bytes (``np.frombuffer`` or blosc2 straight
into the array): no pickle is ever loaded, and no ``np.load`` of object arrays. The default
(float16 + blosc2 LZ4HC/shuffle level 5) was chosen by measurement, see ``benchmarks/RESULTS.md``
("shard codec"): about 5x faster to decode than zstd level 3, and smaller.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import re
import tarfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
INDEX_NAME = "index.json"
SPLITS = ("train", "val")
MODALITIES = ("ct", "mri", "pet")

# Codec name -> tar entry extension. The extension makes every sample self-describing, so a
# reader never needs to know which codec a writer chose.
CODEC_EXT = {"zstd": "vol.zst", "raw": "vol.bin", "blosc2": "vol.b2"}
EXT_CODEC = {v: k for k, v in CODEC_EXT.items()}
DEFAULT_CODEC = "blosc2"  # LZ4HC + byte shuffle; see benchmarks/RESULTS.md "shard codec"
DEFAULT_DTYPE = "float16"
DEFAULT_LEVEL = {"blosc2": 5, "zstd": 3}
STORE_DTYPES = ("float16", "float32")

# A key becomes a tar member name "<key>.<ext>"; WebDataset splits keys from extensions at the
# first dot of the basename, so keys may not contain dots or slashes.
_KEY_RE = re.compile(r"^[A-Za-z0-9_\-]+$")
_SHARD_RE = re.compile(r"^(train|val)-(\d{6})\.tar$")


class ShardError(ValueError):
    """A shard or sample is corrupted, truncated or not in this format; the message names it."""


def safe_key(text: str) -> str:
    """Turn a file stem or case id into a valid sample key (letters, digits, ``_`` and ``-``)."""
    key = re.sub(r"[^A-Za-z0-9_\-]+", "_", text).strip("_")
    if not key:
        raise ValueError(f"cannot make a sample key from {text!r}")
    return key


def check_name(kind: str, name: str) -> str:
    """Domains and keys become path parts and tar member names: refuse anything else."""
    if not _KEY_RE.match(name):
        raise ValueError(f"{kind} {name!r} may contain only letters, digits, '_' and '-'")
    return name


# ---------------------------------------------------------------------------------------------
# codec


_tls = threading.local()  # zstd (de)compressor objects are not safe to share between threads


def _zstd_decompressor():
    dctx = getattr(_tls, "dctx", None)
    if dctx is None:
        import zstandard

        dctx = _tls.dctx = zstandard.ZstdDecompressor()
    return dctx


def _zstd_compressor(level: int):
    cache = getattr(_tls, "cctx", None)
    if cache is None:
        cache = _tls.cctx = {}
    if level not in cache:
        import zstandard

        cache[level] = zstandard.ZstdCompressor(level=level)
    return cache[level]


def _blosc2():
    logging.getLogger("numexpr").setLevel(logging.WARNING)  # blosc2 imports numexpr, which logs at INFO
    import blosc2

    if not getattr(_blosc2, "configured", False):
        # One thread per process: DataLoader workers already use every core; blosc2's default
        # (all cores per call) would oversubscribe them. BLOSC_NTHREADS overrides.
        blosc2.set_nthreads(int(os.environ.get("BLOSC_NTHREADS", "1")))
        _blosc2.configured = True
    return blosc2


def encode_volume(volume: np.ndarray, codec: str = DEFAULT_CODEC, level: int | None = None) -> bytes:
    """Raw C-order bytes of ``volume``, compressed with ``codec`` (level None: the codec's default)."""
    level = DEFAULT_LEVEL[codec] if level is None and codec in DEFAULT_LEVEL else level
    raw = np.ascontiguousarray(volume).tobytes()
    if codec == "blosc2":
        if len(raw) >= 2**31 - 64:
            raise ValueError(f"volume of {len(raw)} bytes is too large for one blosc2 chunk (2 GiB)")
        b2 = _blosc2()
        return b2.compress(raw, typesize=volume.dtype.itemsize, clevel=level, filter=b2.Filter.SHUFFLE,
                           codec=b2.Codec.LZ4HC)
    if codec == "zstd":
        return _zstd_compressor(level).compress(raw)
    if codec == "raw":
        return raw
    raise ValueError(f"unknown codec {codec!r}; expected one of {sorted(CODEC_EXT)}")


def decode_volume(data: bytes, codec: str, shape: tuple[int, ...], dtype: str) -> np.ndarray:
    """Inverse of :func:`encode_volume`; raises :class:`ShardError` when the bytes do not fit."""
    dt = np.dtype(dtype)
    expected = int(np.prod(shape)) * dt.itemsize
    if codec == "blosc2":
        b2 = _blosc2()
        try:
            nbytes = b2.get_cbuffer_sizes(data)[0]
        except Exception as exc:  # blosc2 raises bare RuntimeError/ValueError
            raise ShardError(f"blosc2 payload is corrupted or truncated ({exc})") from exc
        if nbytes != expected:
            raise ShardError(f"volume has {nbytes} bytes, expected {expected} for shape {list(shape)} {dtype}")
        out = np.empty(shape, dtype=dt)  # decompress straight into a writable array: no extra copy
        try:
            b2.decompress(data, dst=out)
        except Exception as exc:
            raise ShardError(f"blosc2 payload is corrupted or truncated ({exc})") from exc
        return out
    if codec == "zstd":
        import zstandard

        try:
            raw = _zstd_decompressor().decompress(data)
        except zstandard.ZstdError as exc:
            raise ShardError(f"zstd payload is corrupted or truncated ({exc})") from exc
    elif codec == "raw":
        raw = data
    else:
        raise ShardError(f"unknown codec {codec!r}")
    if len(raw) != expected:
        raise ShardError(f"volume has {len(raw)} bytes, expected {expected} for shape {list(shape)} {dtype}")
    return np.frombuffer(raw, dtype=dt).reshape(shape)


def _as_bytes(value: Any) -> bytes:
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value) if not isinstance(value, bytes) else value
    if isinstance(value, str):
        return value.encode()
    raise ShardError(f"sample entry of type {type(value).__name__} is not bytes (decoded by a WebDataset decoder?)")


def decode_sample(sample: dict[str, Any]) -> tuple[np.ndarray, dict]:
    """Decode a raw WebDataset sample ``{"__key__", "meta.json": bytes, "vol.<ext>": bytes}``.

    Returns ``(volume, meta)``: the volume in its stored dtype (float16 by default), shape
    ``meta["shape"]`` (crop first, then ``.astype(np.float32)``: the fastest order). With the
    blosc2 codec the array is writable; with zstd/raw it is a read-only view of the bytes.
    Raises :class:`ShardError` naming the sample (and its shard, when WebDataset gave
    ``__url__``) when an entry is missing, corrupted or does not match its metadata.
    """
    where = f"sample {sample.get('__key__', '?')!r}" + (f" in {sample['__url__']}" if "__url__" in sample else "")
    try:
        meta = json.loads(_as_bytes(sample["meta.json"]))
    except KeyError:
        raise ShardError(f"{where}: no meta.json entry (entries: {sorted(sample)})") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ShardError(f"{where}: meta.json is not valid JSON ({exc})") from exc
    ext = next((k for k in sample if k in EXT_CODEC), None)
    if ext is None:
        raise ShardError(f"{where}: no volume entry (one of {sorted(EXT_CODEC)}); entries: {sorted(sample)}")
    try:
        volume = decode_volume(_as_bytes(sample[ext]), EXT_CODEC[ext], tuple(meta["shape"]), meta["dtype"])
    except KeyError as exc:
        raise ShardError(f"{where}: meta.json lacks {exc}") from None
    except ShardError as exc:
        raise ShardError(f"{where}: {exc}") from None
    if not _all_finite(volume):  # the writer refuses NaN/Inf: these come from a corrupted payload
        bad = int(volume.size - np.count_nonzero(np.isfinite(volume)))
        raise ShardError(f"{where}: {bad} NaN/Inf voxel(s) after decoding: corrupted payload")
    return volume, meta


def _all_finite(volume: np.ndarray, chunk: int = 1 << 20) -> bool:
    """No NaN/Inf voxel. Cheap next to decoding: float16 by an integer test of the exponent bits (~6x
    faster than ``np.isfinite``), in 1 M-voxel chunks (no volume-sized temporary). Measured on one core:
    256x256x200 float16 ~1.6 ms against ~7 ms (blosc2) / ~26 ms (zstd) to decode; see docs/data.md."""
    flat = volume.reshape(-1)
    half = flat.dtype == np.float16
    bits = flat.view(np.uint16) if half else flat
    buf = np.empty(min(chunk, flat.size), np.uint16 if half else bool)
    for start in range(0, flat.size, chunk):
        part, out = bits[start : start + chunk], buf[: min(chunk, flat.size - start)]
        if half:  # exponent all ones <=> |bits| >= 0x7C00
            if np.bitwise_and(part, 0x7FFF, out=out).max() >= 0x7C00:
                return False
        elif not np.isfinite(part, out=out).all():
            return False
    return True


# ---------------------------------------------------------------------------------------------
# writer


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _shard_numbers(domain_dir: Path, split: str) -> list[int]:
    if not domain_dir.is_dir():
        return []
    nums = []
    for p in domain_dir.iterdir():
        m = _SHARD_RE.match(p.name)
        if m and m.group(1) == split:
            nums.append(int(m.group(2)))
    return sorted(nums)


class ShardWriter:
    """Write samples of one domain and split into ``<out_dir>/<domain>/<split>-NNNNNN.tar``.

    Each shard is written as ``.<name>.tmp`` and renamed when complete, so a crash never leaves a
    truncated shard under a final name (temp files a killed run left are removed on open: one
    writer per domain and split at a time). Without ``overwrite`` numbering continues after the
    highest existing shard of this split (nothing is replaced); with ``overwrite`` numbering
    starts at 0 and, on :meth:`close`, shards of this split left from earlier runs are removed.

    ``maxcount`` / ``maxsize`` (bytes) bound each shard; ``dtype`` and ``codec`` set the storage.
    """

    def __init__(
        self,
        out_dir: str | Path,
        domain: str,
        modality: str,
        split: str,
        *,
        maxcount: int = 64,
        maxsize: int = 1 << 30,
        overwrite: bool = False,
        dtype: str = DEFAULT_DTYPE,
        codec: str = DEFAULT_CODEC,
        level: int | None = None,
    ) -> None:
        if split not in SPLITS:
            raise ValueError(f"split {split!r} is not one of {SPLITS}")
        if modality not in MODALITIES:
            raise ValueError(f"modality {modality!r} is not one of {MODALITIES}")
        if dtype not in STORE_DTYPES:
            raise ValueError(f"dtype {dtype!r} is not one of {STORE_DTYPES}")
        if codec not in CODEC_EXT:
            raise ValueError(f"codec {codec!r} is not one of {sorted(CODEC_EXT)}")
        if maxcount < 1 or maxsize < 1:
            raise ValueError(f"maxcount and maxsize must be positive, got {maxcount}, {maxsize}")
        self.out_dir = Path(out_dir)
        self.domain = check_name("domain", domain)
        self.modality, self.split = modality, split
        self.maxcount, self.maxsize, self.overwrite = maxcount, maxsize, overwrite
        self.dtype, self.codec, self.level = dtype, codec, level
        self.domain_dir = self.out_dir / domain
        self.domain_dir.mkdir(parents=True, exist_ok=True)
        existing = _shard_numbers(self.domain_dir, split)
        self._next = 0 if overwrite or not existing else existing[-1] + 1
        # Temp shards of this split can only be leftovers of a killed run (one writer per
        # domain and split at a time): they were never renamed, so nothing references them.
        for stale in self.domain_dir.glob(f".{split}-*.tar.tmp"):
            log.info("removing %s left by an interrupted run", stale)
            stale.unlink(missing_ok=True)
        self._written: list[dict] = []
        self._popped = 0
        self._tar: Any = None
        self._keys: set[str] = set()

    # -- one shard -----------------------------------------------------------------------------
    def _open(self) -> None:
        import webdataset as wds

        self._name = f"{self.split}-{self._next:06d}.tar"
        self._next += 1
        self._tmp = self.domain_dir / f".{self._name}.tmp"
        self._stream = open(self._tmp, "wb")  # noqa: SIM115 - closed in _finish
        self._tar = wds.TarWriter(self._stream, encoder=False, mtime=0.0)
        self._count, self._bytes, self._shard_keys = 0, 0, []

    def _finish(self) -> None:
        if self._tar is None:
            return
        self._tar.close()
        self._stream.close()
        final = self.domain_dir / self._name
        # The record first, the rename last: a Ctrl-C between the two must not leave a complete shard
        # on disk that no record knows of (ingest indexes the records of an interrupted run; with the
        # rename first, an interrupt during the checksum left an unindexed shard and no index.json).
        self._written.append(
            {
                "file": f"{self.domain}/{self._name}",
                "split": self.split,
                "samples": self._count,
                "bytes": self._tmp.stat().st_size,
                "sha256": _sha256(self._tmp),
                "keys": self._shard_keys,
            }
        )
        os.replace(self._tmp, final)  # atomic: a reader sees a complete shard or none
        log.debug("wrote %s (%d samples)", final, self._count)
        self._tar = None

    # -- public --------------------------------------------------------------------------------
    def write(self, key: str, volume: np.ndarray, meta: dict) -> None:
        """Add one volume (D x H x W, float, already preprocessed and in RAS) with its metadata."""
        check_name("sample key", key)
        if key in self._keys:
            raise ValueError(f"sample key {key!r} written twice to domain {self.domain!r}")
        volume = np.asarray(volume)
        if volume.ndim != 3:
            raise ValueError(f"sample {key!r}: volume must be 3-D, got shape {volume.shape}")
        if volume.dtype.kind != "f":
            raise ValueError(f"sample {key!r}: volume must be float16/float32, got {volume.dtype}")
        if not np.isfinite(volume).all():
            raise ValueError(f"sample {key!r}: volume has NaN/Inf voxels")
        with np.errstate(over="ignore"):  # overflow is reported below, naming the sample
            stored = volume.astype(self.dtype, copy=False)
        if not np.isfinite(stored).all():
            raise ValueError(f"sample {key!r}: values overflow {self.dtype} (max |v| {np.abs(volume).max():.4g})")
        payload = encode_volume(stored, self.codec, self.level)
        full_meta = {
            **meta,
            "key": key,
            "domain": self.domain,
            "modality": self.modality,
            "split": self.split,
            "shape": list(stored.shape),
            "dtype": self.dtype,
            "codec": self.codec,
            "format_version": FORMAT_VERSION,
        }
        meta_bytes = json.dumps(full_meta, sort_keys=True).encode()
        if self._tar is not None and (
            self._count >= self.maxcount or self._bytes + len(payload) > self.maxsize
        ):
            self._finish()
        if self._tar is None:
            self._open()
        self._tar.write({"__key__": key, CODEC_EXT[self.codec]: payload, "meta.json": meta_bytes})
        self._count += 1
        self._bytes += len(payload) + len(meta_bytes) + 1024
        self._shard_keys.append(key)
        self._keys.add(key)

    def pop_finished(self) -> list[dict]:
        """Shards finalised since the last call (for recording progress in the index as it goes)."""
        new = self._written[self._popped :]
        self._popped = len(self._written)
        return list(new)

    def finished(self) -> list[dict]:
        """Every shard finalised so far (after an interrupt, check that its file exists: the record is
        made just before the rename)."""
        return list(self._written)

    def close(self) -> list[dict]:
        """Finalise the open shard; return one dict per shard written (file, split, samples, bytes, sha256, keys)."""
        self._finish()
        if self.overwrite:
            mine = {Path(s["file"]).name for s in self._written}
            for n in _shard_numbers(self.domain_dir, self.split):
                name = f"{self.split}-{n:06d}.tar"
                if name not in mine:
                    (self.domain_dir / name).unlink()
        return list(self._written)

    def abort(self) -> None:
        """Drop the shard being written (its temp file); finished shards stay."""
        if self._tar is not None:
            with contextlib.suppress(Exception):
                self._tar.close()
                self._stream.close()
            self._tmp.unlink(missing_ok=True)
            self._tar = None

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


# ---------------------------------------------------------------------------------------------
# index


def _empty_index() -> dict:
    return {"format_version": FORMAT_VERSION, "domains": {}, "skipped": 0}


HTTP_TIMEOUT = 30.0  # seconds to wait for index.json over http(s) (connect, and each read)


def is_url(source: Any) -> bool:
    """True for an ``http(s)://`` shards location: its index.json is fetched over http, its shards
    are read by curl (see :mod:`mixpretrain.data.stream`)."""
    return isinstance(source, str) and source.startswith(("http://", "https://"))


def local_shards_dir(source: str | Path) -> str | Path:
    """A ``file:`` URL of a local shards folder (``file:///data/shards``, ``file:/data/shards``,
    ``file:relative/dir``, as webdataset accepts) as a path; anything else unchanged. A ``file://``
    URL with a host other than ``localhost`` is refused: it names another machine's disk."""
    if not isinstance(source, str) or not source.startswith("file:"):
        return source
    from urllib.parse import unquote, urlparse

    if source.startswith("file://"):
        url = urlparse(source)
        if url.netloc not in ("", "localhost"):
            raise ValueError(f"{source}: a file:// URL with host {url.netloc!r} names another machine's disk; "
                             "use a local path (or http(s):// to stream the shards)")
        return unquote(url.path) or "/"
    return unquote(source[len("file:"):])


def _base_url(url: str) -> str:
    """``http://host/shards``, ``.../shards/`` or ``.../shards/index.json`` -> ``http://host/shards/``."""
    return url[: -len(INDEX_NAME)] if url.endswith("/" + INDEX_NAME) else url.rstrip("/") + "/"


def index_location(shards_dir: str | Path) -> str:
    """Where the index of a shards dir (local folder, ``file:`` or http(s) URL) is read from."""
    shards_dir = local_shards_dir(shards_dir)
    return _base_url(shards_dir) + INDEX_NAME if is_url(shards_dir) else str(Path(shards_dir) / INDEX_NAME)


def shard_location(shards_dir: str | Path, file: str) -> str:
    """Path or URL of one shard, from its ``file`` entry in index.json (``<domain>/<split>-NNNNNN.tar``)."""
    shards_dir = local_shards_dir(shards_dir)
    return _base_url(shards_dir) + file if is_url(shards_dir) else str(Path(shards_dir) / file)


def _fetch(url: str) -> bytes:
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=HTTP_TIMEOUT) as resp:
            return resp.read()
    except urllib.error.HTTPError as exc:
        kind = FileNotFoundError if exc.code in (404, 410) else ValueError
        raise kind(f"{url}: cannot fetch the shard index: HTTP {exc.code} {exc.reason}") from None
    except (urllib.error.URLError, OSError) as exc:  # refused, unknown host, timed out, reset
        reason = getattr(exc, "reason", None) or exc
        if isinstance(reason, TimeoutError):
            reason = f"no answer within {HTTP_TIMEOUT:g} s"
        raise ValueError(f"{url}: cannot fetch the shard index ({reason})") from None


def load_index(shards_dir: str | Path) -> dict:
    """Read ``<shards_dir>/index.json``; errors name the file (or URL) and the reason.

    ``shards_dir`` is a local folder or an ``http(s)://`` URL of one (with or without the trailing
    slash, or of its index.json), fetched with a ``HTTP_TIMEOUT`` timeout.
    """
    where = index_location(shards_dir)
    if is_url(shards_dir):
        text = _fetch(where)
    else:
        path = Path(where)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no shard index (run `mixpretrain ingest` or `mixpretrain synth` first)")
        text = path.read_bytes()
    try:
        index = json.loads(text)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{where}: not valid JSON ({exc})") from exc
    version = index.get("format_version") if isinstance(index, dict) else None
    if version != FORMAT_VERSION:
        raise ValueError(f"{where}: format_version {version!r}, this code reads {FORMAT_VERSION}")
    if not isinstance(index.get("domains"), dict):
        raise ValueError(f"{where}: not a shard index (no 'domains' mapping)")
    return index


@contextlib.contextmanager
def _locked(out_dir: Path) -> Iterator[None]:
    """Serialise read-modify-write of index.json between processes (e.g. parallel synth runs)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    with open(out_dir / ".index.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _write_json_atomic(path: Path, obj: dict) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(obj, indent=1, sort_keys=True))
    os.replace(tmp, path)


def _recount(entry: dict) -> None:
    for split in SPLITS:
        shards = [s for s in entry["shards"] if s["split"] == split]
        entry["splits"][split] = {"samples": sum(s["samples"] for s in shards), "shards": len(shards)}
    entry["samples"] = sum(v["samples"] for v in entry["splits"].values())
    entry["bytes"] = sum(s["bytes"] for s in entry["shards"])
    entry["skipped"] = len(entry["skipped_files"])


def update_index(
    out_dir: str | Path,
    domain: str,
    modality: str,
    *,
    shards: list[dict] | None = None,
    spacing: list[float] | None = None,
    preprocessing: dict | None = None,
    cases: dict[str, dict] | None = None,
    skipped: list[dict] | None = None,
    replace: bool = False,
    extra: dict | None = None,
) -> dict:
    """Add shards (from :meth:`ShardWriter.close`), cases and skips of one domain to index.json.

    ``replace`` starts the domain afresh (``--overwrite``); otherwise the domain's modality and
    spacing must match what the index already records. ``cases`` maps case id to
    ``{"split", "shard", "source"}``; ``skipped`` is a list of ``{"path", "reason"}``.
    Returns the updated index. The file is replaced atomically under a lock.
    """
    out_dir = Path(out_dir)
    check_name("domain", domain)
    if modality not in MODALITIES:
        raise ValueError(f"modality {modality!r} is not one of {MODALITIES}")
    with _locked(out_dir):
        path = out_dir / INDEX_NAME
        index = load_index(out_dir) if path.is_file() else _empty_index()
        entry = index["domains"].get(domain)
        if entry is None or replace:
            entry = {"modality": modality, "spacing": spacing, "preprocessing": preprocessing or {},
                     "shards": [], "cases": {}, "skipped_files": [], "splits": {}}
        elif entry["modality"] != modality:
            raise ValueError(
                f"{path}: domain {domain!r} holds modality {entry['modality']!r}, not {modality!r} (use --overwrite to replace it)"
            )
        elif spacing is not None and entry.get("spacing") is not None and (
            not np.allclose(entry["spacing"], spacing)
        ):
            raise ValueError(
                f"{path}: domain {domain!r} was ingested at spacing {entry['spacing']}, not {spacing} (use --overwrite)"
            )
        if spacing is not None:
            entry["spacing"] = list(spacing)
        if preprocessing:
            entry["preprocessing"] = preprocessing
        if extra:
            entry.update(extra)
        new_files = {s["file"] for s in shards or []}
        entry["shards"] = [s for s in entry["shards"] if s["file"] not in new_files] + list(shards or [])
        entry["cases"].update(cases or {})
        done = set(entry["cases"])
        seen = {(s["path"], s["reason"]) for s in entry["skipped_files"]}
        for s in skipped or []:
            if (s["path"], s["reason"]) not in seen:
                entry["skipped_files"].append(s)
        # A file that failed once and ingested later is no longer a skip.
        entry["skipped_files"] = [s for s in entry["skipped_files"] if s.get("case_id") not in done]
        _recount(entry)
        index["domains"][domain] = entry
        index["format_version"] = FORMAT_VERSION
        index["skipped"] = sum(d["skipped"] for d in index["domains"].values())
        index["updated"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        _write_json_atomic(path, index)
        return index


def remove_domain(out_dir: str | Path, domain: str) -> None:
    """Delete a domain's shard files and its index entry (``--overwrite``)."""
    out_dir = Path(out_dir)
    with _locked(out_dir):
        path = out_dir / INDEX_NAME
        if path.is_file():
            index = load_index(out_dir)
            if index["domains"].pop(domain, None) is not None:
                index["skipped"] = sum(d["skipped"] for d in index["domains"].values())
                _write_json_atomic(path, index)
        ddir = out_dir / domain
        if ddir.is_dir():
            for p in ddir.iterdir():
                if _SHARD_RE.match(p.name) or p.name.endswith(".tmp"):
                    p.unlink()


def shard_urls(shards_dir: str | Path, domain: str, split: str) -> list[str]:
    """Paths (or, for an http(s) shards dir, URLs) of a domain's shards for one split, in order, as
    listed in index.json."""
    if split not in SPLITS:
        raise ValueError(f"split {split!r} is not one of {SPLITS}")
    index = load_index(shards_dir)
    if domain not in index["domains"]:
        raise KeyError(f"domain {domain!r} not in {index_location(shards_dir)}; domains: {sorted(index['domains'])}")
    shards = sorted((s for s in index["domains"][domain]["shards"] if s["split"] == split), key=lambda s: s["file"])
    return [shard_location(shards_dir, s["file"]) for s in shards]


def domains(shards_dir: str | Path) -> list[str]:
    return sorted(load_index(shards_dir)["domains"])


# ---------------------------------------------------------------------------------------------
# verify and stats


def _local_dir(shards_dir: str | Path, what: str) -> Path:
    shards_dir = local_shards_dir(shards_dir)
    if is_url(shards_dir):
        raise ValueError(f"{what} needs a local shards folder, not the URL {shards_dir}: it reads every shard file "
                         "and its SHA-256 (run it where the shards are written or stored, or on a downloaded copy)")
    return Path(shards_dir)


def _check_shard_contents(path: Path) -> str | None:
    """Read every member with WebDataset's tar reader and decode every sample."""
    from webdataset.tariterators import group_by_keys, tar_file_expander

    count = 0
    try:
        with open(path, "rb") as stream:
            for sample in group_by_keys(tar_file_expander([{"url": str(path), "stream": stream}])):
                decode_sample(sample)
                count += 1
    except (ShardError, tarfile.TarError, OSError, ValueError) as exc:
        return f"unreadable: {exc}"
    return None if count else "no samples"


def verify(shards_dir: str | Path, domain_names: list[str] | None = None, deep: bool = True) -> list[dict]:
    """Check every shard listed in index.json: present, size, sha256 and (``deep``) decodable.

    Returns a list of ``{"file", "problem"}``; empty when all is well. Needs a local folder.
    """
    shards_dir = _local_dir(shards_dir, "verify")
    index = load_index(shards_dir)
    problems: list[dict] = []
    wanted = domain_names or sorted(index["domains"])
    for name in wanted:
        if name not in index["domains"]:
            problems.append({"file": str(shards_dir / INDEX_NAME), "problem": f"domain {name!r} not in index"})
            continue
        for s in index["domains"][name]["shards"]:
            path = shards_dir / s["file"]
            problem = None
            if not path.is_file():
                problem = "missing"
            elif path.stat().st_size != s["bytes"]:
                problem = f"size {path.stat().st_size} bytes, index says {s['bytes']} (truncated or replaced)"
            elif _sha256(path) != s["sha256"]:
                problem = "sha256 checksum mismatch (corrupted)"
            elif deep:
                problem = _check_shard_contents(path)
            if problem:
                problems.append({"file": str(path), "problem": problem})
    return problems


def orphans(shards_dir: str | Path) -> list[str]:
    """Shard files on disk that index.json does not list (e.g. renamed just before a crash, or
    left by another tool). Readers ignore them; a later ingest numbers its shards after them."""
    shards_dir = _local_dir(shards_dir, "orphans")
    index = load_index(shards_dir)
    listed = {s["file"] for d in index["domains"].values() for s in d["shards"]}
    found = []
    for name in sorted(index["domains"]):
        ddir = shards_dir / name
        if ddir.is_dir():
            found += [f"{name}/{p.name}" for p in sorted(ddir.iterdir()) if _SHARD_RE.match(p.name)]
    return [f for f in found if f not in listed]


def stats(shards_dir: str | Path) -> list[dict]:
    """One row per domain and split: modality, samples, shards, bytes; plus skipped files."""
    index = load_index(shards_dir)
    rows = []
    for name, entry in sorted(index["domains"].items()):
        for split in SPLITS:
            shards = [s for s in entry["shards"] if s["split"] == split]
            rows.append(
                {
                    "domain": name,
                    "modality": entry["modality"],
                    "split": split,
                    "samples": sum(s["samples"] for s in shards),
                    "shards": len(shards),
                    "bytes": sum(s["bytes"] for s in shards),
                    "skipped": entry.get("skipped", 0) if split == "train" else 0,
                    "spacing": entry.get("spacing"),
                }
            )
    return rows
