"""Robust fitting of the law families, model selection and bootstrap.

The fit separates by target domain: L_j depends only on target j's parameters (E_j, A_j, alpha_j,
T_.j, gamma_.j, R*_j), so each target is a small least-squares problem in log space
(``scipy.optimize.least_squares``, Huber loss, bounds, analytic Jacobian). Cold fits screen a grid of
starts by their initial cost and polish the best few; warm fits (``init=``) polish one start, which is
what the online sampler's refit every K steps needs. The repetition family couples targets only
through each source's R*: it is fitted by two rounds of block-coordinate descent (each domain's R* is
identified by its own curve past its unique data, then reused as a source).

Model selection (``family="auto"``) fits every candidate on the runs with the smaller total budgets
and scores it on the runs with the LARGEST budgets (mean absolute log error), the question a scaling
law must answer; the simplest family within 5% of the best wins, then it is refitted on all runs.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.optimize import least_squares

from .laws import FAMILIES, FAMILY_ORDER, LawFit, effective_data

log = logging.getLogger(__name__)

DEFAULT_R_STAR = 15.0  # Muennighoff et al. (2023): repeated data's value decays over ~15 epochs
SELECT_TOL = 0.05  # a more complex family must beat the simplest by > 5% held-out error
BOUNDS = {
    "logA": (-30.0, 60.0),
    "alpha": (0.01, 2.0),
    "T": (0.0, 20.0),
    "gamma": (0.2, 1.5),
    "logR": (np.log(0.05), np.log(200.0)),
}


@dataclass
class _Target:
    """One target domain's least-squares problem."""

    j: int
    logL: np.ndarray  # [n] observed log loss
    delta: np.ndarray  # [n, K] 1 + effective data of every domain (sources use current R*)
    D_own: np.ndarray  # [n] raw own samples (the repetition family recomputes delta_j from it)
    unique_own: float
    free: np.ndarray  # bool [3 + 2K + 1]: which entries of the full vector are fitted
    base: np.ndarray  # full vector with fixed values
    lower: np.ndarray
    upper: np.ndarray
    d_ref: float
    l_min: float = 1.0  # smallest observed loss: E is fitted as a fraction of it (any loss scale is well conditioned)
    ridge: float = 0.0  # weight of the pull of T toward 0 and gamma toward 1 (weakly identified fits)


class _Model:
    """Residuals and Jacobian of one target, sharing the forward pass between fun and jac."""

    def __init__(self, t: _Target):
        self.t = t
        k = t.delta.shape[1]
        self.k = k
        self._key: bytes | None = None
        self._cache: tuple = ()
        self.log_u = np.log(t.delta / t.d_ref)  # delta >= 1: finite
        self.log_v = np.log(1.0 / t.d_ref)

    def full(self, theta: np.ndarray) -> np.ndarray:
        f = self.t.base.copy()
        f[self.t.free] = theta
        return f

    def _forward(self, theta: np.ndarray) -> tuple:
        key = theta.tobytes()
        if key == self._key:
            return self._cache
        t, k = self.t, self.k
        f = self.full(theta)
        E, logA, alpha = f[0] * t.l_min, f[1], f[2]
        T, g, logR = f[3 : 3 + k], f[3 + k : 3 + 2 * k], f[-1]
        if np.isfinite(t.unique_own) and t.free[-1]:
            De, _, dDe_dlogR = effective_data(t.D_own, t.unique_own, np.exp(logR))
            delta_j = 1.0 + De
        else:
            delta_j, dDe_dlogR = t.delta[:, t.j], np.zeros(len(t.logL))
        ug = np.exp(self.log_u * g)  # (delta_i / d_ref)^gamma_i
        vg = np.exp(self.log_v * g)
        S = t.d_ref * (ug - vg)
        x = delta_j + S @ T
        q = np.exp(logA - alpha * np.log(x))
        pred = E + q
        self._key = key
        self._cache = (f, ug, vg, S, x, q, pred, dDe_dlogR)
        return self._cache

    def fun(self, theta: np.ndarray) -> np.ndarray:
        pred = self._forward(theta)[6]
        r = np.log(pred) - self.t.logL
        if self.t.ridge > 0:
            f, k = self._cache[0], self.k
            pen = np.concatenate([f[3 : 3 + k], f[3 + k : 3 + 2 * k] - 1.0])[self.t.free[3:-1]]
            r = np.concatenate([r, np.sqrt(self.t.ridge) * pen])
        return r

    def jac(self, theta: np.ndarray) -> np.ndarray:
        f, ug, vg, S, x, q, pred, dDe_dlogR = self._forward(theta)
        k, t = self.k, self.t
        alpha, T = f[2], f[3 : 3 + k]
        J = np.empty((len(pred), len(f)))
        J[:, 0] = t.l_min
        J[:, 1] = q
        J[:, 2] = -q * np.log(x)
        c = -alpha * q / x
        J[:, 3 : 3 + k] = c[:, None] * S
        J[:, 3 + k : 3 + 2 * k] = c[:, None] * (T * t.d_ref * (ug * self.log_u - vg * self.log_v))
        J[:, -1] = c * dDe_dlogR
        J /= pred[:, None]
        J = J[:, t.free]
        if t.ridge > 0:
            n_pen = int(t.free[3:-1].sum())
            P = np.zeros((n_pen, J.shape[1]))
            P[:, 3 : 3 + n_pen] = np.sqrt(t.ridge) * np.eye(n_pen)  # free T/gamma follow E, logA, alpha
            J = np.vstack([J, P])
        return J


