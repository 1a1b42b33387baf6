"""Pilot planner (``laws plan``) and result collection (``laws collect``).

A pilot grid that identifies the transfer law:
- single-domain runs of every domain at every budget: each gives its own curve (E_j, A_j, alpha_j)
  and, through the other domains' validation losses, the cross-domain curves (T_ij, gamma_ij);
- uniform and data-proportional mixtures at every budget: the baselines the allocation is compared
  with, and a check of how the effective data of several sources adds up;
- random (Dirichlet) mixtures: ratios no other run has, which separate T_ij from the own term.
Three or more budgets are needed to fit exponents and to hold out the largest for model selection.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)


def budget_tag(budget: float) -> str:
    """A budget as written in run names: integers as integers (1234567, not 1.23457e+06), other
    numbers exactly (repr), so distinct budgets never share a name."""
    b = float(budget)
    return str(int(b)) if b.is_integer() else repr(b)


def check_unique(unique: dict[str, float] | None, domains: list[str]) -> None:
    """``--unique`` must give every domain and no other (errors name the missing and unknown ones)."""
    if not unique:
        return
    missing = [d for d in domains if d not in unique]
    unknown = [d for d in unique if d not in domains]
    if missing or unknown:
        why = "; ".join(([f"missing {', '.join(missing)}"] if missing else [])
                        + ([f"unknown {', '.join(unknown)}"] if unknown else []))
        raise ValueError(f"--unique must give every domain ({', '.join(domains)}) and no other: {why}")
    bad = {d: v for d, v in unique.items() if not (math.isfinite(v) and v >= 0)}
    if bad or sum(unique.values()) <= 0:  # the proportional mixture divides by the total
        raise ValueError(f"--unique: counts must be finite, >= 0 and not all 0, got {bad or unique}")


def _pilot_mixtures(domains: list[str], unique: dict[str, float], budgets: list[float], n_random: int,
                    seed: int) -> tuple[list[tuple[str, str, float, dict[str, float]]], list[str]]:
    """(name, kind, budget, weights) for every pilot run, and notes on the mixtures left out.

    A mixture with the same weights as one already planned at its budget (proportional with equal
    unique counts is uniform) is left out: it would train the same run twice under two names.
    """
    rng = np.random.default_rng(seed)
    k = len(domains)
    runs: list[tuple[str, str, float, dict[str, float]]] = []
    skipped: dict[tuple[str, str], list[str]] = {}
    for b in budgets:
        tag = budget_tag(b)
        mixes = [(f"single-{d}-{tag}", "single", {x: float(x == d) for x in domains}) for d in domains]
        if k > 1:
            mixes.append((f"uniform-{tag}", "uniform", {x: 1.0 / k for x in domains}))
        if unique and k > 1:
            tot = sum(unique[d] for d in domains)
            mixes.append((f"proportional-{tag}", "proportional", {x: unique[x] / tot for x in domains}))
        for r in range(n_random if k > 1 else 0):
            w = rng.dirichlet(np.ones(k))
            mixes.append((f"random{r}-{tag}", "random", {x: float(v) for x, v in zip(domains, w, strict=True)}))
        planned: list[tuple[str, dict[str, float]]] = []
        for name, kind, weights in mixes:
            same = next((n for n, w in planned if all(abs(w[x] - weights[x]) <= 1e-12 for x in domains)), None)
            if same is not None:
                skipped.setdefault((name.removesuffix(f"-{tag}"), same.removesuffix(f"-{tag}")), []).append(tag)
                log.info("pilot %s left out: same weights as %s", name, same)
                continue
            planned.append((name, weights))
            runs.append((name, kind, b, weights))
    notes = [f"{run} left out at budget(s) {', '.join(tags)}: same weights as {same}"
             + (" (the unique counts are equal)" if run == "proportional" and same == "uniform" else "")
             for (run, same), tags in skipped.items()]
    return runs, notes


# What plan_pilots sets in every pilot config, whatever the base config says: a change of these in
# the base config changes no pilot, so the base config's fingerprint leaves them out.
PLANNED_KEYS = ("output_dir", "data.domains", "sampler.name", "sampler.options", "train.max_steps")


def is_planned_key(key: str) -> bool:
    """A flattened config key that plan_pilots sets in every pilot config (``PLANNED_KEYS``)."""
    return key in PLANNED_KEYS or key.startswith("sampler.options.")


def base_config_record(base_config: str | Path | None) -> dict[str, Any]:
    """How ``plan.json`` identifies the base config a plan was made from: the path as given, the
    resolved path, and ``config_fingerprint`` of the loaded config (so formatting and comments do
    not count) without the keys every pilot config overrides (``PLANNED_KEYS``)."""
    from mixpretrain.config import config_fingerprint, config_to_dict, flatten, load_config

    cfg = load_config(base_config)
    ignore = tuple(k for k in flatten(config_to_dict(cfg)) if is_planned_key(k))
    return {"base_config": None if base_config is None else str(base_config),
            "base_config_path": None if base_config is None else str(Path(base_config).resolve()),
            "base_config_fingerprint": config_fingerprint(cfg, ignore=ignore)}


def plan_pilots(domains: list[str], budgets: list[float], base_config: str | Path | None, out_dir: str | Path,
                unique: dict[str, float] | None = None, n_random: int = 2, seed: int = 0, world_size: int = 1,
                overwrite: bool = False) -> dict[str, Any]:
    """Write one run config YAML per pilot run under ``out_dir/configs`` and ``out_dir/plan.json``."""
    import yaml

    from mixpretrain.config import config_from_dict, config_to_dict, load_config

    if len(set(domains)) != len(domains) or not domains:
        raise ValueError(f"--domains must list distinct domains, got {domains}")
    if len(budgets) < 1 or any(not (b > 0) for b in budgets):
        raise ValueError(f"--budgets must be positive sample counts, got {budgets}")
    repeated = sorted({b for b in budgets if budgets.count(b) > 1})
    if repeated:
        raise ValueError(f"--budgets lists {', '.join(budget_tag(b) for b in repeated)} more than once: "
                         "each budget is planned once (runs are named by budget)")
    unique = unique or {}
    check_unique(unique, domains)
    out = Path(out_dir)
    plan_path = out / "plan.json"
    if plan_path.exists() and not overwrite:
        raise FileExistsError(f"{plan_path} exists; pass --overwrite to replace the plan")
    base = config_to_dict(load_config(base_config))
    global_batch = base["train"]["micro_batch_size"] * base["train"]["grad_accum_steps"] * world_size
    mixtures, skip_notes = _pilot_mixtures(domains, unique, sorted(budgets), n_random, seed)
    notes = _design_notes(domains, sorted(budgets), unique) + skip_notes
    entries = []
    (out / "configs").mkdir(parents=True, exist_ok=True)
    for name, kind, budget, weights in mixtures:
        steps = max(1, math.ceil(budget / global_batch))
        raw = json.loads(json.dumps(base))
        raw["output_dir"] = str(out / "runs" / name)
        raw["data"]["domains"] = list(domains)
        raw["sampler"]["name"] = "fixed"
        # floor 0: the fixed sampler would otherwise raise every weight to its default floor
        # min(0.01, 0.5/K), and a single-domain pilot would train on the other domains too
        raw["sampler"]["options"] = {"weights": weights, "floor": 0.0}
        raw["train"]["max_steps"] = steps
        raw["train"]["eval_every"] = min(raw["train"]["eval_every"], steps)
        raw["train"]["checkpoint_every"] = min(raw["train"]["checkpoint_every"], steps)
        config_from_dict(raw)  # the trainer's own validation: a plan never holds an invalid config
        path = out / "configs" / f"{name}.yaml"
        path.write_text(yaml.safe_dump(raw, sort_keys=False))
        entries.append({"run": name, "kind": kind, "budget": budget, "samples": steps * global_batch,
                        "max_steps": steps, "weights": weights, "config": str(path), "output_dir": raw["output_dir"]})
    plan = {"domains": list(domains), "budgets": sorted(budgets), "unique": unique or None, **base_config_record(base_config),
            "global_batch": global_batch, "world_size": world_size, "n_random": n_random, "seed": seed, "runs": entries,
            "notes": notes}
    plan_path.write_text(json.dumps(plan, indent=2))
    return plan


def _design_notes(domains: list[str], budgets: list[float], unique: dict[str, float]) -> list[str]:
    notes = []
    if len(budgets) < 3:
        notes.append(f"{len(budgets)} budget(s): exponents are weakly identified and the largest budget cannot be held out "
                     "for model selection (AICc is used instead); plan 3 or more")
    if len(budgets) >= 2 and budgets[-1] / budgets[0] < 4:
        notes.append("budgets span less than 4x: extrapolation to much larger budgets will be uncertain")
    for d in domains:
        u = unique.get(d)
        if u and budgets[-1] > u:
            notes.append(f"single-{d} runs above {u:g} samples repeat its data: they identify {d}'s repetition decay (R*)")
    return notes


def _read_jsonl(path: Path) -> tuple[list[dict[str, Any]], int]:
    records, bad = [], 0
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:  # a torn last line of a killed run
            bad += 1
            continue
        if isinstance(rec, dict):
            records.append(rec)
    return records, bad


def _max_steps(run_dir: Path) -> int | None:
    """The planned steps from the trainer's run.json (None when absent)."""
    path = run_dir / "run.json"
    try:
        return int(json.loads(path.read_text())["config"]["train"]["max_steps"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def collect_run(run_dir: Path, allow_unfinished: bool = False) -> tuple[dict[str, float], dict[str, float]]:
    """(consumed, val losses) at the last record with validation losses, or ValueError saying why not."""
    metrics = run_dir / "metrics.jsonl"
    if not metrics.is_file():
        raise ValueError(f"{run_dir}: no metrics.jsonl (not started, or not a run directory)")
    records, bad = _read_jsonl(metrics)
    if bad:
        log.warning("%s: skipped %d unreadable line(s)", metrics, bad)
    val_recs = [r for r in records if any(k.startswith("val/") for k in r)]
    if not val_recs:
        raise ValueError(f"{metrics}: no record with val/<domain> losses (no evaluation yet)")
    last = val_recs[-1]
    planned = _max_steps(run_dir)
    if planned is not None and int(last.get("step", -1)) < planned and not allow_unfinished:
        raise ValueError(f"{run_dir}: last evaluation at step {last.get('step')} of {planned}: unfinished "
                         "(pass --allow-unfinished to use it anyway)")
    consumed = last.get("consumed")
    if not isinstance(consumed, dict) or not consumed:
        raise ValueError(f"{metrics}: the last evaluation record (step {last.get('step')}) has no 'consumed' counts")
    losses = {k[4:]: float(v) for k, v in last.items() if k.startswith("val/") and isinstance(v, int | float)}
    return {d: float(n) for d, n in consumed.items()}, losses


def resolve_run_dir(arg: str) -> Path:
    """A run directory, or a run config YAML (then its output_dir)."""
    p = Path(arg)
    if p.is_file() and p.suffix in (".yaml", ".yml"):
        import yaml

        raw = yaml.safe_load(p.read_text()) or {}
        if not isinstance(raw, dict) or "output_dir" not in raw:
            raise ValueError(f"{p}: run config without output_dir")
        return Path(raw["output_dir"])
    return p


def collect_runs(run_args: list[str], allow_unfinished: bool = False) -> tuple[list[str], list[str], np.ndarray, np.ndarray, list[str]]:
    """Runs that could be read -> (names, domains, D, L, skip messages)."""
    names, cons, vals, skipped = [], [], [], []
    for arg in run_args:
        try:
            run_dir = resolve_run_dir(arg)
            c, v = collect_run(run_dir, allow_unfinished)
        except ValueError as exc:
            skipped.append(str(exc))
            log.warning("skipped: %s", exc)
            continue
        names.append(run_dir.name)
        cons.append(c)
        vals.append(v)
    if len(set(names)) != len(names):
        dup = sorted({n for n in names if names.count(n) > 1})
        raise ValueError(f"run names repeat ({', '.join(dup)}): each run directory needs its own name")
    # The trainer's domain order (consumed dicts keep it), then any domain seen only in val losses.
    domains = list(dict.fromkeys([d for c in cons for d in c] + [d for v in vals for d in v]))
    D = np.array([[c.get(d, 0.0) for d in domains] for c in cons]).reshape(len(names), len(domains))
    L = np.array([[v.get(d, math.nan) for d in domains] for v in vals]).reshape(len(names), len(domains))
    return names, domains, D, L, skipped
