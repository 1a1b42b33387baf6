"""``laws report``: PNG plots and a markdown summary of a fitted law.

Files written to the output directory:
- ``curves.png``: per target domain, loss against samples for training on each single source domain
  (and the uniform mixture), fitted curve, bootstrap band, and the runs of that kind as points (a run
  is matched by its planned weights: from ``plan.json`` by run name when a plan is given, else from
  the planner's names ``single-<domain>-<budget>`` / ``uniform-<budget>``, else its consumed shares);
- ``parity.png``: predicted against observed loss for every run and domain;
- ``transfer_matrix.png``: T as a heatmap (row = source, column = target);
- ``hubs_islands.png``: the transfer graph at the allocation, arrow width = effective transfer;
- ``allocation_vs_budget.png``: optimal weights as a function of the total budget;
- ``summary.md``: family and model selection, parameters (with bootstrap intervals), transfer
  matrix, hubs and islands, allocation, warnings.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from .allocate import allocate, hubs_and_islands
from .laws import LawFit


def _data(fit: LawFit) -> tuple[np.ndarray, np.ndarray, list[str]] | None:
    if not fit.data:
        return None
    D = np.asarray(fit.data["D"], dtype=float)
    L = np.asarray([[np.nan if v is None else v for v in row] for row in fit.data["L"]], dtype=float)
    return D, L, list(fit.data.get("runs", []))


def _budget_range(fit: LawFit, data: Any) -> tuple[float, float]:
    if data is not None:
        b = data[0].sum(axis=1)
        return float(b.min()) / 2, float(b.max()) * 4
    k = len(fit.domains)
    return fit.params["d_ref"] * k / 10, fit.params["d_ref"] * k * 40


def planned_fractions(fit: LawFit, runs: list[str], D: np.ndarray, plan: dict[str, Any] | None = None) -> np.ndarray:
    """[R, K] the mixture each run was planned with: the plan entry of that name, else the one the
    planner's run name says (single-<domain>-<budget>, uniform-<budget>), else the consumed shares.

    Consumed shares of a sampled run are only near its weights (uniform-64 may consume 30/17/17),
    so matching runs to curves by shares alone misses most of them.
    """
    k = len(fit.domains)
    entries = {e["run"]: e for e in (plan or {}).get("runs", []) if isinstance(e, dict) and "run" in e}
    frac = D / D.sum(axis=1, keepdims=True)
    # longest domain first, so "single-ct-a-100" is ct-a's and not ct's
    by_length = sorted(range(k), key=lambda i: -len(fit.domains[i]))
    for r, name in enumerate(runs[:len(D)]):
        entry = entries.get(name)
        if entry is not None and isinstance(entry.get("weights"), dict):
            w = np.array([float(entry["weights"].get(d, 0.0)) for d in fit.domains])
            if w.sum() > 0:
                frac[r] = w / w.sum()
            continue
        if name.startswith("uniform-"):
            frac[r] = np.full(k, 1.0 / k)
            continue
        i = next((i for i in by_length if name.startswith(f"single-{fit.domains[i]}-")), None)
        if i is not None:
            frac[r] = np.eye(k)[i]
    return frac


def plot_curves(fit: LawFit, data: Any, path: Path, plan: dict[str, Any] | None = None) -> None:
    import matplotlib.pyplot as plt

    k = len(fit.domains)
    lo, hi = _budget_range(fit, data)
    B = np.geomspace(lo, hi, 60)
    ncol = min(k, 3)
    nrow = int(np.ceil(k / ncol))
    fig, axes = plt.subplots(nrow, ncol, figsize=(4.2 * ncol, 3.4 * nrow), squeeze=False)
    colors = plt.get_cmap("tab10")
    frac = None if data is None else planned_fractions(fit, data[2], data[0], plan)
    for j, target in enumerate(fit.domains):
        ax = axes[j // ncol][j % ncol]
        sources = [(f"only {s}", np.eye(k)[i]) for i, s in enumerate(fit.domains)] + [("uniform", np.full(k, 1.0 / k))]
        for c, (label, w) in enumerate(sources):
            Dq = B[:, None] * w[None, :]
            pred = fit.predict(Dq)[:, j]
            band = fit.predict_interval(Dq)
            ax.plot(B, pred, color=colors(c), label=label)
            if fit.bootstrap:
                ax.fill_between(B, band[0][:, j], band[1][:, j], color=colors(c), alpha=0.2)
            if data is not None:
                D, L, _ = data
                m = np.all(np.abs(frac - w) < 1e-3, axis=1) & np.isfinite(L[:, j])
                ax.scatter(D[m].sum(axis=1), L[m, j], color=colors(c), s=14, zorder=3)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_title(f"target: {target}")
        ax.set_xlabel("samples consumed (total)")
        ax.set_ylabel(f"val loss on {target}")
    for j in range(k, nrow * ncol):
        axes[j // ncol][j % ncol].axis("off")
    axes[0][0].legend(fontsize=7)
    fig.suptitle(f"{fit.family} law: fitted curves" + (" with 90% bootstrap bands" if fit.bootstrap else ""))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_parity(fit: LawFit, data: Any, path: Path) -> None:
    import matplotlib.pyplot as plt

    D, L, _ = data
    P = fit.predict(D)
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    for j, d in enumerate(fit.domains):
        m = np.isfinite(L[:, j])
        ax.scatter(L[m, j], P[m, j], s=12, label=d)
    lim = [np.nanmin(np.r_[L[np.isfinite(L)], P.ravel()]) * 0.97, np.nanmax(np.r_[L[np.isfinite(L)], P.ravel()]) * 1.03]
    ax.plot(lim, lim, "k--", lw=0.8)
    ax.set_xlabel("observed loss")
    ax.set_ylabel("predicted loss")
    ax.legend(fontsize=7)
    ax.set_title("fit: predicted vs observed")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_transfer(fit: LawFit, path: Path) -> None:
    import matplotlib.pyplot as plt

    T = fit.transfer_matrix
    k = len(fit.domains)
    fig, ax = plt.subplots(figsize=(1.0 + 0.8 * k, 0.8 + 0.7 * k))
    im = ax.imshow(T, cmap="viridis")
    ax.set_xticks(range(k), fit.domains, rotation=45)
    ax.set_yticks(range(k), fit.domains)
    ax.set_xlabel("target j")
    ax.set_ylabel("source i")
    for i in range(k):
        for j in range(k):
            ax.text(j, i, f"{T[i, j]:.2f}", ha="center", va="center", color="w" if T[i, j] < T.max() / 2 else "k", fontsize=8)
    fig.colorbar(im, ax=ax, label=f"T[i, j] at {fit.params['d_ref']:g} samples")
    ax.set_title("transfer matrix")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_graph(fit: LawFit, hi: dict[str, Any], path: Path) -> None:
    import matplotlib.pyplot as plt

    k = len(fit.domains)
    ang = np.linspace(0, 2 * np.pi, k, endpoint=False) + np.pi / 2
    pos = np.stack([np.cos(ang), np.sin(ang)], axis=1)
    e = np.asarray(hi["effective_transfer"])
    emax = max(float(np.max(e - np.diag(np.diag(e)))), 1e-12)
    fig, ax = plt.subplots(figsize=(5, 5))
    for i in range(k):
        for j in range(k):
            if i == j or e[i, j] < 0.02 * emax:
                continue
            ax.annotate("", xy=pos[j] * 0.85, xytext=pos[i] * 0.85,
                        arrowprops={"arrowstyle": "-|>", "lw": 0.5 + 5 * e[i, j] / emax, "alpha": 0.6,
                                    "connectionstyle": "arc3,rad=0.15", "color": "tab:blue"})
    for i, d in enumerate(fit.domains):
        color = "tab:red" if d in hi["hubs"] else ("tab:gray" if d in hi["islands"] else "tab:green")
        ax.scatter(*pos[i], s=900, color=color, zorder=3)
        ax.text(*pos[i], d, ha="center", va="center", color="w", fontsize=9, zorder=4)
    ax.set_xlim(-1.4, 1.4)
    ax.set_ylim(-1.4, 1.4)
    ax.axis("off")
    ax.set_title("transfer graph (red: hub, gray: island)\narrow width: effective transfer at the allocation")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_allocation(fit: LawFit, budgets: np.ndarray, weights: np.ndarray, path: Path) -> None:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.6))
    ax.stackplot(budgets, weights.T, labels=fit.domains, alpha=0.85)
    ax.set_xscale("log")
    ax.set_ylim(0, 1)
    ax.set_xlabel("total budget (samples)")
    ax.set_ylabel("weight")
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8)
    ax.set_title("optimal mixture vs budget")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + ["| " + " | ".join(r) + " |" for r in rows]


def _summary(fit: LawFit, alloc: Any, hi: dict[str, Any], curve: list[tuple[float, Any]], files: list[str]) -> str:
    k = len(fit.domains)
    p = fit.params
    ci = fit.param_ci()
    lines = [f"# Transfer scaling law: {fit.family}", ""]
    lines += [f"- domains: {', '.join(fit.domains)}; runs: {fit.stats.get('n_runs', '?')}; "
              f"training mean |log error|: {fit.stats.get('train_mean_abs_log_error', float('nan')):.4f}",
              f"- reference scale d_ref = {p['d_ref']:g} samples (T[i, j] = own-sample equivalents of one sample of i for j at d_ref)"]
    if fit.selection:
        lines += ["", "## Model selection", "", f"method: {fit.selection.get('method')}"]
        if "n_test" in fit.selection:
            lines.append(f"(held out: {fit.selection['n_test']} runs with total budget >= {fit.selection['min_test_budget']:g})")
        lines += [""] + _table(["family", "score"], [[f, f"{s:.5f}" + (" (chosen)" if f == fit.family else "")]
                                                      for f, s in fit.selection.get("scores", {}).items()])
    lines += ["", "## Parameters", ""]
    rows = []
    for j, d in enumerate(fit.domains):
        def cell(key: str, val: float, j: int = j) -> str:
            return f"{val:.4g}" + (f" [{ci[key][0][j]:.3g}, {ci[key][1][j]:.3g}]" if ci else "")
        rows.append([d, cell("E", p["E"][j]), cell("A", p["A"][j]), cell("alpha", p["alpha"][j]),
                     f"{p['r_star'][j]:.3g}" if np.isfinite(p["unique"][j]) else "-"])
    lines += _table(["domain", "E", "A", "alpha", "R*"], rows)
    if ci:
        lines.append("\n(brackets: 90% bootstrap intervals over resampled runs)")
    lines += ["", "## Transfer matrix T[i -> j] (gamma in brackets)", ""]
    lines += _table(["source \\ target"] + list(fit.domains),
                    [[s] + ["-" if i == j else f"{p['T'][i, j]:.3f} ({p['gamma'][i, j]:.2f})" for j in range(k)]
                     for i, s in enumerate(fit.domains)])
    lines += ["", f"## Allocation at {alloc.budget:g} samples", ""]
    lines += _table(["domain", "weight", "predicted loss", "proportional weight", "hub score", "island score"],
                    [[d, f"{alloc.weights[j]:.3f}", f"{alloc.predicted[j]:.4f}", f"{alloc.proportional[j]:.3f}",
                      f"{hi['hub_score'][d]:.3f}", f"{hi['island_score'][d]:.3f}"] for j, d in enumerate(fit.domains)])
    lines += ["", f"- gain vs proportional: {alloc.gain_vs_proportional:.2%} of the mean normalised loss "
              f"({alloc.reducible_gain_vs_proportional:.2%} of the reducible loss); gain vs uniform: {alloc.gain_vs_uniform:.2%}",
              f"- hubs: {', '.join(hi['hubs']) or 'none'}; islands: {', '.join(hi['islands']) or 'none'}"]
    lines += ["", "## Allocation vs budget", ""]
    lines += _table(["budget"] + list(fit.domains), [[f"{b:.3g}"] + [f"{w:.3f}" for w in a.weights] for b, a in curve])
    if fit.warnings:
        lines += ["", "## Warnings", ""] + [f"- {w}" for w in fit.warnings]
    lines += ["", "## Files", ""] + [f"- `{f}`" for f in files]
    return "\n".join(lines) + "\n"


def write_report(fit: LawFit, out_dir: str | Path, budget: float | None = None, importance: Any = None,
                 caps: Any = None, floor: float = 0.0, plan: dict[str, Any] | None = None) -> list[Path]:
    """Write the plots and summary.md; returns the files written. ``plan``: the pilots' plan.json
    (matches runs to the curves by name); ``budget`` None: the top of the plotted range (4x the
    largest run's total when the fit keeps its runs)."""
    import matplotlib

    matplotlib.use("Agg")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    data = _data(fit)
    lo, hi_b = _budget_range(fit, data)
    budget = hi_b if budget is None else budget
    alloc = allocate(fit, budget, importance=importance, caps=caps, floor=floor)
    hi = hubs_and_islands(fit, alloc.weights * budget, importance=importance)
    budgets = np.geomspace(lo, max(hi_b, budget), 10)
    curve = []
    for b in budgets:
        try:
            curve.append((float(b), allocate(fit, b, importance=importance, caps=caps, floor=floor, n_starts=3)))
        except ValueError:  # caps below this budget: the curve stops where the budget is infeasible
            continue
    files = [out / "curves.png", out / "transfer_matrix.png", out / "hubs_islands.png", out / "allocation_vs_budget.png"]
    plot_curves(fit, data, files[0], plan)
    plot_transfer(fit, files[1])
    plot_graph(fit, hi, files[2])
    plot_allocation(fit, np.array([b for b, _ in curve]), np.array([a.weights for _, a in curve]), files[3])
    if data is not None:
        files.append(out / "parity.png")
        plot_parity(fit, data, files[-1])
    files.append(out / "summary.md")
    files[-1].write_text(_summary(fit, alloc, hi, curve, [f.name for f in files]))
    return files
