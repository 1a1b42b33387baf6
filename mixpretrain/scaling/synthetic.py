"""Ground-truth worlds: laws with known parameters and noisy pilot runs drawn from them.

Used by the tests and ``benchmarks/scaling_fit.py`` to check that fitting recovers the parameters,
predicts larger budgets and allocates like the true law, and by users to try a pilot design before
spending compute on it (how well would 3 budgets x 10 runs pin down T?).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .laws import LawFit

BUDGETS = (500.0, 1000.0, 2000.0, 4000.0, 8000.0, 16000.0)


def make_world(k: int = 3, seed: int = 0, hub: int | None = 0, island: int | None = None,
               gamma: tuple[float, float] = (0.85, 1.0), unique: Sequence[float | None] | None = None,
               r_star: float = 2.0, d_ref: float = 1000.0) -> LawFit:
    """A random world: asymmetric transfer T[i, j] ~ U(0.02, 0.2); a ``hub`` giving U(0.6, 0.9) to every
    other domain; an ``island`` receiving at most 0.01 from each; gamma ~ U(gamma); E ~ U(0.3, 0.6),
    A ~ U(2, 5), alpha ~ U(0.2, 0.45). With ``unique`` the world is a repetition world (decay ``r_star``)."""
    rng = np.random.default_rng(seed)
    T = rng.uniform(0.02, 0.2, (k, k))
    if hub is not None:
        T[hub, :] = rng.uniform(0.6, 0.9, k)
    if island is not None:
        T[:, island] = rng.uniform(0.0, 0.01, k)
    np.fill_diagonal(T, 0.0)
    g = rng.uniform(*gamma, (k, k))
    np.fill_diagonal(g, 1.0)
    params = {"E": rng.uniform(0.3, 0.6, k), "A": rng.uniform(2.0, 5.0, k), "alpha": rng.uniform(0.2, 0.45, k),
              "T": T, "gamma": g, "r_star": np.full(k, r_star), "unique": None if unique is None else list(unique),
              "d_ref": d_ref}
    family = "transfer" if unique is None else "repetition"
    return LawFit(family=family, domains=tuple(f"d{i}" for i in range(k)), params=params)


def pilot_design(k: int, budgets: Sequence[float], rng: np.random.Generator, n_random: int = 3) -> np.ndarray:
    """Single-domain runs, the uniform mixture and ``n_random`` Dirichlet mixtures per budget: D [runs, k]."""
    rows: list[np.ndarray] = []
    for b in budgets:
        rows += [np.eye(k)[i] * b for i in range(k)]
        rows.append(np.full(k, b / k))
        rows += [rng.dirichlet(np.ones(k)) * b for _ in range(n_random)]
    return np.array(rows)


def observe(world: LawFit, D: np.ndarray, rng: np.random.Generator, noise: float = 0.01) -> np.ndarray:
    """The world's losses at ``D`` with multiplicative log-normal noise (``noise`` = 0.01 is 1%)."""
    return world.predict(D) * np.exp(rng.normal(0.0, noise, np.shape(D)))
