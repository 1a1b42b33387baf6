"""``mixpretrain laws ...``: fit, predict, allocate, report, plan, collect (see docs/scaling.md)."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


def register(sub: argparse._SubParsersAction) -> None:
    laws = sub.add_parser("laws", help="transfer scaling laws: fit, predict, allocate, report, plan pilots, collect results")
    lsub = laws.add_subparsers(dest="laws_command", metavar="LAWS_COMMAND")
    laws.set_defaults(func=lambda args: laws.print_help() or 2)

    p = lsub.add_parser("fit", help="fit a law to a results CSV and write laws.json")
    p.add_argument("results", help="results CSV: run, D_<domain>, L_<domain>")
    p.add_argument("-o", "--output", required=True, help="laws.json to write")
    p.add_argument("--family", default="auto", choices=["auto", "power", "linear", "transfer", "repetition"])
    p.add_argument("--unique", help="unique samples per domain, ct=N,mri=N,... (enables the repetition family)")
    p.add_argument("--bootstrap", type=int, default=50, help="bootstrap refits for confidence intervals (0: none)")
    p.add_argument("--huber-scale", type=float, default=0.02, help="Huber loss scale in log-loss units")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    p.add_argument("--json", action="store_true", help="print the fit summary as JSON")
    p.set_defaults(func=cmd_fit)

    p = lsub.add_parser("pilot", help="run (or emit) the pilot grid through the trainer, collect, fit the laws, "
                        "write the allocation")
    from mixpretrain.eval.pilot import add_pilot_arguments, cmd_pilot  # no torch import at module level

    add_pilot_arguments(p)
    p.set_defaults(func=cmd_pilot)

    p = lsub.add_parser("predict", help="predict per-domain losses for given consumption")
    p.add_argument("laws", help="laws.json")
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--csv", help="CSV with D_<domain> columns, one prediction per row")
    g.add_argument("--consumed", help="one point: ct=N,mri=N,... (missing domains: 0)")
    p.add_argument("--json", action="store_true", help="print a JSON list, one {domain: loss} per row")
    p.set_defaults(func=cmd_predict)

    p = lsub.add_parser("allocate", help="optimal mixture weights at a budget")
    p.add_argument("laws", help="laws.json")
    _alloc_args(p, budget_required=True)
    p.add_argument("-o", "--output", help="also write the JSON to this file (readable by sampler 'fixed' option 'laws'; "
                   "give that sampler the same floor, e.g. floor: 0)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_allocate)

    p = lsub.add_parser("report", help="plots (PNG) and summary.md for a laws.json")
    p.add_argument("laws", help="laws.json")
    p.add_argument("-o", "--output", required=True, help="output directory")
    _alloc_args(p, budget_required=False)
    p.add_argument("--plan", help="the pilots' plan.json: curves.png matches runs to curves by name (default: "
                   "the planner's run names, else the consumed shares)")
    p.set_defaults(func=cmd_report)

    p = lsub.add_parser("plan", help="emit pilot run configs (single-domain, uniform, proportional, random mixtures)")
    p.add_argument("--domains", required=True, help="ct,mri,pet")
    p.add_argument("--budgets", required=True, help="total samples per pilot run, e.g. 200,400,800")
    p.add_argument("--unique", help="unique samples per domain ct=N,... (adds proportional mixtures)")
    p.add_argument("--base-config", help="run config YAML the pilots start from (default: built-in defaults)")
    p.add_argument("--random", type=int, default=2, help="random mixtures per budget")
    p.add_argument("--world-size", type=int, default=1, help="processes per pilot run (steps = budget / global batch)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("-o", "--output", required=True, help="plan directory: configs/*.yaml, plan.json, runs/")
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=cmd_plan)

    p = lsub.add_parser("collect", help="gather finished runs' final validation losses into a results CSV")
    p.add_argument("runs", nargs="+", help="run output directories (or their config YAMLs)")
    p.add_argument("-o", "--output", required=True, help="results CSV to write")
    p.add_argument("--allow-unfinished", action="store_true", help="use runs whose last evaluation is before max_steps")
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=cmd_collect)


def _alloc_args(p: argparse.ArgumentParser, budget_required: bool) -> None:
    p.add_argument("--budget", type=float, required=budget_required,
                   help="total samples" + ("" if budget_required else " (default: 4x the largest pilot budget)"))
    p.add_argument("--importance", help="per-domain importance ct=2,... (unlisted domains: 1; default: equal)")
    p.add_argument("--floor", type=float, default=0.0, help="minimum weight of every domain")
    p.add_argument("--caps", help="max samples per domain ct=N,..., or 'unique' for the fit's unique counts")


def _refuse_overwrite(path: Path, overwrite: bool) -> None:
    if path.is_dir():
        raise ValueError(f"-o {path} is a directory; give the path of the file to write")
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; pass --overwrite to replace it")


def _budget(value: float | None) -> float | None:
    import math

    if value is not None and not (math.isfinite(value) and value > 0):
        raise ValueError(f"--budget {value:g}: the budget must be a positive number of samples")
    return value


def _importance(text: str | None, fit: Any) -> dict[str, float] | None:
    """``--importance ct=2``: the listed domains' importance, every other domain 1 (None: all equal)."""
    from .results import parse_kv

    given = parse_kv(text, "--importance", fit.domains)
    return {d: given.get(d, 1.0) for d in fit.domains} if given else None


