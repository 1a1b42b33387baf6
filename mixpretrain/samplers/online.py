"""Online baselines from the literature, adapted to the per-interval, per-domain loss contract.

- ``ado``: ADO (Jiang et al. 2024). A power law L_k(n_k) = eps_k + beta_k n_k^-alpha_k per domain
  in its *own* samples (no transfer), refitted online; preference rho_k = -n_k dL_k/dn_k (the
  loss the next doubling of the domain's data removes), times a credit term (the smoothed
  history of the mixture, as in ADO), smoothed over time and mixed with a prior.
- ``odm``: ODM (Albalak et al. 2023). EXP3 bandit whose reward is the training loss,
  importance-weighted by the sampling probability, with decaying exploration
  eps_t = min(1/K, sqrt(ln K / (K t))).
- ``doremi``: DoReMi (Xie et al. 2023) run online: exponentiated-gradient ascent on the
  clipped excess loss max(L_k - L_ref_k, 0) against reference losses, smoothed with uniform.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from .base import MixtureSampler, SamplerError, per_domain


def _check_split(sampler: MixtureSampler) -> str:
    split = sampler.options["split"]
    if split not in ("train", "val"):
        raise SamplerError(f"sampler '{sampler.name}' option 'split': expected 'train' or 'val', got {split!r}")
    return split


# --------------------------------------------------------------------------------------- ADO
def fit_power_law(n: np.ndarray, loss: np.ndarray, grid: int = 24) -> tuple[float, float, float] | None:
    """(eps, beta, alpha) of L = eps + beta n^-alpha by least squares in log-log space over a
    grid of eps in [0, min L); None when fewer than 3 usable points or no decreasing fit.
    A grid over eps plus closed-form linear regression is robust (no local minima) and fast
    (microseconds), which is what a per-domain online baseline needs.

    Also None when the best fit is degenerate: counts spanning a tiny log range (a domain fed ~1
    sample per interval late in a run, or large cumulative counts with little consumption) give a
    near-vertical slope whose intercept overflows beta = exp(intercept); such a law says nothing
    about the domain, so it counts as no fit (the domain then gets the mean preference)."""
    ok = np.isfinite(n) & np.isfinite(loss) & (n > 0) & (loss > 0)
    n, loss = n[ok], loss[ok]
    if n.size < 3 or np.ptp(np.log(n)) < 1e-6:
        return None
    x = np.log(n)
    best = None
    for eps in np.linspace(0.0, 0.98, grid) * loss.min():
        y = np.log(loss - eps)
        slope, intercept = np.polyfit(x, y, 1)
        resid = float(np.sum((y - (intercept + slope * x)) ** 2))
        if slope < 0 and (best is None or resid < best[0]):
            best = (resid, eps, intercept, -slope)
    if best is None:
        return None
    _, eps, intercept, alpha = best
    try:
        beta = math.exp(intercept)
    except OverflowError:
        return None
    return (eps, beta, alpha) if math.isfinite(alpha) else None


class AdoSampler(MixtureSampler):
    name = "ado"
    OPTIONS = {
        "split": "train",  # which observations drive the fit
        "smoothing": 0.5,  # weight of the new target in the EMA of the mixture
        "history_smoothing": 0.9,  # EMA factor of the credit term h (ADO's history of the policy)
        "prior_mix": 0.1,  # mix with uniform so no domain is abandoned
        "min_points": 4,  # observations per domain before its law is used
        "max_points": 200,  # keep the latest points per domain (bounded memory and fit time)
    }
    STATE_FIELDS = ("points", "history")
    STATE_ARRAYS = ("history",)

    def __init__(self, domains, **options: Any) -> None:
        super().__init__(domains, **options)
        self.split = _check_split(self)
        self.smoothing = self._opt_float("smoothing", 0.0, 1.0)
        self.history_smoothing = self._opt_float("history_smoothing", 0.0, 1.0)
        self.prior_mix = self._opt_float("prior_mix", 0.0, 1.0)
        self.min_points = self._opt_int("min_points", 3)
        self.max_points = self._opt_int("max_points", self.min_points)
        self.points: list[list[list[float]]] = [[] for _ in domains]  # per domain [[n_k, L_k], ...]
        self.history = np.full(self.k, 1.0 / self.k)
        self.fits: list[tuple[float, float, float] | None] = [None] * self.k

    def _update(self, step, consumed, losses, split) -> None:
        self.history = self.history_smoothing * self.history + (1 - self.history_smoothing) * self._w
        if split != self.split:
            return
        for i in range(self.k):
            if np.isfinite(losses[i]) and consumed[i] > 0:
                self.points[i].append([float(consumed[i]), float(losses[i])])
                del self.points[i][: -self.max_points]
        self._refit()
        rho = np.zeros(self.k)
        for i, fit in enumerate(self.fits):
            if fit is not None:
                _, beta, alpha = fit
                with np.errstate(over="ignore"):
                    rho[i] = alpha * beta * max(consumed[i], 1.0) ** (-alpha)
        # A preference that overflowed (a huge beta from a near-degenerate fit) is unusable: no fit.
        rho[~np.isfinite(rho)] = 0.0
        if not (rho > 0).any():
            return  # not enough data yet: keep the current mixture
        # Domains without a usable fit get the mean preference (unknown, not zero).
        rho[rho <= 0] = rho[rho > 0].mean()
        target = self.history * rho
        target = (1 - self.prior_mix) * target / target.sum() + self.prior_mix / self.k
        self._w = (1 - self.smoothing) * self._w + self.smoothing * target

    def _refit(self) -> None:
        for i, pts in enumerate(self.points):
            if len(pts) >= self.min_points:
                arr = np.asarray(pts)
                self.fits[i] = fit_power_law(arr[:, 0], arr[:, 1])

    def _after_load(self) -> None:
        self._refit()

    def diagnostics(self) -> dict[str, Any]:
        laws = {
            d: None if f is None else {"eps": f[0], "beta": f[1], "alpha": f[2]}
            for d, f in zip(self.domains, self.fits, strict=True)
        }
        return {"laws": laws}


# --------------------------------------------------------------------------------------- ODM
class OdmSampler(MixtureSampler):
    name = "odm"
    OPTIONS = {
        "split": "train",
        "reward_smoothing": 0.9,  # ODM's alpha: R <- a R + (1 - a) r / pi
    }
    STATE_FIELDS = ("reward", "t")
    STATE_ARRAYS = ("reward",)

    def __init__(self, domains, **options: Any) -> None:
        super().__init__(domains, **options)
        self.split = _check_split(self)
        self.reward_smoothing = self._opt_float("reward_smoothing", 0.0, 1.0)
        self.reward = np.zeros(self.k)
        self.t = 0

    def _eps(self, t: int) -> float:
        return min(1.0 / self.k, math.sqrt(math.log(max(self.k, 2)) / (self.k * max(t, 1))))

    def _update(self, step, consumed, losses, split) -> None:
        if split != self.split:
            return
        seen = np.isfinite(losses)
        if not seen.any():
            return
        self.t += 1
        pi = np.maximum(self.weights(), 1e-12)
        r = np.where(seen, losses, 0.0) / pi
        a = self.reward_smoothing
        self.reward = np.where(seen, a * self.reward + (1 - a) * r, self.reward)
        eps_prev, eps = self._eps(self.t - 1), self._eps(self.t)
        logits = eps_prev * self.reward
        p = np.exp(logits - logits.max())
        self._w = (1 - self.k * eps) * p / p.sum() + eps

    def diagnostics(self) -> dict[str, Any]:
        return {"reward": dict(zip(self.domains, self.reward.tolist(), strict=True)), "exploration": self._eps(self.t)}


# ------------------------------------------------------------------------------------ DoReMi
def load_reference(value: Any, domains: tuple[str, ...]) -> np.ndarray:
    """Reference losses: a dict/list, a JSON file {domain: loss} (or {"losses": {...}}), a
    reference run's ``metrics.jsonl`` (last record with ``val/<domain>`` for every domain),
    or a run directory holding one."""
    what = "sampler 'doremi' option 'reference'"
    if isinstance(value, str | Path):
        path = Path(value)
        if path.is_dir():
            path = path / "metrics.jsonl"
        if not path.is_file():
            raise SamplerError(f"{what}: {path} does not exist")
        if path.suffix == ".jsonl":
            return _reference_from_metrics(path, domains)
        try:
            doc = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise SamplerError(f"{what}: {path} is not valid JSON: {exc}") from exc
        if isinstance(doc, Mapping) and isinstance(doc.get("losses"), Mapping):
            doc = doc["losses"]
        return per_domain(doc, domains, f"{what} ({path})")
    return per_domain(value, domains, what)


def _reference_from_metrics(path: Path, domains: tuple[str, ...]) -> np.ndarray:
    last = None
    with path.open() as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as exc:
                raise SamplerError(f"sampler 'doremi' reference {path}:{lineno}: not JSON: {exc}") from exc
            if all(f"val/{d}" in rec for d in domains):
                last = rec
    if last is None:
        raise SamplerError(f"sampler 'doremi' reference {path}: no record has val/<domain> for all of {list(domains)}")
    return per_domain({d: last[f"val/{d}"] for d in domains}, domains, f"sampler 'doremi' reference {path}")


class DoremiSampler(MixtureSampler):
    name = "doremi"
    OPTIONS = {
        "reference": None,  # reference losses (see load_reference)
        "split": "train",
        "eta": 1.0,  # step size of the exponentiated-gradient update (DoReMi: 1)
        "smoothing": 1e-3,  # mix with uniform (DoReMi's c)
    }
    STATE_FIELDS = ("log_alpha",)
    STATE_ARRAYS = ("log_alpha",)

    def __init__(self, domains, **options: Any) -> None:
        super().__init__(domains, **options)
        if self.options["reference"] is None:
            raise SamplerError("sampler 'doremi': option 'reference' (reference losses or a reference run) is required")
        self.reference = load_reference(self.options["reference"], self.domains)
        self.split = _check_split(self)
        self.eta = self._opt_float("eta", 0.0)
        self.smoothing = self._opt_float("smoothing", 0.0, 1.0)
        self.log_alpha = np.zeros(self.k)

    def _update(self, step, consumed, losses, split) -> None:
        if split != self.split:
            return
        excess = np.where(np.isfinite(losses), np.maximum(losses - self.reference, 0.0), 0.0)
        self.log_alpha = self.log_alpha + self.eta * excess
        self.log_alpha -= self.log_alpha.max()  # keep it bounded; softmax is shift-invariant
        alpha = np.exp(self.log_alpha)
        self._w = (1 - self.smoothing) * alpha / alpha.sum() + self.smoothing / self.k

    def diagnostics(self) -> dict[str, Any]:
        return {"reference": dict(zip(self.domains, self.reference.tolist(), strict=True))}
