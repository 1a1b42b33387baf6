"""Timing and accuracy of the scaling-law fit, refit and allocation (mixpretrain.scaling).

Targets (issue 4): fit 3 domains from ~100 runs < 2 s, 8 domains < 20 s, allocation < 0.5 s; for the
online sampler, a warm refit on one run's history < 0.2 s (3 domains) and < 2 s (10 domains).

Baseline, measured side by side in the same process: a plain joint least-squares fit of the same
transfer law (all targets' parameters in one vector, finite-difference Jacobian, squared loss, one
start), the textbook way to fit it. Printed as time ratios, with the extrapolation error of both.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/scaling_fit.py [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import numpy as np
import scipy
from scipy.optimize import least_squares

from mixpretrain.scaling import LawFit, allocate, fit_laws, hubs_and_islands
from mixpretrain.scaling.synthetic import BUDGETS, make_world, observe, pilot_design


def naive_fit(D: np.ndarray, L: np.ndarray, domains: tuple[str, ...]) -> LawFit:
    """Joint fit of every parameter, finite differences, squared log error, one generic start."""
    k = len(domains)

    def unpack(v: np.ndarray) -> dict:
        E, logA, alpha = v[:k], v[k : 2 * k], v[2 * k : 3 * k]
        T = v[3 * k : 3 * k + k * k].reshape(k, k)
        g = v[3 * k + k * k :].reshape(k, k)
        return {"E": E, "A": np.exp(logA), "alpha": alpha, "T": T, "gamma": g, "d_ref": 1000.0}

    def resid(v: np.ndarray) -> np.ndarray:
        return (np.log(LawFit("transfer", domains, unpack(v)).predict(D)) - np.log(L)).ravel()

    v0 = np.concatenate([0.5 * L.min(axis=0), np.full(k, 1.0), np.full(k, 0.3), np.full(k * k, 0.1), np.ones(k * k)])
    lo = np.concatenate([np.zeros(k), np.full(k, -30.0), np.full(k, 0.01), np.zeros(k * k), np.full(k * k, 0.2)])
    hi = np.concatenate([L.min(axis=0) * 0.999, np.full(k, 60.0), np.full(k, 2.0), np.full(k * k, 20.0), np.full(k * k, 1.5)])
    res = least_squares(resid, v0, bounds=(lo, hi), method="trf", max_nfev=2000)
    return LawFit("transfer", domains, unpack(res.x))


def timed(fn, repeats: int):
    best, out = np.inf, None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def accuracy(world: LawFit, fit: LawFit, k: int, seed: int) -> tuple[float, float]:
    rng = np.random.default_rng(seed)
    Dt = pilot_design(k, [4 * max(BUDGETS)], rng, n_random=12)
    Lt = observe(world, Dt, rng)
    P = fit.predict(Dt)
    return float(np.corrcoef(P.ravel(), Lt.ravel())[0, 1]), float(np.median(np.abs(P / Lt - 1)))


def offline(k: int, n_random: int, repeats: int) -> None:
    world = make_world(k, seed=4, hub=0, island=k - 1)
    rng = np.random.default_rng(104)
    D = pilot_design(k, BUDGETS, rng, n_random=n_random)
    L = observe(world, D, rng)
    t_auto, fit = timed(lambda: fit_laws(D, L, world.domains, log_warnings=False), repeats)
    t_tr, fit_tr = timed(lambda: fit_laws(D, L, world.domains, family="transfer", log_warnings=False), repeats)
    t_naive, naive = timed(lambda: naive_fit(D, L, world.domains), 1)
    t_boot, _ = timed(lambda: fit_laws(D, L, world.domains, family="transfer", bootstrap=50, log_warnings=False), 1)
    budget = 4 * max(BUDGETS)
    t_alloc, alloc = timed(lambda: allocate(fit, budget), repeats)
    t_hub, _ = timed(lambda: hubs_and_islands(fit, alloc.weights * budget), repeats)
    true_opt = allocate(world, budget)
    ref = world.predict(np.full(k, budget / k))

    def obj(w):
        return float(np.mean(world.predict(budget * w) / ref))

    print(f"\n{k} domains, {len(D)} runs (budgets {BUDGETS[0]:g}..{BUDGETS[-1]:g}, 1% noise)")
    print(f"  fit auto (selection + refit) : {t_auto:7.3f} s  family={fit.family}")
    print(f"  fit transfer                 : {t_tr:7.3f} s")
    print(f"  fit transfer + 50 bootstrap  : {t_boot:7.3f} s")
    print(f"  baseline joint FD fit        : {t_naive:7.3f} s  -> ours is {t_naive / t_tr:.1f}x faster")
    for name, f in (("auto", fit), ("transfer", fit_tr), ("baseline", naive)):
        r, med = accuracy(world, f, k, 7)
        print(f"  4x-budget prediction {name:<9s}: r={r:.4f}  median rel err={med:.4f}")
    print(f"  allocate                     : {t_alloc:7.3f} s  true-law objective / optimum = "
          f"{obj(alloc.weights) / obj(true_opt.weights):.5f}")
    print(f"  hubs_and_islands             : {t_hub:7.4f} s")


def online(k: int, points: int, repeats: int) -> None:
    """One trajectory (cumulative consumption, dithered mixture, 3% noise); warm refit vs cold fit."""
    world = make_world(k, seed=2, hub=0, island=k - 1)
    rng = np.random.default_rng(0)
    w = np.exp(rng.normal(0, 0.5, (points, k)))
    D = np.cumsum(rng.poisson(32 * w / w.sum(axis=1, keepdims=True)), axis=0) + 1.0
    L = observe(world, D, rng, noise=0.03)
    prev = fit_laws(D[: points - 20], L[: points - 20], world.domains, family="transfer", log_warnings=False)
    t_warm, _ = timed(lambda: fit_laws(D, L, world.domains, family="transfer", init=prev, log_warnings=False), repeats)
    t_cold, _ = timed(lambda: fit_laws(D, L, world.domains, family="transfer", log_warnings=False), 1)
    print(f"\nonline refit, {k} domains, {points} points of one run: warm {t_warm:.3f} s, cold {t_cold:.3f} s "
          f"-> warm is {t_cold / t_warm:.1f}x faster")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3, help="best of N for the timed calls")
    args = ap.parse_args()
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; python {platform.python_version()}, "
          f"numpy {np.__version__}, scipy {scipy.__version__}; OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}")
    offline(3, 12, args.repeats)
    offline(8, 8, args.repeats)
    online(3, 400, args.repeats)
    online(10, 400, args.repeats)


if __name__ == "__main__":
    main()