def _huber_cost(r: np.ndarray, c: float) -> float:
    a = np.abs(r)
    return float(np.sum(np.where(a <= c, a * a, 2 * c * a - c * c)))


def _as_vector(values: Any, domains: tuple[str, ...], what: str) -> np.ndarray | None:
    """A per-domain quantity given as a dict {domain: v} or a sequence in domain order."""
    if values is None:
        return None
    if isinstance(values, dict):
        unknown = sorted(set(values) - set(domains))
        if unknown:
            raise ValueError(f"{what}: unknown domain(s) {', '.join(unknown)}; domains are {', '.join(domains)}")
        return np.array([float(values[d]) if values.get(d) is not None else np.inf for d in domains])
    arr = np.asarray(values, dtype=float).reshape(-1)
    if arr.shape != (len(domains),):
        raise ValueError(f"{what}: expected {len(domains)} values ({', '.join(domains)}), got {arr.shape[0]}")
    return arr


def validate_inputs(D: Any, L: Any, domains: Any) -> tuple[np.ndarray, np.ndarray, tuple[str, ...], list[str]]:
    """Check shapes and values; NaN losses are masked (and reported), everything else is an error."""
    domains = tuple(str(d) for d in domains)
    D = np.asarray(D, dtype=float)
    L = np.asarray(L, dtype=float)
    if D.ndim != 2 or L.shape != D.shape:
        raise ValueError(f"D and L must both be [runs, domains]; got D {D.shape}, L {L.shape}")
    if D.shape[1] != len(domains) or len(set(domains)) != len(domains):
        raise ValueError(f"{D.shape[1]} columns but domains {list(domains)} (must be distinct, one per column)")
    bad = np.argwhere(~np.isfinite(D) | (D < 0))
    if len(bad):
        r, c = bad[0]
        raise ValueError(f"samples consumed must be finite and >= 0: run {r}, domain {domains[c]} has {D[r, c]} ({len(bad)} bad entries)")
    empty = np.flatnonzero(D.sum(axis=1) <= 0)
    if len(empty):
        raise ValueError(f"run(s) {empty.tolist()[:10]} consumed no samples at all: a law cannot use them")
    bad = np.argwhere(np.isinf(L) | (L <= 0))
    if len(bad):
        r, c = bad[0]
        raise ValueError(f"losses must be positive and finite (they are fitted in log space): run {r}, domain {domains[c]} has {L[r, c]}")
    notes = []
    nan = np.isnan(L)
    if nan.any():
        per = {domains[c]: int(nan[:, c].sum()) for c in range(len(domains)) if nan[:, c].any()}
        notes.append(f"skipped {int(nan.sum())} missing (NaN) losses: " + ", ".join(f"{d}: {n}" for d, n in per.items()))
    return D, L, domains, notes


