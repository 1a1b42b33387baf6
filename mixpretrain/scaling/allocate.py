"""Allocation of a sample budget across domains, and the hub/island analysis.

Allocation minimises the importance-weighted mean normalised loss

    f(w) = sum_j lambda_j * L_j(B * w) / L_j(B * w_uniform),   sum_j lambda_j = 1

over the simplex with floor <= w_i <= cap_i / B. Normalising by each domain's loss under the uniform
mixture at the same budget makes domains with different loss scales count equally.

With ``forgetting=(beta, r0)`` each term is multiplied by 1 + beta_j x max(0, 1 - w_j / r0_j): a
domain held below its reference share r0_j by a constant mixture loses beta_j of its loss per unit
of relative shortfall (forgetting, which a law in cumulative counts cannot express; the transfer
sampler estimates beta online). With ``interference=C`` as well ([K(source i), K(target j)], >= 0)
the multiplier of term j gains sum_{i != j} C_ij x max(0, w_i - r0_i): domain i's share above its
reference raises j's loss by C_ij per unit of share (poor company: in real island runs ct was 2.7%
worse at the same share when pet took the freed samples than when cells kept them). Both are
``recency_multiplier``, which the simulated worlds apply to their recent shares.

The law is not convex in w in general (gamma < 1, repetition), so SLSQP (analytic gradient) is
started from the uniform and proportional mixtures, each feasible vertex direction and random
Dirichlet points, and the best result is kept.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.optimize import minimize

from .fit import _as_vector
from .laws import LawFit


@dataclass
class Allocation:
    domains: tuple[str, ...]
    budget: float
    weights: np.ndarray  # [K] on the simplex
    predicted: np.ndarray  # [K] per-domain loss at budget * weights
    objective: float  # importance-weighted mean normalised loss (1.0 = uniform mixture)
    gain_vs_proportional: float  # relative reduction of the objective vs the proportional mixture
    gain_vs_uniform: float
    proportional: np.ndarray  # the proportional baseline's weights
    reducible_gain_vs_proportional: float  # share of proportional's reducible objective (above sum lambda E / ref) removed

    def to_dict(self) -> dict[str, Any]:
        return {
            "budget": self.budget,
            "weights": dict(zip(self.domains, self.weights.tolist(), strict=True)),
            "predicted": dict(zip(self.domains, self.predicted.tolist(), strict=True)),
            "objective": self.objective,
            "gain_vs_proportional": self.gain_vs_proportional,
            "gain_vs_uniform": self.gain_vs_uniform,
            "reducible_gain_vs_proportional": self.reducible_gain_vs_proportional,
            "proportional": dict(zip(self.domains, self.proportional.tolist(), strict=True)),
        }


def _importance(fit: LawFit, importance: Any) -> np.ndarray:
    lam = _as_vector(importance, fit.domains, "importance")
    if lam is None:
        lam = np.ones(len(fit.domains))
    lam = np.where(np.isfinite(lam), lam, 0.0)  # a domain left out of a dict has no importance
    if np.any(lam < 0) or lam.sum() <= 0:
        raise ValueError(f"importance must be >= 0 with a positive sum, got {dict(zip(fit.domains, lam.tolist(), strict=True))}")
    return lam / lam.sum()


def project_box_simplex(v: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Euclidean projection onto {lo <= w <= hi, sum w = 1} (bisection on the shift)."""
    a, b = float(np.min(v - hi)), float(np.max(v - lo))
    for _ in range(100):
        tau = 0.5 * (a + b)
        if np.clip(v - tau, lo, hi).sum() > 1.0:
            a = tau
        else:
            b = tau
    return np.clip(v - 0.5 * (a + b), lo, hi)


def _bounds(fit: LawFit, budget: float, caps: Any, floor: float) -> tuple[np.ndarray, np.ndarray]:
    k = len(fit.domains)
    if not floor >= 0.0:  # NaN too
        raise ValueError(f"floor {floor}: the minimum weight of every domain must be >= 0")
    if floor * k > 1.0:
        raise ValueError(f"floor {floor} x {k} domains exceeds 1: no mixture satisfies it")
    cap = _as_vector(caps, fit.domains, "caps")
    hi = np.ones(k) if cap is None else np.minimum(1.0, np.where(np.isfinite(cap), cap, np.inf) / budget)
    if cap is not None and np.any(cap < 0):
        raise ValueError(f"caps must be >= 0, got {dict(zip(fit.domains, cap.tolist(), strict=True))}")
    lo = np.full(k, float(floor))
    if np.any(hi < lo - 1e-12):
        bad = [d for d, h in zip(fit.domains, hi, strict=True) if h < floor]
        raise ValueError(f"caps of {', '.join(bad)} are below the floor {floor} x budget {budget:g}")
    if hi.sum() < 1.0 - 1e-9:
        raise ValueError(f"caps total {hi.sum() * budget:g} samples < budget {budget:g}: the budget cannot be spent without "
                         "exceeding the caps (raise the caps, lower the budget, or fit the repetition family)")
    return lo, np.maximum(hi, lo)


