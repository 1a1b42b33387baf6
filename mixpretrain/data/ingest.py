"""Ingest scans into per-domain WebDataset shards: discover, read, preprocess, write, index.

    mixpretrain ingest --input DIR_OR_FILE [...] --modality ct --domain abdomen_ct --out shards/
    mixpretrain ingest --manifest cases.csv --out shards/

* Cases are read and preprocessed in ``--workers`` processes; the main process writes them in
  input order (so shard contents are reproducible) and records each finished shard in
  ``index.json`` right away. A re-run skips cases already in the index (resume after a crash
  or after adding files); ``--overwrite`` starts the domain afresh.
* The train/val split is a hash of the case id (not the domain), so the same patient in two
  domains lands in the same split and re-runs never move a case.
* Bad inputs (unreadable, truncated, NaN/Inf voxels, 2-D, 4-D without ``--frames first``,
  blank, a DICOM series with missing slices, a DICOM file GDCM left out of its folder's series)
  are logged, counted and recorded under ``skipped`` in the index; they never stop the run.
  Bad arguments (no scans found, unknown modality, bad manifest row) are errors.
"""

from __future__ import annotations

import concurrent.futures as cf
import csv
import hashlib
import logging
import multiprocessing
import os
from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from . import shards as S
from .preprocess import PreprocessSettings, preprocess
from .readers import DICOM_SUFFIXES, SCAN_SUFFIXES, ScanSource, discover, read_volume, scan_suffix

log = logging.getLogger(__name__)

MANIFEST_COLUMNS = ("path", "modality", "domain")  # required; case_id and split are optional


@dataclass
class Case:
    source: ScanSource
    case_id: str
    domain: str
    modality: str
    split: str | None = None  # None: decided by the case-id hash


# ---------------------------------------------------------------------------------------------
# building the case list


def _case_name(src: ScanSource, root: Path, multi_series: bool) -> str:
    if src.left_out and not scan_suffix(src.path):  # a DICOM file left out of its folder's series
        return S.safe_key(_case_name(ScanSource(src.path.parent, ""), root, False) + "_" + _dicom_stem(src.path))
    if src.is_dicom:
        rel = src.path.relative_to(root) if src.path != root else Path(root.name)
        name = str(rel) if str(rel) != "." else root.name
        if multi_series:  # several series in one folder: keep them apart, stably
            name += "_" + hashlib.sha1(src.series_uid.encode()).hexdigest()[:8]
        return S.safe_key(name)
    rel = src.path.relative_to(root) if root.is_dir() else Path(src.path.name)
    text = str(rel)
    return S.safe_key(text[: -len(scan_suffix(src.path))])


def _dicom_stem(path: Path) -> str:
    name = path.name
    return name[: -len(next((s for s in DICOM_SUFFIXES if name.lower().endswith(s)), ""))] or name


def cases_from_inputs(inputs: list[str | Path], domain: str, modality: str) -> list[Case]:
    """One case per scan file / DICOM series under ``inputs``; ids from paths relative to each input."""
    S.check_name("domain", domain)
    if modality not in S.MODALITIES:
        raise ValueError(f"unknown modality {modality!r}; expected one of {', '.join(S.MODALITIES)}")
    cases: list[Case] = []
    for inp in map(Path, inputs):
        found = discover([inp])
        if not found:
            raise ValueError(f"{inp}: no scan files ({', '.join(SCAN_SUFFIXES)}) or DICOM series found (empty input)")
        per_folder = defaultdict(int)
        for src in found:
            if src.is_dicom:
                per_folder[src.path] += 1
        root = inp if inp.is_dir() else inp.parent
        for src in found:
            cid = _case_name(src, root if src.is_dicom or src.left_out else inp, per_folder.get(src.path, 0) > 1)
            cases.append(Case(src, cid, domain, modality))
    _check_unique(cases)
    return cases


