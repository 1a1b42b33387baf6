"""The results CSV and small parsing helpers shared by the ``laws`` commands.

Results CSV: one row per run; columns ``run`` (name), ``D_<domain>`` (samples consumed per domain)
and ``L_<domain>`` (final validation loss per domain; empty or NaN = not measured). Other columns
are ignored (and listed in a log line), so the file can carry notes.
"""

from __future__ import annotations

import csv
import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)


@dataclass
class Results:
    runs: list[str]
    domains: tuple[str, ...]
    D: np.ndarray  # [R, K]
    L: np.ndarray  # [R, K], NaN where missing

    def to_data(self) -> dict[str, Any]:
        """JSON-able copy kept inside laws.json (reports plot the runs beside the curves)."""
        return {
            "runs": self.runs,
            "D": self.D.tolist(),
            "L": [[None if math.isnan(v) else v for v in row] for row in self.L.tolist()],
        }


def _number(path: Path, line: int, col: str, text: str, allow_empty: bool) -> float:
    text = (text or "").strip()
    if text == "" or text.lower() in ("nan", "na", "none", "null"):
        if allow_empty:
            return math.nan
        raise ValueError(f"{path}: line {line}, column {col}: empty value (samples consumed must be given)")
    try:
        return float(text)
    except ValueError as exc:
        raise ValueError(f"{path}: line {line}, column {col}: {text!r} is not a number") from exc


def _read_csv(path: Path, what: str) -> tuple[list[str], list[dict[str, str]]]:
    """Header (stripped of spaces) and rows of a CSV; a missing file is named with its role."""
    if not path.is_file():
        raise FileNotFoundError(f"{what} {path} does not exist")
    with path.open(newline="", encoding="utf-8-sig") as fh:  # -sig: a byte-order mark (Excel) is not part of 'run'
        reader = csv.DictReader(fh)
        header = [h.strip() for h in (reader.fieldnames or [])]
        reader.fieldnames = header
        return header, list(reader)


def read_results(path: str | Path) -> Results:
    """Read and check a results CSV; errors name the file, line and column."""
    path = Path(path)
    header, rows = _read_csv(path, "results CSV")
    if "run" not in header:
        raise ValueError(f"{path}: missing column 'run' (header: {', '.join(header) or 'empty'})")
    d_cols = [h[2:] for h in header if h.startswith("D_")]
    l_cols = [h[2:] for h in header if h.startswith("L_")]
    if not d_cols:
        raise ValueError(f"{path}: no D_<domain> columns (samples consumed per domain)")
    for d in d_cols:
        if d not in l_cols:
            raise ValueError(f"{path}: column D_{d} has no matching L_{d} (final validation loss of {d})")
    for d in l_cols:
        if d not in d_cols:
            raise ValueError(f"{path}: column L_{d} has no matching D_{d} (samples of {d} consumed)")
    extra = [h for h in header if h != "run" and not h.startswith(("D_", "L_"))]
    if extra:
        log.info("%s: ignoring columns %s", path, ", ".join(extra))
    if not rows:
        raise ValueError(f"{path}: no runs (only a header)")
    domains = tuple(d_cols)
    D = np.array([[_number(path, i + 2, f"D_{d}", r[f"D_{d}"], False) for d in domains] for i, r in enumerate(rows)])
    L = np.array([[_number(path, i + 2, f"L_{d}", r[f"L_{d}"], True) for d in domains] for i, r in enumerate(rows)])
    runs = [(r["run"] or "").strip() or f"row{i + 2}" for i, r in enumerate(rows)]
    _check_values(path, runs, domains, D, L)
    return Results(runs=runs, domains=domains, D=D, L=L)


def _check_values(path: Path, runs: list[str], domains: tuple[str, ...], D: np.ndarray, L: np.ndarray) -> None:
    for (r, c) in np.argwhere(~np.isfinite(D) | (D < 0)):
        raise ValueError(f"{path}: run {runs[r]}: D_{domains[c]} = {D[r, c]}: samples consumed must be >= 0")
    for r in np.flatnonzero(D.sum(axis=1) <= 0):
        raise ValueError(f"{path}: run {runs[r]} consumed no samples of any domain (all D_ columns are 0)")
    for (r, c) in np.argwhere(np.isinf(L) | (L <= 0)):
        raise ValueError(f"{path}: run {runs[r]}: L_{domains[c]} = {L[r, c]}: losses must be positive and finite")
    if np.all(np.isnan(L)):
        raise ValueError(f"{path}: every loss is missing")


def write_results(path: str | Path, runs: list[str], domains: tuple[str, ...] | list[str], D: np.ndarray,
                  L: np.ndarray) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["run"] + [f"D_{d}" for d in domains] + [f"L_{d}" for d in domains])
        for name, drow, lrow in zip(runs, D, L, strict=True):
            w.writerow([name] + [f"{v:.10g}" for v in drow] + ["" if math.isnan(v) else f"{v:.10g}" for v in lrow])


def read_mixes(path: str | Path, domains: tuple[str, ...]) -> np.ndarray:
    """``D_<domain>`` columns of a CSV, in the law's domain order (other columns ignored)."""
    path = Path(path)
    header, rows = _read_csv(path, "mixes CSV")
    missing = [f"D_{d}" for d in domains if f"D_{d}" not in header]
    if missing:
        raise ValueError(f"{path}: missing column(s) {', '.join(missing)} (the law's domains are {', '.join(domains)})")
    D = np.array([[_number(path, i + 2, f"D_{d}", r[f"D_{d}"], False) for d in domains] for i, r in enumerate(rows)])
    if D.size and (np.any(~np.isfinite(D)) or np.any(D < 0)):
        r, c = np.argwhere(~np.isfinite(D) | (D < 0))[0]
        raise ValueError(f"{path}: line {r + 2}: D_{domains[c]} = {D[r, c]}: samples consumed must be >= 0")
    return D.reshape(-1, len(domains))


def parse_kv(text: str | None, what: str, domains: tuple[str, ...] | None = None) -> dict[str, float]:
    """``ct=100,mri=50`` -> {"ct": 100.0, "mri": 50.0}; unknown domains and bad numbers are errors."""
    if not text:
        return {}
    out: dict[str, float] = {}
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        name, sep, value = part.partition("=")
        name = name.strip()
        if not sep or not name:
            raise ValueError(f"{what}: {part!r} is not of the form domain=value")
        if domains is not None and name not in domains:
            raise ValueError(f"{what}: unknown domain {name!r}; domains are {', '.join(domains)}")
        try:
            out[name] = float(value)
        except ValueError as exc:
            raise ValueError(f"{what}: {name}={value!r} is not a number") from exc
    return out


def load_laws(path: str | Path) -> Any:
    from .laws import LawFit

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"laws file {path} does not exist")
    try:
        doc = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path} is not valid JSON: {exc}") from exc
    try:
        return LawFit.from_dict(doc)
    except (KeyError, ValueError, TypeError) as exc:
        raise ValueError(f"{path}: {exc}") from exc