def _proportional_weights(fit: LawFit, caps: Any) -> np.ndarray:
    """Data-proportional mixture: proportional to the caps, else the unique data, else uniform."""
    k = len(fit.domains)
    size = _as_vector(caps, fit.domains, "caps")
    if size is None or not np.all(np.isfinite(size)):
        size = fit.unique
    if not np.all(np.isfinite(size)) or size.sum() <= 0:
        return np.full(k, 1.0 / k)
    return size / size.sum()


def allocate(fit: LawFit, budget: float, importance: Any = None, caps: Any = None, floor: float = 0.0, *,
             n_starts: int = 8, seed: int = 0, forgetting: tuple[Any, Any] | None = None,
             interference: Any = None) -> Allocation:
    """Weights on the simplex minimising the mean normalised loss at ``budget`` samples;
    ``forgetting=(beta, r0)``: per-domain forgetting penalty; ``interference``: cross-domain
    penalty above the same reference shares r0 (module docstring; needs ``forgetting``)."""
    if not np.isfinite(budget) or budget <= 0:
        raise ValueError(f"budget must be a positive number of samples, got {budget}")
    k = len(fit.domains)
    lam = _importance(fit, importance)
    lo, hi = _bounds(fit, budget, caps, floor)
    ref = fit.predict(np.full(k, budget / k))
    beta, r0 = _forgetting(fit, forgetting)
    C = _interference(fit, interference, forgetting)

    def f(w: np.ndarray) -> tuple[float, np.ndarray]:
        D = budget * np.clip(w, 0.0, None)
        L = fit.predict(D)
        g = fit.grad(D)  # [K(source), K(target)]
        short, over = w < r0, w > r0
        pen = recency_multiplier(w, r0, beta, C)
        dpen = np.where(short, -beta / r0, 0.0)  # d pen_j / d w_j
        term = lam * L / ref
        dcross = np.where(over, C @ term, 0.0)  # d/dw_i of sum_j term_j C_ij (w_i - r0_i)
        return float(np.sum(term * pen)), budget * (g @ (lam * pen / ref)) + term * dpen + dcross

    rng = np.random.default_rng(seed)
    prop = project_box_simplex(_proportional_weights(fit, caps), lo, hi)
    starts = [project_box_simplex(np.full(k, 1.0 / k), lo, hi), prop]
    starts += [project_box_simplex(np.eye(k)[i] * 0.7 + 0.3 / k, lo, hi) for i in range(k)]
    starts += [project_box_simplex(rng.dirichlet(np.ones(k)), lo, hi) for _ in range(n_starts)]
    if forgetting is not None:
        starts.append(project_box_simplex(r0 / r0.sum(), lo, hi))  # no shortfall anywhere
    cons = [{"type": "eq", "fun": lambda w: np.sum(w) - 1.0, "jac": lambda w: np.ones_like(w)}]
    best_w, best_f = starts[0], f(starts[0])[0]
    for w0 in starts:
        res = minimize(f, w0, jac=True, method="SLSQP", bounds=list(zip(lo, hi, strict=True)), constraints=cons,
                       options={"maxiter": 200, "ftol": 1e-12})
        w = project_box_simplex(res.x, lo, hi)  # SLSQP may end a hair outside the feasible set
        val = f(w)[0]
        if val < best_f:
            best_w, best_f = w, val
    return _result(fit, budget, best_w, best_f, lam, ref, prop, f(prop)[0])


def recency_multiplier(shares: np.ndarray, r0: np.ndarray, beta: np.ndarray | None = None,
                       interference: np.ndarray | None = None) -> np.ndarray:
    """Per-domain loss multiplier 1 + beta_j max(0, 1 - s_j / r0_j) + sum_i C_ij max(0, s_i - r0_i)
    at shares ``s`` (forgetting and poor company; a term is left out when its argument is None)."""
    s = np.asarray(shares, dtype=np.float64)
    pen = np.ones(s.shape[-1])
    if beta is not None:
        pen = pen + beta * np.maximum(0.0, 1.0 - s / r0)
    if interference is not None:
        pen = pen + np.asarray(interference).T @ np.maximum(0.0, s - r0)
    return pen