def _check_unique(cases: list[Case]) -> None:
    seen: dict[tuple[str, str], Case] = {}
    for c in cases:
        other = seen.setdefault((c.domain, c.case_id), c)
        if other is not c:
            raise ValueError(
                f"case id {c.case_id!r} of domain {c.domain!r} given twice: {other.source} and {c.source} "
                "(give distinct case_id values in a --manifest)"
            )


def cases_from_manifest(path: str | Path) -> list[Case]:
    """Rows ``path, modality, domain[, case_id][, split]``; relative paths are relative to the CSV."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"manifest {path} does not exist")
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        raise ValueError(f"{path}: manifest has no rows")
    missing = [c for c in MANIFEST_COLUMNS if c not in rows[0]]
    if missing:
        raise ValueError(f"{path}: manifest lacks column(s) {missing}; has {list(rows[0])}")
    cases: list[Case] = []
    domain_modality: dict[str, str] = {}
    for n, row in enumerate(rows, start=2):  # line 1 is the header
        where = f"{path}:{n}"
        cases.extend(_manifest_row(row, where, path.parent, domain_modality))
    _check_unique(cases)
    return cases


def _manifest_row(row: dict, where: str, base: Path, domain_modality: dict[str, str]) -> list[Case]:
    short = [k for k in ("modality", "domain") if row.get(k) is None]  # csv.DictReader's filler
    if short or row.get(None):
        problem = f"no {' or '.join(short)} value" if short else f"extra values {row[None]}"
        raise ValueError(f"{where}: {problem}; each row needs path,modality,domain[,case_id,split] (comma-separated)")
    scan = (row.get("path") or "").strip()
    modality = (row.get("modality") or "").strip().lower()
    domain = (row.get("domain") or "").strip()
    split = (row.get("split") or "").strip().lower() or None
    if not scan:
        raise ValueError(f"{where}: empty path")
    if modality not in S.MODALITIES:
        raise ValueError(f"{where}: unknown modality {row['modality'].strip()!r}; expected one of {', '.join(S.MODALITIES)}")
    try:
        S.check_name("domain", domain)
    except ValueError as exc:
        raise ValueError(f"{where}: {exc}") from None
    if split is not None and split not in S.SPLITS:
        raise ValueError(f"{where}: split {split!r} is not one of {', '.join(S.SPLITS)}")
    if domain_modality.setdefault(domain, modality) != modality:
        raise ValueError(f"{where}: domain {domain!r} mixes modalities {domain_modality[domain]!r} and {modality!r}")
    p = Path(scan) if Path(scan).is_absolute() else base / scan
    given = (row.get("case_id") or "").strip()
    if not p.exists():
        # A missing file is a bad input like an unreadable one: skipped and recorded, not fatal.
        return [Case(ScanSource(p), S.safe_key(given or p.name.split(".")[0]), domain, modality, split)]
    found = discover([p])
    if not found:
        raise ValueError(f"{where}: no scan file or DICOM series at {p}")
    cases = []
    scans = [s for s in found if not s.left_out]  # DICOM files left out of a series: named apart
    for src in found:
        if src.left_out:
            own = _case_name(src, p if p.is_dir() else p.parent, False)
            cid = S.safe_key(f"{given}_{_dicom_stem(src.path)}") if given else own
        else:
            base_id = given or _case_name(src, p if src.is_dicom else p.parent, False)
            n = sum(not c.source.left_out for c in cases)
            cid = S.safe_key(base_id) if len(scans) == 1 else S.safe_key(f"{base_id}_{n}")
        cases.append(Case(src, cid, domain, modality, split))
    return cases


def assign_split(case_id: str, val_fraction: float) -> str:
    """Deterministic split: ``val`` when the case id's SHA-256 maps below ``val_fraction``."""
    u = int(hashlib.sha256(case_id.encode()).hexdigest()[:16], 16) / 2.0**64
    return "val" if u < val_fraction else "train"


# ---------------------------------------------------------------------------------------------
# work


def _init_worker() -> None:
    # Each worker is one core's worth of work: keep torch/BLAS/ITK from spawning more threads.
    import torch

    torch.set_num_threads(1)
    import SimpleITK as sitk

    sitk.ProcessObject_SetGlobalDefaultNumberOfThreads(1)