def _ratio_varies(a: np.ndarray, b: np.ndarray) -> bool:
    tot = a + b
    m = tot > 0
    if m.sum() < 2:
        return False
    r = a[m] / tot[m]
    return float(np.ptp(r)) > 1e-3


def _plan_target(j: int, D: np.ndarray, L: np.ndarray, domains: tuple[str, ...], family: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str]]:
    """Rows used, which T_ij / gamma_ij are free for target j, and notes on what is unidentifiable."""
    k = D.shape[1]
    rows = np.isfinite(L[:, j])
    if family == "power":
        rows &= D[:, j] > 0  # a pure own-data law cannot describe runs without own data
    name = domains[j]
    _check_own(rows, D[:, j], name)
    n = int(rows.sum())
    free_T = np.zeros(k, bool)
    free_g = np.zeros(k, bool)
    notes: list[str] = []
    if family == "power":
        return rows, free_T, free_g, notes
    for i in range(k):
        if i == j:
            continue
        Di, Dj = D[rows, i], D[rows, j]
        if not np.any(Di > 0):
            notes.append(f"transfer {domains[i]}->{name} unidentifiable: no run with a {name} loss consumed {domains[i]}; fixed T=0")
            continue
        if not _ratio_varies(Di, Dj):
            notes.append(
                f"transfer {domains[i]}->{name} unidentifiable: {domains[i]} and {name} were always mixed in the same ratio; fixed T=0"
            )
            continue
        free_T[i] = True
        if family in ("transfer", "repetition"):
            if len(np.unique(Di[Di > 0])) >= 3:
                free_g[i] = True
            else:
                notes.append(f"transfer exponent {domains[i]}->{name} unidentifiable: fewer than 3 distinct {domains[i]} counts; fixed gamma=1")
    n_free = 3 + free_T.sum() + free_g.sum()
    if n < n_free + 2 and free_g.any():
        notes.append(f"domain {name}: {n} runs are too few for {n_free} parameters; transfer exponents fixed to 1 (linear transfer)")
        free_g[:] = False
        n_free = 3 + free_T.sum()
    if n < n_free + 2 and free_T.any():
        notes.append(f"domain {name}: {n} runs are too few for {n_free} parameters; transfer terms dropped (power law)")
        free_T[:] = False
    if not free_T.any():  # an own-data law cannot describe runs without own data
        rows = rows & (D[:, j] > 0)
        _check_own(rows, D[:, j], name)
    return rows, free_T, free_g, notes


def _check_own(rows: np.ndarray, d_own: np.ndarray, name: str) -> None:
    n, distinct = int(rows.sum()), len(np.unique(d_own[rows]))
    if n < 4 or distinct < 3:
        raise ValueError(
            f"domain {name}: {n} usable runs with a loss and {distinct} distinct counts of its own samples; "
            "need at least 4 runs and 3 distinct counts to fit E, A, alpha"
        )


def _build_target(j: int, rows: np.ndarray, free_T: np.ndarray, free_g: np.ndarray, fit_r: bool, D: np.ndarray,
                  L: np.ndarray, unique: np.ndarray, r_src: np.ndarray, d_ref: float, ridge: float) -> _Target:
    k = D.shape[1]
    Dr = D[rows]
    De, _, _ = effective_data(Dr, unique, r_src)
    free = np.zeros(3 + 2 * k + 1, bool)
    free[:3] = True
    free[3 : 3 + k] = free_T
    free[3 + k : 3 + 2 * k] = free_g
    free[-1] = fit_r
    base = np.zeros_like(free, dtype=float)
    base[3 + k : 3 + 2 * k] = 1.0
    base[-1] = np.log(r_src[j])
    min_l = float(np.min(L[rows, j]))
    log_l = np.log(min_l)  # log A bounds follow the loss scale
    lower = np.concatenate([[0.0, log_l + BOUNDS["logA"][0], BOUNDS["alpha"][0]], np.full(k, BOUNDS["T"][0]),
                            np.full(k, BOUNDS["gamma"][0]), [BOUNDS["logR"][0]]])
    upper = np.concatenate([[1 - 1e-6, log_l + BOUNDS["logA"][1], BOUNDS["alpha"][1]], np.full(k, BOUNDS["T"][1]),
                            np.full(k, BOUNDS["gamma"][1]), [BOUNDS["logR"][1]]])
    return _Target(j=j, logL=np.log(L[rows, j]), delta=1.0 + De, D_own=Dr[:, j], unique_own=float(unique[j]),
                   free=free, base=base, lower=lower, upper=upper, d_ref=d_ref, l_min=min_l, ridge=ridge)