def _caps(text: str | None, fit: Any) -> Any:
    from .results import parse_kv

    if not text:
        return None
    if text == "unique":
        import numpy as np

        u = fit.unique
        if not np.all(np.isfinite(u)):
            raise ValueError("--caps unique: the fit has no unique counts for every domain (fit with --unique)")
        return u
    return parse_kv(text, "--caps", fit.domains)


def cmd_fit(args: argparse.Namespace) -> int:
    from .fit import fit_laws
    from .results import parse_kv, read_results

    out = Path(args.output)
    _refuse_overwrite(out, args.overwrite)
    res = read_results(args.results)
    unique = parse_kv(args.unique, "--unique", res.domains) or None
    fit = fit_laws(res.D, res.L, res.domains, family=args.family, unique=unique, bootstrap=args.bootstrap,
                   seed=args.seed, huber_scale=args.huber_scale)
    fit.data = res.to_data()
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(fit.to_dict(), indent=1))
    summary = {"laws": str(out), "family": fit.family, "domains": list(fit.domains), "selection": fit.selection,
               "train_mean_abs_log_error": fit.stats["train_mean_abs_log_error"], "warnings": fit.warnings,
               "transfer_matrix": fit.transfer_matrix.tolist(), "seconds": fit.stats["seconds"]}
    if args.json:
        print(json.dumps(summary, indent=1))
    else:
        print(f"{fit.family} law over {', '.join(fit.domains)} from {len(res.runs)} runs -> {out} "
              f"(train mean |log error| {fit.stats['train_mean_abs_log_error']:.4f}, {fit.stats['seconds']:.2f} s)")
        for fam, score in fit.selection.get("scores", {}).items():
            print(f"  {fam:<11s} {fit.selection['method']}: {score:.5f}")
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    import numpy as np

    from .results import load_laws, parse_kv, read_mixes

    fit = load_laws(args.laws)
    if args.csv:
        D = read_mixes(args.csv, fit.domains)
    else:
        point = parse_kv(args.consumed, "--consumed", fit.domains)
        D = np.array([[point.get(d, 0.0) for d in fit.domains]])
        if D.sum() <= 0:
            raise ValueError("--consumed: give at least one domain with samples > 0")
    pred = fit.predict(D) if len(D) else np.zeros((0, len(fit.domains)))
    rows = [dict(zip(fit.domains, map(float, row), strict=True)) for row in pred]
    if args.json:
        print(json.dumps(rows))
    else:
        print("\t".join(fit.domains))
        for row in pred:
            print("\t".join(f"{v:.5f}" for v in row))
    return 0


