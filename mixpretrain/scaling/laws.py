"""Law families and the fitted-law object.

Every family is a special case of one effective-data law. For target domain j and samples
consumed D = (D_1 .. D_K):

    delta_i = 1 + De_i(D_i)                                   (one-sample offset: L(0) = E + A)
    x_j     = delta_j + sum_{i != j} T_ij * d_ref * [ (delta_i / d_ref)^gamma_ij - (1 / d_ref)^gamma_ij ]
    L_j(D)  = E_j + A_j * x_j^(-alpha_j)

- ``power``:      T = 0 (each domain learns only from its own samples).
- ``linear``:     gamma = 1 (one sample of i is worth T_ij samples of j at every scale).
- ``transfer``:   T >= 0 and gamma free: the DESIGN.md law. T_ij is measured at the reference
                  scale ``d_ref`` (samples), which decorrelates T from gamma in the fit; the
                  DESIGN.md form's T'_ij equals T_ij * d_ref^(1 - gamma_ij).
- ``repetition``: ``transfer`` with finite unique data U_i per domain. Beyond U_i, repeated
                  samples are worth less (Muennighoff et al. 2023, effective data of repeated epochs):
                  De(D) = D for D <= U, else U + U * R* * (1 - exp(-(D / U - 1) / R*)), so a domain
                  saturates at U * (1 + R*) effective samples.

No torch here: this runs anywhere, fast.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

FAMILIES = ("power", "linear", "transfer", "repetition")
# Simplest first: model selection prefers the earlier family when held-out errors tie.
FAMILY_ORDER = {name: i for i, name in enumerate(FAMILIES)}

PARAM_KEYS = ("E", "A", "alpha", "T", "gamma", "r_star", "unique")


def effective_data(D: np.ndarray, unique: np.ndarray, r_star: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Effective samples after repetition: (De, dDe/dD, dDe/dlog R*), all shaped like ``D``.

    ``unique`` is +inf where a domain's data is unlimited (then De = D).
    """
    D = np.asarray(D, dtype=float)
    over = D > unique
    if not np.any(over):
        return D, np.ones_like(D), np.zeros_like(D)
    U = np.broadcast_to(unique, D.shape)
    R = np.broadcast_to(r_star, D.shape)
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        e = np.where(over, D / U - 1.0, 0.0)
        decay = np.exp(-e / R)
        De = np.where(over, U + U * R * (1.0 - decay), D)
        dDe_dD = np.where(over, decay, 1.0)
        # d/dR [U R (1 - exp(-e/R))] = U [(1 - exp(-e/R)) - (e/R) exp(-e/R)]; times R for log R.
        dDe_dlogR = np.where(over, U * R * ((1.0 - decay) - (e / R) * decay), 0.0)
    return De, dDe_dD, dDe_dlogR


def _as_params(params: dict[str, Any], k: int) -> dict[str, Any]:
    """Normalise a params dict (lists from JSON or arrays) to float arrays of the right shapes."""
    out: dict[str, Any] = {}
    for key, shape in (("E", (k,)), ("A", (k,)), ("alpha", (k,)), ("T", (k, k)), ("gamma", (k, k))):
        arr = np.asarray(params[key], dtype=float)
        if arr.shape != shape:
            raise ValueError(f"law params '{key}': expected shape {shape}, got {arr.shape}")
        out[key] = arr
    out["r_star"] = np.asarray(params.get("r_star", [1.0] * k), dtype=float).reshape(k)
    uniq = params.get("unique")
    uniq = [np.inf] * k if uniq is None else [np.inf if u is None else u for u in uniq]
    out["unique"] = np.asarray(uniq, dtype=float).reshape(k)
    out["d_ref"] = float(params["d_ref"])
    out["T"] = out["T"].copy()
    np.fill_diagonal(out["T"], 0.0)  # a domain does not transfer to itself: its own term is delta_j
    for key, ok in (("E", out["E"] >= 0), ("A", out["A"] > 0), ("alpha", out["alpha"] > 0), ("T", out["T"] >= 0),
                    ("gamma", out["gamma"] > 0), ("r_star", out["r_star"] > 0), ("unique", out["unique"] > 0)):
        if not np.all(ok):  # NaN fails too
            raise ValueError(f"law params '{key}': out of range or not a number: {out[key].tolist()}")
    if not out["d_ref"] > 0:
        raise ValueError(f"law params 'd_ref': must be > 0, got {out['d_ref']}")
    return out


def law_terms(p: dict[str, Any], D: np.ndarray) -> dict[str, np.ndarray]:
    """Intermediate quantities of the law at consumption ``D`` [..., K] (shared by predict and grad)."""
    D = np.asarray(D, dtype=float)
    De, dDe_dD, _ = effective_data(D, p["unique"], p["r_star"])
    delta = 1.0 + De
    d_ref = p["d_ref"]
    u = delta[..., :, None] / d_ref  # [..., K(source), 1]
    ug = u ** p["gamma"]  # [..., K, K]
    s = d_ref * (ug - (1.0 / d_ref) ** p["gamma"])
    x = delta + np.einsum("...ij,ij->...j", s, p["T"])
    q = p["A"] * x ** (-p["alpha"])
    return {"delta": delta, "dDe_dD": dDe_dD, "u": u, "ug": ug, "x": x, "q": q, "L": p["E"] + q}


def transfer_from_grad(g: np.ndarray) -> np.ndarray:
    """Effective transfer from a law's gradient g[..., i, j] = dL_j/dD_i: g / dL_j/dD_j (0 where a
    domain's own gradient is 0). Shared by LawFit and the simulated worlds' own laws."""
    own = np.diagonal(g, axis1=-2, axis2=-1)[..., None, :]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(own != 0, g / own, 0.0)