def _cold_starts(model: _Model) -> list[np.ndarray]:
    """A grid of 24 starts (E fraction x alpha x T level); _solve_target polishes the cheapest few."""
    t = model.t
    k = model.k
    L = np.exp(t.logL)
    min_l = float(L.min())
    cands = []
    t_grid = (0.05, 0.5) if t.free[3 : 3 + k].any() else (0.0,)
    for e_frac in (0.0, 0.5, 0.8, 0.95):
        for alpha in (0.08, 0.25, 0.6):
            for t0 in t_grid:
                f = t.base.copy()
                f[0], f[2] = e_frac, alpha
                f[3 : 3 + k] = np.where(t.free[3 : 3 + k], t0, 0.0)
                f[3 + k : 3 + 2 * k] = np.where(t.free[3 + k : 3 + 2 * k], 0.9, 1.0)
                theta = f[t.free]
                x = model._forward(theta)[4]
                # Choose log A so the law passes through the data's median in log space.
                resid = np.log(np.maximum(L - e_frac * min_l, 1e-9 * min_l)) + alpha * np.log(x)
                f[1] = float(np.clip(np.median(resid), t.lower[1], t.upper[1]))
                cands.append(np.clip(f[t.free], t.lower[t.free], t.upper[t.free]))
    return cands


def _solve_target(t: _Target, starts: list[np.ndarray], n_polish: int, huber: float, max_nfev: int = 200) -> np.ndarray:
    model = _Model(t)
    lo, hi = t.lower[t.free], t.upper[t.free]
    # Strictly inside the bounds: least_squares' trust region starts need it.
    span = hi - lo
    starts = [np.clip(s, lo + 1e-9 * span, hi - 1e-9 * span) for s in starts]
    costs = [_huber_cost(model.fun(s), huber) for s in starts]
    order = np.argsort(costs)[:n_polish]
    best, best_cost = starts[order[0]], np.inf
    for idx in order:
        res = least_squares(model.fun, starts[idx], jac=model.jac, bounds=(lo, hi), loss="huber", f_scale=huber,
                            x_scale="jac", method="trf", max_nfev=max_nfev, xtol=1e-8, ftol=1e-8)
        if res.cost < best_cost:
            best, best_cost = res.x, res.cost
    full = model.full(best)
    full[0] *= t.l_min  # back from a fraction of the smallest loss to a loss
    return full


def _init_vector(init: LawFit, t: _Target, k: int) -> np.ndarray:
    p, j = init.params, t.j
    f = t.base.copy()
    f[0], f[1], f[2] = p["E"][j] / t.l_min, np.log(p["A"][j]), p["alpha"][j]
    f[3 : 3 + k] = np.where(t.free[3 : 3 + k], p["T"][:, j], 0.0)
    f[3 + k : 3 + 2 * k] = np.where(t.free[3 + k : 3 + 2 * k], p["gamma"][:, j], 1.0)
    if t.free[-1]:
        f[-1] = np.log(p["r_star"][j])
    return f[t.free]


