"""Recency effects the laws cannot see, estimated from their residuals (the transfer sampler's
``forgetting`` option).

The laws are functions of *cumulative* consumption, yet in real runs a domain's loss also depends on
the *recent* mixture: a starved domain forgets (real cpu_tiny runs: ct +15% within ~150 steps at 1%
of the samples), and a domain can suffer from the company it keeps (island runs: ct 2.7% worse at
the same share when pet took the freed samples). Both leave a pattern in the law's log residuals
against the recent shares, which the functions below turn into the penalties of
``scaling.allocate(..., forgetting=(beta, prior), interference=C)``. Pure numpy, no sampler state.
"""

from __future__ import annotations

import numpy as np

COMPANY_MIN_EXCESS = 0.02  # a recent share this far above the prior counts as an excess point


def own_forgetting(res: np.ndarray, short: np.ndarray, z: float, min_points: int) -> np.ndarray:
    """beta_j = slope of domain j's log residuals ``res`` [N, K] on its shortfall ``short`` [N, K]
    (max(0, 1 - recent share / prior share)) less z standard errors, in [0, 1]; 0 for a domain with
    fewer than ``min_points`` finite residuals or whose recent share never moved."""
    k = res.shape[1]
    beta = np.zeros(k)
    for j in range(k):
        ok = np.isfinite(res[:, j])
        x, r = short[ok, j], res[ok, j]
        if x.size < min_points:
            continue
        sxx = float(np.sum((x - x.mean()) ** 2))
        if sxx < 1e-6:
            continue  # the recent share never moved: nothing to learn
        slope = float(np.sum((x - x.mean()) * (r - r.mean())) / sxx)
        resid = r - r.mean() - slope * (x - x.mean())
        se = float(np.sqrt(np.sum(resid**2) / max(x.size - 2, 1) / sxx))
        beta[j] = min(max(slope - z * se, 0.0), 1.0)
    return beta


def company(res: np.ndarray, recent: np.ndarray, prior: np.ndarray, total: np.ndarray, z: float,
            min_points: int) -> np.ndarray:
    """C [K(source i), K(target j)]: how much j's log loss rises per unit of i's recent share above
    its prior share, from the law's log residuals ``res`` [N, K], the recent shares ``recent``
    [N, K] and the total consumption ``total`` [N] at each point (0 where the evidence is unclear).

    Per target j, a joint regression on j's own shortfall (a control: its estimate is
    ``own_forgetting``'s), every other domain's excess max(0, recent - prior) and a quadratic
    trend in log total consumption; each pair's slope less z' standard errors, z' being ``z``
    raised for the K (K - 1) pairs tested at once."""
    k = res.shape[1]
    C = np.zeros((k, k))
    short = np.maximum(0.0, 1.0 - recent / prior)
    excess = np.maximum(0.0, recent - prior)
    # A source counts only where it was above its prior at min_points points or more: a domain
    # boosted for one or two points early in the exploration gave large, spurious slopes
    # (simulated worlds without company; real island runs).
    seen = (excess > COMPANY_MIN_EXCESS).sum(axis=0) >= min_points
    excess = np.where(seen, excess, 0.0)
    # Nuisance: a smooth trend in log total consumption. A law that misfits the curve leaves
    # residuals that drift with time, and the exploration's boosts all come early: without the
    # trend that drift was read as company (false alarms in simulated worlds without any).
    t = np.log(np.maximum(total, 1.0))
    trend = np.column_stack([t, t**2])
    # About as many false alarms over all pairs as one test at z (Bonferroni).
    z_pair = bonferroni_z(z, k * (k - 1))
    for j in range(k):
        others = [i for i in range(k) if i != j]
        ok = np.isfinite(res[:, j])
        X = np.column_stack([short[ok, j], excess[ok][:, others]])
        zs = np.array([z] + [z_pair] * len(others))
        C[others, j] = shrunk_slopes(X, res[ok, j], zs, min_points, nuisance=trend[ok])[1:]
    return C


def bonferroni_z(z: float, tests: int) -> float:
    """The one-sided z whose tail is that of ``z`` divided among ``tests`` tests."""
    from scipy.stats import norm

    return float(norm.isf(norm.sf(z) / max(tests, 1)))


def shrunk_slopes(X: np.ndarray, y: np.ndarray, z: float | np.ndarray, min_points: int,
                  nuisance: np.ndarray | None = None) -> np.ndarray:
    """Least squares of y on the columns of X (with an intercept, and the ``nuisance`` columns
    fitted alongside but not reported); each slope of X less z (per column, or one for all)
    standard errors, clipped to [0, 1]. The standard errors are widened for the residuals' lag-1
    autocorrelation rho by sqrt((1 + rho) / (1 - rho)): successive points of one run share their
    errors (a loss curve off its law for a while), which plain least squares counts as independent
    evidence. A column that never moved, or too few points (fewer than ``min_points`` or than the
    columns + 3), gives 0: no evidence, no penalty."""
    out = np.zeros(X.shape[1])
    extra = np.zeros((X.shape[0], 0)) if nuisance is None else np.asarray(nuisance, dtype=np.float64)
    # Columns that add nothing to those before them (nuisance first) carry no evidence of their own:
    # a share that never moved, or one tied to another (with two domains, one's excess *is* the
    # other's shortfall). They are left out, and their slope is 0.
    keep_extra = _independent(extra - extra.mean(axis=0), [])
    moved = np.asarray(_independent(X - X.mean(axis=0), [extra[:, i] - extra[:, i].mean() for i in keep_extra]),
                       dtype=np.int64)
    cols = np.column_stack([X[:, moved], extra[:, keep_extra]])
    n = X.shape[0]
    if moved.size == 0 or n < max(min_points, cols.shape[1] + 3):
        return out
    Xc = cols - cols.mean(axis=0)
    yc = y - y.mean()
    try:
        inv = np.linalg.inv(Xc.T @ Xc)
    except np.linalg.LinAlgError:
        return out
    if not np.all(np.isfinite(inv)):
        return out
    coef = inv @ (Xc.T @ yc)
    resid = yc - Xc @ coef
    ss = float(resid @ resid)
    se = np.sqrt(np.maximum(np.diag(inv), 0.0) * ss / (n - cols.shape[1] - 1))
    rho = float(np.clip(resid[1:] @ resid[:-1] / ss, 0.0, 0.9)) if ss > 0 else 0.0
    se = se * np.sqrt((1.0 + rho) / (1.0 - rho))
    z = np.broadcast_to(np.asarray(z, dtype=np.float64), (X.shape[1],))[moved]
    out[moved] = np.clip(coef[: moved.size] - z * se[: moved.size], 0.0, 1.0)
    return out


def _independent(cols: np.ndarray, basis: list[np.ndarray], tol: float = 1e-3) -> list[int]:
    """Indices of the (centred) columns that are not, to within ``tol`` of their norm, in the span
    of ``basis`` and of the columns kept before them (Gram-Schmidt); a column of norm < 1e-3
    (variance sum < 1e-6: it never moved) is never kept."""
    ortho = []
    for b in basis:
        for q in ortho:
            b = b - (q @ b) * q
        nb = float(np.linalg.norm(b))
        if nb > 1e-12:
            ortho.append(b / nb)
    kept = []
    for i in range(cols.shape[1]):
        c = cols[:, i]
        norm = float(np.linalg.norm(c))
        if norm < 1e-3:
            continue
        r = c.copy()
        for q in ortho:
            r = r - (q @ r) * q
        nr = float(np.linalg.norm(r))
        if nr > tol * norm:
            ortho.append(r / nr)
            kept.append(i)
    return kept
