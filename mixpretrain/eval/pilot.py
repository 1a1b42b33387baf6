"""The paper's offline workflow in one call: pilot grid -> trainer -> results CSV -> laws -> allocation.

    run_pilot_sweep("outputs/pilot", base_config="configs/demo.yaml", budgets=[400, 800, 1600])

1. plan: ``mixpretrain.scaling.planner.plan_pilots`` writes one run config per pilot run
   (single-domain runs, uniform, proportional and random mixtures at every budget) and
   ``plan.json``; an existing ``plan.json`` in ``out_dir`` is reused, so a re-run resumes the sweep
   (with the same planning arguments and base config: other ones are refused, naming each; a base
   config counts as changed when it is another file or its content changed, by the fingerprint
   ``plan.json`` records);
2. run (``mode="run"``): every unfinished pilot goes through ``launch/pretrain.py`` as a
   subprocess (one after another; a failed run is logged, counted and left out of the fit);
   ``mode="emit"`` only writes ``run_pilots.sh`` with the commands (e.g. to submit them to a
   cluster) and stops; ``mode="collect"`` runs nothing and fits whatever has finished;
3. collect: ``results.csv`` (``run, D_<domain>, L_<domain>``) from the runs' ``metrics.jsonl``;
4. fit: ``laws.json`` (``fit_laws``; the runs are kept inside for ``laws report``);
5. allocate: ``allocation.json`` at ``alloc_budget`` samples (default 4x the largest pilot
   budget), with hubs and islands -- readable by the ``fixed`` sampler (``sampler.options.laws``,
   with ``floor`` as in the file: the sampler's default floor would raise weights below it);
   and ``report/`` (plots, summary.md) from ``scaling.report.write_report``.

No torch import at module level (the trainer runs in subprocesses).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import shlex
import time
from pathlib import Path
from typing import Any

from .runner import LAUNCHERS, launch_command, run_one

log = logging.getLogger(__name__)

MODES = ("run", "emit", "collect")


def unique_from_index(base_config: str | Path | None, domains: list[str] | None) -> tuple[list[str], dict[str, float]]:
    """(domains, unique samples per domain) from the base config's shards index.

    Unique samples count k crops of each training volume as one pass, as the trainer does.
    """
    from mixpretrain.config import load_config
    from mixpretrain.data.shards import load_index

    cfg = load_config(base_config)
    index = load_index(cfg.data.shards)["domains"]
    domains = list(domains or cfg.data.domains or sorted(index))
    missing = [d for d in domains if d not in index]
    if missing:
        raise ValueError(f"domains {missing} are not in {cfg.data.shards}/index.json (has {sorted(index)})")
    unique = {d: float(index[d]["splits"]["train"]["samples"] * cfg.data.crops_per_volume) for d in domains}
    return domains, unique


def _changed_plan_arguments(plan: dict[str, Any], domains: list[str], budgets: list[float], unique: dict[str, float],
                            n_random: int, seed: int, nproc: int) -> list[str]:
    """'--flag old -> new' for every planning argument that differs from the saved plan's.

    --random and --seed only shape the random mixtures, --unique only the proportional one: they
    are compared where the plan has those mixtures (several domains; random ones for --seed).
    """
    from mixpretrain.scaling.planner import budget_tag

    def kv(values: dict[str, float] | None) -> str:
        return ",".join(f"{d}={budget_tag(v)}" for d, v in sorted((values or {}).items())) or "none"

    saved_random = plan.get("n_random")
    if saved_random is None:  # a plan written before n_random was saved: count its random mixtures
        saved_random = len({r["run"].split("-")[0] for r in plan["runs"] if r.get("kind") == "random"})
    checks: list[tuple[str, Any, Any]] = [
        ("--domains", ",".join(plan["domains"]), ",".join(domains)),
        ("--budgets", ",".join(budget_tag(b) for b in sorted(plan["budgets"])), ",".join(budget_tag(b) for b in sorted(budgets))),
        ("--nproc", int(plan.get("world_size", 1)), int(nproc)),
    ]
    if len(plan["domains"]) > 1:
        checks.append(("--random", int(saved_random), int(n_random)))
        if saved_random:
            checks.append(("--seed", int(plan.get("seed", 0)), int(seed)))
        checks.append(("--unique", kv(plan.get("unique")), kv({d: unique[d] for d in domains if d in unique})))
    return [f"{flag} {old} -> {new}" for flag, old, new in checks if old != new]


def _show_config(path: str | None) -> str:
    return "none (built-in defaults)" if path is None else path


def _base_config_keys(plan: dict[str, Any], base_config: str | Path | None) -> list[str]:
    """Keys in which ``base_config`` differs from the base of the saved pilot configs (keys every
    pilot sets, or lowers to its steps, left out); [] when no saved pilot config can be read."""
    import yaml

    from mixpretrain.config import config_diff, config_to_dict, load_config
    from mixpretrain.scaling.planner import is_planned_key

    try:
        saved = yaml.safe_load(Path(plan["runs"][0]["config"]).read_text())
    except (OSError, KeyError, IndexError, TypeError, yaml.YAMLError):
        return []
    if not isinstance(saved, dict):
        return []
    lowered = ("train.eval_every", "train.checkpoint_every")  # min(base value, pilot steps)
    return [k for k in config_diff(saved, config_to_dict(load_config(base_config)))
            if not is_planned_key(k) and k not in lowered]


def _changed_base_config(plan: dict[str, Any], plan_path: Path, base_config: str | Path | None) -> list[str]:
    """['--base-config old -> new, ...'] when the base config's content changed since the plan was
    made (the same file edited, or another file); [] when the content is the same (at the same path
    or another: logged), or cannot be checked (a plan.json written before the fingerprint was
    recorded: logged)."""
    from mixpretrain.scaling.planner import base_config_record

    saved_fp = plan.get("base_config_fingerprint")
    if saved_fp is None:
        log.warning("%s records no fingerprint of its base config (planned before plan.json recorded one): "
                    "the base config could not be checked (planned from %s, now --base-config %s)",
                    plan_path, _show_config(plan.get("base_config")), _show_config(None if base_config is None else str(base_config)))
        return []
    now = base_config_record(base_config)
    old_path = _show_config(plan.get("base_config"))
    new_path = _show_config(now["base_config"])
    other_file = (plan.get("base_config") != now["base_config"]
                  and plan.get("base_config_path") != now["base_config_path"])
    if saved_fp == now["base_config_fingerprint"]:
        # Same content: the same pilots (a config moved, renamed, or in a checkout at another path).
        if other_file:
            log.info("%s: --base-config %s has the content %s had when the sweep was planned: resuming",
                     plan_path, new_path, old_path)
        return []
    keys = _base_config_keys(plan, base_config)
    what = (f"in {', '.join(keys)}" if keys
            else f"fingerprint {saved_fp} -> {now['base_config_fingerprint']}")
    if other_file:
        return [f"--base-config {old_path} -> {new_path}, content differs {what}"]
    return [f"--base-config {new_path}: content changed since planning, {what}"]


def _load_or_plan(out: Path, domains: list[str], budgets: list[float], base_config: str | Path | None,
                  unique: dict[str, float], n_random: int, seed: int, nproc: int, overwrite: bool) -> dict[str, Any]:
    from mixpretrain.scaling.planner import plan_pilots

    plan_path = out / "plan.json"
    if plan_path.is_file() and not overwrite:
        plan = json.loads(plan_path.read_text())
        changed = (_changed_base_config(plan, plan_path, base_config)
                   + _changed_plan_arguments(plan, domains, budgets, unique, n_random, seed, nproc))
        if changed:
            raise ValueError(f"{plan_path} was planned for other arguments ({'; '.join(changed)}): resume with the "
                             "saved ones, or use another output folder, or --overwrite to plan again")
        log.info("resuming the pilot sweep planned in %s (%d runs)", plan_path, len(plan["runs"]))
        return plan
    return plan_pilots(domains, budgets, base_config, out, unique=unique, n_random=n_random, seed=seed,
                       world_size=nproc, overwrite=overwrite)


def _emit(out: Path, plan: dict[str, Any], launcher: str, nproc: int) -> Path:
    lines = ["#!/usr/bin/env bash", "# pilot runs planned by mixpretrain laws pilot; each resumes if re-run", "set -e"]
    lines += [shlex.join(launch_command(Path(r["config"]), launcher, nproc)) for r in plan["runs"]]
    path = out / "run_pilots.sh"
    path.write_text("\n".join(lines) + "\n")
    path.chmod(0o755)
    return path


def _fit_and_allocate(out: Path, plan: dict[str, Any], unique: dict[str, float], family: str, alloc_budget: float | None,
                      importance: dict[str, float] | None, floor: float, bootstrap: int, seed: int,
                      report: bool) -> dict[str, Any]:
    from mixpretrain.scaling import allocate, fit_laws, hubs_and_islands
    from mixpretrain.scaling.planner import collect_runs
    from mixpretrain.scaling.report import write_report
    from mixpretrain.scaling.results import Results, write_results

    names, domains, D, L, skipped = collect_runs([r["output_dir"] for r in plan["runs"]])
    if not names:
        raise ValueError("no finished pilot run to fit: " + "; ".join(skipped))
    write_results(out / "results.csv", names, domains, D, L)
    uniq = {d: unique[d] for d in domains} if unique else None
    fit = fit_laws(D, L, domains, family=family, unique=uniq, bootstrap=bootstrap, seed=seed)
    fit.data = Results(names, tuple(domains), D, L).to_data()
    (out / "laws.json").write_text(json.dumps(fit.to_dict(), indent=1))
    budget = float(4 * max(plan["budgets"]) if alloc_budget is None else alloc_budget)
    alloc = allocate(fit, budget, importance=importance, floor=floor)
    hi = hubs_and_islands(fit, alloc.weights * budget, importance=importance)
    doc = {**alloc.to_dict(), "floor": floor, "domains": list(fit.domains), "family": fit.family,
           **{k: hi[k] for k in ("hubs", "islands", "hub_score", "island_score")}}
    (out / "allocation.json").write_text(json.dumps(doc, indent=1, default=float))
    files = [str(p) for p in write_report(fit, out / "report", budget=budget, importance=importance, floor=floor,
                                          plan=plan)] if report else []
    return {"runs_fitted": names, "skipped": skipped, "family": fit.family, "warnings": fit.warnings,
            "allocation": doc, "report_files": files}


def run_pilot_sweep(out_dir: str | Path, base_config: str | Path | None, budgets: list[float], domains: list[str] | None = None,
                    unique: dict[str, float] | None = None, n_random: int = 2, seed: int = 0, mode: str = "run",
                    launcher: str = "python", nproc: int = 1, family: str = "auto", alloc_budget: float | None = None,
                    importance: dict[str, float] | None = None, floor: float = 0.0, bootstrap: int = 0,
                    timeout: float | None = None, overwrite: bool = False, report: bool = True) -> dict[str, Any]:
    """Plan, run (or emit), collect, fit and allocate; returns a summary (also in ``out_dir/pilot.json``).

    ``importance``: domains left out count 1 (as ``--importance`` of ``laws allocate``). The
    allocation arguments are checked before any pilot trains.
    """
    from mixpretrain.scaling.planner import check_unique

    if mode not in MODES:
        raise ValueError(f"pilot mode {mode!r} unknown; valid: {', '.join(MODES)}")
    if launcher not in LAUNCHERS:
        raise ValueError(f"launcher {launcher!r} unknown; valid: {', '.join(LAUNCHERS)}")
    domains, index_unique = unique_from_index(base_config, domains)
    check_unique(unique, domains)
    unique = unique or index_unique
    if alloc_budget is not None and not (math.isfinite(alloc_budget) and alloc_budget > 0):
        raise ValueError(f"--budget {alloc_budget:g}: the allocation budget must be a positive number of samples")
    if not (math.isfinite(floor) and 0.0 <= floor <= 1.0 / len(domains)):
        raise ValueError(f"--floor {floor:g}: the minimum weight of every domain must be in [0, 1/{len(domains)}] "
                         f"({len(domains)} domains)")
    if importance:
        unknown = [d for d in importance if d not in domains]
        if unknown:
            raise ValueError(f"--importance: unknown domain(s) {', '.join(unknown)}; domains are {', '.join(domains)}")
        importance = {d: importance.get(d, 1.0) for d in domains}
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    plan = _load_or_plan(out, domains, budgets, base_config, unique, n_random, seed, nproc, overwrite)
    summary: dict[str, Any] = {"out_dir": str(out), "plan": str(out / "plan.json"), "n_runs": len(plan["runs"]),
                               "mode": mode, "unique": unique, "notes": plan.get("notes", [])}
    if mode == "emit":
        summary["script"] = str(_emit(out, plan, launcher, nproc))
        log.info("pilot commands written to %s; run them, then `laws pilot --mode collect`", summary["script"])
        return summary
    t0 = time.perf_counter()
    if mode == "run":
        summary["runs"] = {
            r["run"]: run_one(Path(r["config"]), Path(r["output_dir"]), int(r["max_steps"]), out / "logs" / f"{r['run']}.log",
                              launcher, nproc, timeout)
            for r in plan["runs"]
        }
        failed = [n for n, s in summary["runs"].items() if s["status"] == "failed"]
        if failed:
            log.error("%d pilot run(s) failed and are left out of the fit: %s", len(failed), ", ".join(failed))
    summary["run_s"] = round(time.perf_counter() - t0, 1)
    summary.update(_fit_and_allocate(out, plan, unique, family, alloc_budget, importance, floor, bootstrap, seed, report))
    summary.update({"results": str(out / "results.csv"), "laws": str(out / "laws.json"),
                    "allocation_file": str(out / "allocation.json")})
    (out / "pilot.json").write_text(json.dumps(summary, indent=1, default=str))
    return summary


# ----------------------------------------------------------------------------- CLI (wired as `laws pilot`)


def add_pilot_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--base-config", required=True, help="run config YAML the pilots start from (data, model, batch)")
    p.add_argument("--budgets", required=True, help="total samples per pilot run, e.g. 400,800,1600")
    p.add_argument("--domains", help="ct,mri,pet (default: the config's data.domains, else every domain in the index)")
    p.add_argument("--unique", help="unique samples per domain ct=N,... (default: from the shards index)")
    p.add_argument("--random", type=int, default=2, help="random mixtures per budget")
    p.add_argument("--mode", default="run", choices=MODES,
                   help="run: train unfinished pilots then fit; emit: only write run_pilots.sh; collect: fit what finished")
    p.add_argument("--launcher", default="python", choices=LAUNCHERS)
    p.add_argument("--nproc", type=int, default=1, help="processes per pilot run (torchrun)")
    p.add_argument("--family", default="auto", choices=["auto", "power", "linear", "transfer", "repetition"])
    p.add_argument("--budget", type=float, help="allocation budget in samples (default: 4x the largest pilot budget)")
    p.add_argument("--importance", help="per-domain importance ct=2,... (unlisted domains: 1; default: equal)")
    p.add_argument("--floor", type=float, default=0.0)
    p.add_argument("--bootstrap", type=int, default=0, help="bootstrap refits for confidence intervals")
    p.add_argument("--timeout", type=float, help="seconds per pilot run")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-report", action="store_true", help="skip the plots and summary.md")
    p.add_argument("--overwrite", action="store_true", help="re-plan even if plan.json exists")
    p.add_argument("-o", "--output", required=True, help="sweep folder: configs/, runs/, logs/, results.csv, laws.json ...")


def cmd_pilot(args: argparse.Namespace) -> int:
    from mixpretrain.scaling.results import parse_kv

    budgets = [float(b) for b in args.budgets.split(",") if b.strip()]
    domains = [d.strip() for d in args.domains.split(",") if d.strip()] if args.domains else None
    summary = run_pilot_sweep(
        args.output, args.base_config, budgets, domains=domains, unique=parse_kv(args.unique, "--unique") or None,
        n_random=args.random, seed=args.seed, mode=args.mode, launcher=args.launcher, nproc=args.nproc,
        family=args.family, alloc_budget=args.budget, importance=parse_kv(args.importance, "--importance") or None,
        floor=args.floor, bootstrap=args.bootstrap, timeout=args.timeout, overwrite=args.overwrite,
        report=not args.no_report)
    if args.mode == "emit":
        print(f"{summary['n_runs']} pilot commands -> {summary['script']}")
    for n in summary["notes"]:
        print(f"  note: {n}")
    if args.mode == "emit":
        return 0
    alloc = summary["allocation"]
    print(f"{len(summary['runs_fitted'])}/{summary['n_runs']} pilot runs fitted ({summary['family']} law) -> {summary['laws']}")
    print(f"allocation at {alloc['budget']:g} samples (gain vs proportional {alloc['gain_vs_proportional']:.2%}):")
    for d in alloc["domains"]:
        print(f"  {d:<12s} weight {alloc['weights'][d]:.4f}  predicted {alloc['predicted'][d]:.5f}")
    print(f"  hubs: {', '.join(alloc['hubs']) or 'none'}; islands: {', '.join(alloc['islands']) or 'none'}")
    for s in summary.get("skipped", []):
        print(f"  skipped: {s}")
    return 0