def process_case(case: Case, settings: PreprocessSettings, frames: str, dtype: str) -> tuple[Any, dict | str]:
    """Read + preprocess one case: ``(array, meta)`` or ``(None, reason)``; never raises."""
    try:
        array, meta = preprocess(read_volume(case.source, frames=frames), settings)
        with np.errstate(over="ignore"):  # overflow is reported just below, as the skip reason
            stored = array.astype(dtype)
        if not np.isfinite(stored).all():
            return None, f"values overflow {dtype} after preprocessing (max |v| {np.abs(array).max():.4g})"
        return stored, meta
    except Exception as exc:  # a bad case is a counted skip, whatever failed
        msg = str(exc)
        prefix = str(case.source)
        reason = msg[len(prefix) + 2 :] if msg.startswith(prefix + ": ") else f"{type(exc).__name__}: {msg}"
        return None, reason


def _ordered_results(
    cases: list[Case], settings: dict[str, PreprocessSettings], frames: str, dtype: str, workers: int
) -> Iterator[tuple[Case, Any, Any]]:
    """Process cases on ``workers`` processes, yielding results in input order (bounded look-ahead)."""
    if workers <= 1:
        for c in cases:
            yield (c, *process_case(c, settings[c.domain], frames, dtype))
        return
    ctx = multiprocessing.get_context("forkserver")
    with cf.ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init_worker) as pool:
        pending: list[tuple[Case, cf.Future]] = []
        it = iter(cases)
        for c in it:
            pending.append((c, pool.submit(process_case, c, settings[c.domain], frames, dtype)))
            if len(pending) >= 2 * workers:
                break
        while pending:
            c, fut = pending.pop(0)
            nxt = next(it, None)
            if nxt is not None:
                pending.append((nxt, pool.submit(process_case, nxt, settings[nxt.domain], frames, dtype)))
            yield (c, *fut.result())


def _prepare_domain(out: Path, domain: str, modality: str, spacing: tuple, overwrite: bool) -> set[str]:
    """Check the index against this run (no silent replacement) and return ids already done."""
    index_path = out / S.INDEX_NAME
    if overwrite:
        S.remove_domain(out, domain)
        return set()
    if not index_path.is_file():
        if (out / domain).is_dir() and any((out / domain).glob("*.tar")):
            raise FileExistsError(f"{out / domain} holds shards but {index_path} is missing (use --overwrite)")
        return set()
    entry = S.load_index(out)["domains"].get(domain)
    if entry is None:
        return set()
    if entry["modality"] != modality:
        raise FileExistsError(
            f"{index_path}: domain {domain!r} holds modality {entry['modality']!r}, not {modality!r} (use --overwrite)"
        )
    if entry.get("spacing") and not np.allclose(entry["spacing"], spacing):
        raise FileExistsError(
            f"{index_path}: domain {domain!r} was ingested at spacing {entry['spacing']}, not {list(spacing)} (use --overwrite)"
        )
    return set(entry["cases"])