def _forgetting(fit: LawFit, forgetting: tuple[Any, Any] | None) -> tuple[np.ndarray, np.ndarray]:
    """(beta, r0) as vectors; beta 0 (no penalty) without ``forgetting``."""
    k = len(fit.domains)
    if forgetting is None:
        return np.zeros(k), np.ones(k)
    beta, r0 = (np.asarray(v, dtype=np.float64) for v in forgetting)
    if beta.shape != (k,) or r0.shape != (k,) or not (np.all(np.isfinite(beta)) and np.all(beta >= 0)):
        raise ValueError(f"forgetting: expected (beta >= 0, r0 > 0), one value per domain {list(fit.domains)}, "
                         f"got {forgetting!r}")
    if not (np.all(np.isfinite(r0)) and np.all(r0 > 0)):
        raise ValueError(f"forgetting: reference shares r0 must be > 0, got {r0.tolist()}")
    return beta, r0


def _interference(fit: LawFit, interference: Any, forgetting: tuple[Any, Any] | None) -> np.ndarray:
    """C [K(source), K(target)] with a zero diagonal (a domain's own share is forgetting's); zeros without it."""
    k = len(fit.domains)
    if interference is None:
        return np.zeros((k, k))
    if forgetting is None:
        raise ValueError("interference needs forgetting=(beta, r0): its penalty counts shares above r0")
    C = np.array(interference, dtype=np.float64)
    if C.shape != (k, k) or not (np.all(np.isfinite(C)) and np.all(C >= 0)):
        raise ValueError(f"interference: expected a {k} x {k} matrix >= 0 (source i, target j) over domains "
                         f"{list(fit.domains)}, got {interference!r}")
    np.fill_diagonal(C, 0.0)
    return C


def _result(fit: LawFit, budget: float, w: np.ndarray, val: float, lam: np.ndarray, ref: np.ndarray,
            prop: np.ndarray, obj_prop: float) -> Allocation:
    pred = fit.predict(budget * w)
    # The reducible part of the objective: what proportional leaves above the objective's floor
    # sum lambda E / ref (every domain at its irreducible loss), and the share of it the optimum
    # removes. Normalising each domain by its own L - E instead (the earlier definition) let a flat
    # domain with E ~ L dominate: the cpu_tiny pilot allocation read -123% for a +1.6% gain.
    floor_obj = float(np.sum(lam * fit.params["E"] / ref))
    room = obj_prop - floor_obj
    return Allocation(
        domains=fit.domains, budget=float(budget), weights=w, predicted=pred, objective=val,
        gain_vs_proportional=1.0 - val / obj_prop, gain_vs_uniform=1.0 - val,  # the uniform mixture's objective is 1 by construction
        proportional=prop, reducible_gain_vs_proportional=(obj_prop - val) / room if room > 0 else 0.0,
    )


def hubs_and_islands(fit: LawFit, consumed: Any, importance: Any = None, *, hub_threshold: float = 0.3,
                     island_threshold: float = 0.85) -> dict[str, Any]:
    """Which domains give transfer broadly (hubs) and which receive little (islands), at ``consumed``.

    e[i, j] = (dL_j/dD_i) / (dL_j/dD_j): how many of j's own samples one sample of i is worth, at the
    current consumption. hub_score_i = importance-weighted mean over j != i of e[i, j] (hub when
    >= hub_threshold). island_score_j = 1 / (1 + sum_{i != j} e[i, j]): the share of j's effective
    data that would be its own at equal consumption (island when >= island_threshold).
    """
    k = len(fit.domains)
    c = _as_vector(consumed, fit.domains, "consumed")
    if c is None or np.any(~np.isfinite(c)) or np.any(c < 0):
        raise ValueError(f"consumed must give a finite count >= 0 for every domain ({', '.join(fit.domains)})")
    lam = _importance(fit, importance) * k
    e = fit.effective_transfer(c)
    off = ~np.eye(k, dtype=bool)
    hub = np.array([np.sum((lam * e[i])[off[i]]) / max(np.sum(lam[off[i]]), 1e-12) for i in range(k)]) if k > 1 else np.zeros(k)
    received = np.array([np.sum(e[:, j][off[:, j]]) for j in range(k)])
    island = 1.0 / (1.0 + received)
    return {
        "domains": list(fit.domains),
        "hub_score": dict(zip(fit.domains, hub.tolist(), strict=True)),
        "island_score": dict(zip(fit.domains, island.tolist(), strict=True)),
        "received": dict(zip(fit.domains, received.tolist(), strict=True)),
        "hubs": [d for d, s in zip(fit.domains, hub, strict=True) if s >= hub_threshold],
        "islands": [d for d, s in zip(fit.domains, island, strict=True) if s >= island_threshold],
        "transfer_matrix": fit.transfer_matrix.tolist(),
        "effective_transfer": e.tolist(),
        "thresholds": {"hub": hub_threshold, "island": island_threshold},
    }