@dataclass
class LawFit:
    """A fitted (or given) law over ``domains``.

    ``params``: E, A, alpha [K]; T, gamma [K, K] (entry [i, j]: source i -> target j); r_star,
    unique [K] (unique = inf where unlimited); d_ref (samples). ``transfer_matrix`` is T.
    """

    family: str
    domains: tuple[str, ...]
    params: dict[str, Any]
    warnings: list[str] = field(default_factory=list)
    selection: dict[str, Any] = field(default_factory=dict)  # held-out error per family, chosen
    stats: dict[str, Any] = field(default_factory=dict)  # training error, rows, huber scale, time
    bootstrap: list[dict[str, Any]] = field(default_factory=list)  # refits on resampled runs
    data: dict[str, Any] | None = None  # the runs it was fitted on (kept by the CLI for reports)

    def __post_init__(self) -> None:
        if self.family not in FAMILIES:
            raise ValueError(f"unknown law family {self.family!r}; expected one of {', '.join(FAMILIES)}")
        self.domains = tuple(self.domains)
        self.params = _as_params(self.params, len(self.domains))

    @property
    def transfer_matrix(self) -> np.ndarray:
        return self.params["T"].copy()

    @property
    def unique(self) -> np.ndarray:
        """Unique samples available per domain (inf where unknown): the law's own for the
        repetition family, else the counts given to the fit (kept for proportional baselines)."""
        given = self.stats.get("unique")
        if given is not None:
            return np.asarray([np.inf if u is None else u for u in given], dtype=float)
        return self.params["unique"].copy()

    def _check(self, D: np.ndarray) -> np.ndarray:
        D = np.asarray(D, dtype=float)
        if D.shape[-1] != len(self.domains):
            raise ValueError(f"consumption has {D.shape[-1]} domains, law has {len(self.domains)} ({', '.join(self.domains)})")
        if np.any(~np.isfinite(D)) or np.any(D < 0):
            raise ValueError("consumption must be finite and non-negative")
        return D

    def predict(self, D: np.ndarray) -> np.ndarray:
        """Per-domain loss [..., K] at samples consumed per domain ``D`` [..., K]."""
        return law_terms(self.params, self._check(D))["L"]

    def grad(self, D: np.ndarray) -> np.ndarray:
        """dL_j/dD_i at ``D`` [..., K]: array [..., K(source i), K(target j)] (all <= 0)."""
        t = law_terms(self.params, self._check(D))
        p = self.params
        dL_dx = -p["alpha"] * t["q"] / t["x"]  # [..., K(target)]
        # dx_j/ddelta_i: 1 on the diagonal, T_ij gamma_ij (delta_i/d_ref)^(gamma_ij - 1) off it.
        dx = p["T"] * p["gamma"] * t["ug"] / t["u"]
        dx = dx + np.eye(len(self.domains))
        return dx * dL_dx[..., None, :] * t["dDe_dD"][..., :, None]

    def effective_transfer(self, D: np.ndarray) -> np.ndarray:
        """e[i, j] = (dL_j/dD_i) / (dL_j/dD_j): own-sample equivalents of one sample of i, for j."""
        return transfer_from_grad(self.grad(D))

    def predict_interval(self, D: np.ndarray, level: float = 0.9) -> tuple[np.ndarray, np.ndarray]:
        """Bootstrap band of the prediction (the point prediction twice when not bootstrapped)."""
        if not self.bootstrap:
            pred = self.predict(D)
            return pred, pred
        draws = np.stack([law_terms(_as_params(b, len(self.domains)), self._check(D))["L"] for b in self.bootstrap])
        lo, hi = np.quantile(draws, [(1 - level) / 2, (1 + level) / 2], axis=0)
        return lo, hi

    def param_ci(self, level: float = 0.9) -> dict[str, list]:
        """Per-parameter bootstrap interval: {name: [lo, hi]} with nested lists (empty when none)."""
        if not self.bootstrap:
            return {}
        k = len(self.domains)
        out: dict[str, list] = {}
        for key in ("E", "A", "alpha", "T", "gamma", "r_star"):
            draws = np.stack([_as_params(b, k)[key] for b in self.bootstrap])
            lo, hi = np.quantile(draws, [(1 - level) / 2, (1 + level) / 2], axis=0)
            out[key] = [lo.tolist(), hi.tolist()]
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": "mixpretrain-laws/1",
            "family": self.family,
            "domains": list(self.domains),
            "params": params_to_json(self.params),
            "warnings": list(self.warnings),
            "selection": self.selection,
            "stats": self.stats,
            "bootstrap": [params_to_json(_as_params(b, len(self.domains))) for b in self.bootstrap],
            "data": self.data,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LawFit:
        missing = [key for key in ("family", "domains", "params") if key not in d]
        if missing:
            raise ValueError(f"laws file lacks {', '.join(missing)}: not a mixpretrain laws.json")
        return cls(
            family=d["family"],
            domains=tuple(d["domains"]),
            params=d["params"],
            warnings=list(d.get("warnings", [])),
            selection=d.get("selection", {}),
            stats=d.get("stats", {}),
            bootstrap=list(d.get("bootstrap", [])),
            data=d.get("data"),
        )


def params_to_json(p: dict[str, Any]) -> dict[str, Any]:
    """Arrays to lists; infinite unique data written as null (JSON has no inf)."""
    out: dict[str, Any] = {}
    for key in ("E", "A", "alpha", "T", "gamma", "r_star"):
        out[key] = np.asarray(p[key], dtype=float).tolist()
    out["unique"] = [None if not np.isfinite(u) else float(u) for u in np.asarray(p["unique"], dtype=float)]
    out["d_ref"] = float(p["d_ref"])
    return out