def _allocation_doc(args: argparse.Namespace, fit: Any) -> dict[str, Any]:
    from .allocate import allocate, hubs_and_islands

    importance = _importance(args.importance, fit)
    caps = _caps(args.caps, fit)
    alloc = allocate(fit, _budget(args.budget), importance=importance, caps=caps, floor=args.floor)
    hi = hubs_and_islands(fit, alloc.weights * args.budget, importance=importance)
    doc = alloc.to_dict()
    doc.update({"floor": args.floor, "hubs": hi["hubs"], "islands": hi["islands"], "hub_score": hi["hub_score"],
                "island_score": hi["island_score"], "domains": list(fit.domains), "family": fit.family})
    return doc


def cmd_allocate(args: argparse.Namespace) -> int:
    from mixpretrain.samplers.base import default_floor

    from .results import load_laws

    out = Path(args.output) if args.output else None
    if out is not None:
        _refuse_overwrite(out, args.overwrite)
    fit = load_laws(args.laws)
    doc = _allocation_doc(args, fit)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(doc, indent=1))
        low = [d for d, w in doc["weights"].items() if w < default_floor(len(fit.domains))]
        if low:  # stderr: keeps --json output parseable
            print(f"note: {', '.join(low)} below the fixed sampler's default floor {default_floor(len(fit.domains)):g}; "
                  f"to train with these weights, give sampler 'fixed' floor: {args.floor:g} beside laws: {out}",
                  file=sys.stderr)
    if args.json:
        print(json.dumps(doc))
    else:
        print(f"budget {doc['budget']:g} samples, gain vs proportional {doc['gain_vs_proportional']:.2%}, "
              f"vs uniform {doc['gain_vs_uniform']:.2%}")
        for d in fit.domains:
            print(f"  {d:<12s} weight {doc['weights'][d]:.4f}  predicted {doc['predicted'][d]:.5f}")
        print(f"  hubs: {', '.join(doc['hubs']) or 'none'}; islands: {', '.join(doc['islands']) or 'none'}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from .report import write_report
    from .results import load_laws

    fit = load_laws(args.laws)
    plan = None
    if args.plan:
        try:
            plan = json.loads(Path(args.plan).read_text())
        except OSError as exc:
            raise FileNotFoundError(f"--plan {args.plan}: cannot read it ({exc.strerror})") from exc
        except json.JSONDecodeError as exc:
            raise ValueError(f"--plan {args.plan} is not valid JSON: {exc}") from exc
        if not isinstance(plan, dict) or not isinstance(plan.get("runs"), list):
            raise ValueError(f"--plan {args.plan}: not a plan.json of `laws plan` (no 'runs' list)")
    files = write_report(fit, args.output, budget=_budget(args.budget), importance=_importance(args.importance, fit),
                         caps=_caps(args.caps, fit), floor=args.floor, plan=plan)
    for f in files:
        print(f)
    return 0


def _floats(text: str, what: str) -> list[float]:
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError as exc:
        raise ValueError(f"{what}: {text!r} is not a comma-separated list of numbers") from exc


def cmd_plan(args: argparse.Namespace) -> int:
    from .planner import plan_pilots
    from .results import parse_kv

    domains = [d.strip() for d in args.domains.split(",") if d.strip()]
    unique = parse_kv(args.unique, "--unique", tuple(domains)) or None
    plan = plan_pilots(domains, _floats(args.budgets, "--budgets"), args.base_config, args.output, unique=unique,
                       n_random=args.random, seed=args.seed, world_size=args.world_size, overwrite=args.overwrite)
    print(f"{len(plan['runs'])} pilot runs -> {args.output}/configs/*.yaml, plan in {args.output}/plan.json")
    for n in plan["notes"]:
        print(f"  note: {n}")
    return 0


def cmd_collect(args: argparse.Namespace) -> int:
    from .planner import collect_runs
    from .results import write_results

    out = Path(args.output)
    _refuse_overwrite(out, args.overwrite)
    names, domains, D, L, skipped = collect_runs(args.runs, args.allow_unfinished)
    if not names:
        raise ValueError("no finished run to collect: " + "; ".join(skipped))
    write_results(out, names, domains, D, L)
    print(f"collected {len(names)} run(s) over {', '.join(domains)} -> {out}; skipped {len(skipped)}")
    for s in skipped:
        print(f"  skipped: {s}")
    return 0