def _fit_family(D: np.ndarray, L: np.ndarray, domains: tuple[str, ...], family: str, unique: np.ndarray | None,
                init: LawFit | None, d_ref: float, n_starts: int | None, huber: float,
                ridge: float = 0.0) -> tuple[LawFit, list[str]]:
    """Fit one family on all given runs. Returns the fit and the notes on what was not identifiable."""
    k = D.shape[1]
    notes: list[str] = []
    plans = []
    for j in range(k):
        rows, free_T, free_g, n = _plan_target(j, D, L, domains, family)
        plans.append((rows, free_T, free_g))
        notes += n
    if family in ("linear", "transfer") and not any(p[1].any() for p in plans):
        notes.append(f"no transfer term is identifiable for any domain: falling back from {family} to the power family")
        family = "power"
    uniq = unique if (family == "repetition" and unique is not None) else np.full(k, np.inf)
    fit_r = np.isfinite(uniq) & np.array([np.any(D[plans[j][0], j] > uniq[j]) for j in range(k)])
    if family == "repetition":
        for j in np.flatnonzero(np.isfinite(uniq) & ~fit_r):
            notes.append(f"repetition of {domains[j]} unidentifiable: no run exceeds its {uniq[j]:.0f} unique samples; R*={DEFAULT_R_STAR} assumed")
    warm = init is not None and init.domains == domains
    r_src = np.full(k, DEFAULT_R_STAR)
    if warm and init.family == "repetition":
        r_src = np.where(np.isfinite(init.params["r_star"]), init.params["r_star"], DEFAULT_R_STAR)
    polish = n_starts if n_starts is not None else (1 if warm else 4)
    rounds = 2 if fit_r.any() and k > 1 else 1
    full = [np.empty(0)] * k
    for _ in range(rounds):
        for j in range(k):
            rows, free_T, free_g = plans[j]
            t = _build_target(j, rows, free_T, free_g, bool(fit_r[j]), D, L, uniq, r_src, d_ref, ridge)
            model = _Model(t)
            starts = [_init_vector(init, t, k)] if warm else []
            if not warm or polish > 1:
                starts += _cold_starts(model)
            # A warm refit that stops early resumes at the next refit: cap its work (online refit latency).
            full[j] = _solve_target(t, starts, polish, huber, 100 if warm and polish == 1 else 200)
        new_r = np.array([np.exp(full[j][-1]) if fit_r[j] else DEFAULT_R_STAR for j in range(k)])
        if np.allclose(new_r, r_src, rtol=1e-2):
            break
        r_src, warm, init = new_r, True, _assemble(family, domains, full, uniq, d_ref)
        polish = 1
    return _assemble(family, domains, full, uniq, d_ref), notes


def _assemble(family: str, domains: tuple[str, ...], full: list[np.ndarray], uniq: np.ndarray, d_ref: float) -> LawFit:
    k = len(domains)
    F = np.stack(full)  # [K(target), 3 + 2K + 1]
    params = {
        "E": F[:, 0], "A": np.exp(F[:, 1]), "alpha": F[:, 2],
        "T": F[:, 3 : 3 + k].T.copy(), "gamma": F[:, 3 + k : 3 + 2 * k].T.copy(),
        "r_star": np.exp(F[:, -1]), "unique": uniq, "d_ref": d_ref,
    }
    return LawFit(family=family, domains=domains, params=params)


def _log_error(fit: LawFit, D: np.ndarray, L: np.ndarray) -> float:
    pred = fit.predict(D)
    m = np.isfinite(L)
    return float(np.mean(np.abs(np.log(pred[m]) - np.log(L[m]))))


def _holdout_split(D: np.ndarray) -> np.ndarray | None:
    """Runs at the largest total budgets (10-40% of runs) or None when budgets do not allow it."""
    b = D.sum(axis=1)
    r = len(b)
    levels = np.unique(np.round(np.log(b) / np.log(1.02)))  # budgets within 2% are one level
    if len(levels) < 3:
        return None
    lev = np.round(np.log(b) / np.log(1.02))
    for threshold in levels[::-1]:
        test = lev >= threshold
        if test.sum() >= max(1, 0.1 * r):
            return test if test.sum() <= 0.4 * r else None
    return None