def ingest(
    cases: list[Case],
    out: str | Path,
    *,
    spacing: Iterable[float] | None = None,
    workers: int = 1,
    val_fraction: float = 0.1,
    overwrite: bool = False,
    frames: str = "error",
    shard_size: int = 32,
    dtype: str = S.DEFAULT_DTYPE,
    codec: str = S.DEFAULT_CODEC,
    progress: bool = True,
) -> dict[str, dict]:
    """Ingest ``cases`` into ``out``; returns per-domain counts (written, already, skipped + reasons)."""
    from tqdm import tqdm

    if not cases:
        raise ValueError("no cases to ingest (empty input)")
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val fraction must be in [0, 1), got {val_fraction}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    by_domain: dict[str, list[Case]] = defaultdict(list)
    for c in cases:
        by_domain[c.domain].append(c)
    settings = {d: PreprocessSettings(cs[0].modality, tuple(spacing) if spacing else None) for d, cs in by_domain.items()}
    summary: dict[str, dict] = {}
    todo: list[Case] = []
    for d, cs in by_domain.items():
        done = _prepare_domain(out, d, cs[0].modality, settings[d].spacing, overwrite)
        summary[d] = {"modality": cs[0].modality, "written": 0, "already": 0, "skipped": 0, "skipped_files": []}
        for c in cs:
            if c.case_id in done:
                summary[d]["already"] += 1
            else:
                todo.append(c)
        if summary[d]["already"]:
            log.info("domain %s: %d case(s) already ingested, resuming", d, summary[d]["already"])
    writers: dict[tuple[str, str], S.ShardWriter] = {}
    meta_of: dict[tuple[str, str], dict] = {}  # (domain, case id) -> split, source
    try:
        results = _ordered_results(todo, settings, frames, dtype, workers)
        for case, array, info in tqdm(results, total=len(todo), desc="ingest", unit="case", disable=not progress or None):
            _handle(case, array, info, out, writers, settings, val_fraction, shard_size, dtype, codec, summary, meta_of)
    except BaseException:
        for (d, _split), w in writers.items():
            w.abort()  # the shard in progress is dropped
            # Finished shards are indexed as they complete, but an interrupt can fall between a
            # shard's rename and its index update: record every finished shard on disk again
            # (update_index replaces entries by file), so the index lists exactly the shards on disk.
            _record(out, d, settings[d], [s for s in w.finished() if (out / s["file"]).is_file()], meta_of)
        raise
    for (d, _split), w in writers.items():
        w.close()
        _record(out, d, settings[d], w.pop_finished(), meta_of)
    for d, s in summary.items():
        S.update_index(out, d, s["modality"], spacing=list(settings[d].spacing),
                       preprocessing=settings[d].to_dict(), skipped=s["skipped_files"])
    return summary


# DICOM Modality (0008,0060) codes of the modalities we ingest.
DICOM_MODALITY = {"CT": "ct", "MR": "mri", "PT": "pet"}


def _check_header_modality(case: Case, meta: dict) -> None:
    """Warn when a DICOM header names another modality than the one given: a series filed in the
    wrong folder or manifest row would otherwise get the wrong intensity recipe without a word.
    It is ingested as asked (the user may know better, e.g. a PET-CT's CT kept with its PET)."""
    header = (meta.get("source") or {}).get("dicom_modality")
    if DICOM_MODALITY.get(header or "", case.modality) != case.modality:
        log.warning("%s: its DICOM header says Modality %s (%s), but it is ingested as %s into domain %r as asked",
                    case.source, header, DICOM_MODALITY[header], case.modality, case.domain)


def _handle(case, array, info, out, writers, settings, val_fraction, shard_size, dtype, codec, summary, meta_of) -> None:
    d = case.domain
    if array is None:
        log.warning("skipped %s: %s", case.source, info)
        summary[d]["skipped"] += 1
        summary[d]["skipped_files"].append({"path": str(case.source), "case_id": case.case_id, "reason": info})
        return
    _check_header_modality(case, info)
    split = case.split or assign_split(case.case_id, val_fraction)
    key = (d, split)
    if key not in writers:
        writers[key] = S.ShardWriter(out, d, case.modality, split, maxcount=shard_size, dtype=dtype, codec=codec)
    meta = {**info, "case_id": case.case_id}
    writers[key].write(case.case_id, array, meta)
    meta_of[(d, case.case_id)] = {"split": split, "source": str(case.source)}
    summary[d]["written"] += 1
    finished = writers[key].pop_finished()
    if finished:
        _record(out, d, settings[d], finished, meta_of)


def _record(out: Path, domain: str, settings: PreprocessSettings, shards: list[dict], meta_of: dict) -> None:
    if not shards:
        return
    cases = {k: {**meta_of[(domain, k)], "shard": s["file"]} for s in shards for k in s["keys"]}
    S.update_index(out, domain, settings.modality, shards=shards, spacing=list(settings.spacing),
                   preprocessing=settings.to_dict(), cases=cases)


def default_workers() -> int:
    return max(1, min(8, (os.cpu_count() or 1)))