def _aicc(fit: LawFit, D: np.ndarray, L: np.ndarray) -> float:
    m = np.isfinite(L)
    resid = (np.log(fit.predict(D)) - np.log(L))[m]
    n = resid.size
    p = 3 * len(fit.domains)
    if fit.family != "power":
        p += int(np.sum(fit.params["T"] > 0))
    if fit.family in ("transfer", "repetition"):
        p += int(np.sum(fit.params["gamma"] != 1.0))
    rss = max(float(np.sum(resid**2)), 1e-300)
    return n * np.log(rss / n) + 2 * p + (2 * p * (p + 1)) / max(n - p - 1, 1)


def _choose(scores: dict[str, float]) -> str:
    best = min(scores.values())
    ok = [f for f, s in scores.items() if s <= best * (1 + SELECT_TOL) + 1e-12]
    return min(ok, key=lambda f: FAMILY_ORDER[f])


def _select(D: np.ndarray, L: np.ndarray, domains: tuple[str, ...], candidates: list[str], unique: np.ndarray | None,
            d_ref: float, n_starts: int | None, huber: float, notes: list[str]) -> tuple[str, dict[str, Any], dict[str, LawFit]]:
    test = _holdout_split(D)
    scores: dict[str, float] = {}
    fits: dict[str, LawFit] = {}
    errors: dict[str, str] = {}
    if test is not None:
        for fam in candidates:
            try:
                fits[fam], _ = _fit_family(D[~test], L[~test], domains, fam, unique, None, d_ref, n_starts, huber)
                scores[fam] = _log_error(fits[fam], D[test], L[test])
            except ValueError as exc:  # e.g. too few runs left for this family once held out
                errors[fam] = str(exc)
        if scores:
            chosen = _choose(scores)
            return chosen, {"method": "held-out larger budgets", "metric": "mean |log error|", "n_test": int(test.sum()),
                            "min_test_budget": float(D[test].sum(axis=1).min()), "scores": scores, "errors": errors,
                            "chosen": chosen}, fits
    notes.append("fewer than 3 distinct total budgets (or too few runs per budget) to hold out the largest: "
                 "family chosen by AICc on the training fit, and extrapolation to larger budgets is unverified")
    for fam in candidates:
        try:
            fits[fam], _ = _fit_family(D, L, domains, fam, unique, None, d_ref, n_starts, huber)
            scores[fam] = float(_aicc(fits[fam], D, L))
        except ValueError as exc:
            errors[fam] = str(exc)
    if not scores:
        raise ValueError("no law family could be fitted: " + "; ".join(dict.fromkeys(errors.values())))
    chosen = min(scores, key=scores.get)
    return chosen, {"method": "AICc (no held-out budgets)", "scores": scores, "errors": errors, "chosen": chosen}, fits


def _coerce_init(init: Any, domains: tuple[str, ...], notes: list[str]) -> LawFit | None:
    if init is None:
        return None
    if isinstance(init, dict):
        init = LawFit.from_dict(init)
    if not isinstance(init, LawFit):
        raise ValueError(f"init must be a LawFit or its to_dict(), got {type(init).__name__}")
    if init.domains != domains:
        notes.append(f"init has domains {list(init.domains)}, not {list(domains)}: cold start")
        return None
    return init


def fit_laws(D: Any, L: Any, domains: Any, family: str = "auto", unique: Any = None, init: Any = None, *,
             n_starts: int | None = None, huber_scale: float = 0.02, bootstrap: int = 0, seed: int = 0,
             d_ref: float | None = None, ridge: float = 0.0, log_warnings: bool = True) -> LawFit:
    """Fit a transfer scaling law to runs: ``D`` [R, K] samples consumed, ``L`` [R, K] losses (NaN = missing).

    family: ``auto`` (held-out selection among power, linear, transfer and, with ``unique``, repetition),
    or one of them. unique: unique samples per domain ({domain: n} or [K]; needed by ``repetition``).
    init: a previous LawFit (or its dict) for a warm start: one polished start instead of a grid.
    huber_scale: where the loss turns from quadratic to linear, in log-loss units (0.02 ~ 2% error).
    bootstrap: number of refits on runs resampled with replacement, for confidence intervals.
    ridge: pulls every T toward 0 and gamma toward 1 (extra residuals sqrt(ridge) * T, sqrt(ridge) * (gamma - 1)):
    useful where transfer is weakly identified, e.g. one training trajectory with a dithered mixture.
    """
    t0 = time.perf_counter()
    D, L, domains, notes = validate_inputs(D, L, domains)
    if family != "auto" and family not in FAMILIES:
        raise ValueError(f"unknown law family {family!r}; expected auto or one of {', '.join(FAMILIES)}")
    uniq = _as_vector(unique, domains, "unique")
    if uniq is not None and np.any(uniq <= 0):
        raise ValueError(f"unique data counts must be positive, got {dict(zip(domains, uniq.tolist(), strict=True))}")
    if family == "repetition" and (uniq is None or not np.isfinite(uniq).any()):
        raise ValueError("family 'repetition' needs unique data counts (unique={domain: n} / --unique ct=N,...)")
    init = _coerce_init(init, domains, notes)
    user_init = init is not None
    if d_ref is None:
        d_ref = init.params["d_ref"] if init is not None else float(10 ** np.round(np.log10(np.median(D[D > 0]))))
    b = D.sum(axis=1)
    if np.ptp(np.log(b)) < np.log(1.02):
        notes.append(f"all runs have the same total budget (~{b.mean():.0f} samples): exponents rest on the mixture "
                     "variation alone and predictions for other budgets are extrapolations")
    selection: dict[str, Any] = {}
    if family == "auto":
        candidates = ["power", "linear", "transfer"]
        if uniq is not None and np.any(D > uniq):
            candidates.append("repetition")
        elif uniq is not None:
            notes.append("no run exceeds any domain's unique data: the repetition family is not a candidate")
        family, selection, pre = _select(D, L, domains, candidates, uniq, d_ref, n_starts, huber_scale, notes)
        if init is None or init.family != family:
            # Start from the held-out fit, and from the best cold start too: it saw fewer runs.
            init, n_starts = pre.get(family), max(n_starts or 0, 2)
    fit, fam_notes = _fit_family(D, L, domains, family, uniq, init, d_ref, n_starts, huber_scale, ridge)
    notes += fam_notes
    fit.selection = selection
    fit.warnings = notes
    m = np.isfinite(L)
    fit.stats = {
        "n_runs": int(D.shape[0]),
        "n_losses": int(m.sum()),
        "train_mean_abs_log_error": _log_error(fit, D, L),
        "huber_scale": huber_scale,
        "ridge": ridge,
        "warm_start": user_init,
        "unique": None if uniq is None else [None if not np.isfinite(u) else float(u) for u in uniq],
        "seconds": 0.0,
    }
    if bootstrap:
        fit.bootstrap = _bootstrap(D, L, domains, fit, uniq, bootstrap, seed, huber_scale, notes)
    fit.stats["seconds"] = time.perf_counter() - t0
    if log_warnings:
        for n in notes:
            log.warning("%s", n)
    return fit


def _bootstrap(D: np.ndarray, L: np.ndarray, domains: tuple[str, ...], fit: LawFit, uniq: np.ndarray | None, n: int,
               seed: int, huber: float, notes: list[str]) -> list[dict[str, Any]]:
    """Refit on runs resampled with replacement, warm-started from the fit (fast, one start each)."""
    rng = np.random.default_rng(seed)
    out, failed = [], 0
    for _ in range(n):
        idx = rng.integers(0, D.shape[0], D.shape[0])
        try:
            b, _ = _fit_family(D[idx], L[idx], domains, fit.family, uniq, fit, fit.params["d_ref"], 1, huber,
                               fit.stats.get("ridge", 0.0))
        except ValueError:  # a resample that lost a whole budget level: not a usable replicate
            failed += 1
            continue
        out.append({key: b.params[key] for key in ("E", "A", "alpha", "T", "gamma", "r_star", "unique", "d_ref")})
    if failed:
        notes.append(f"bootstrap: {failed} of {n} resamples could not be fitted (too few distinct counts) and were skipped")
    return out
