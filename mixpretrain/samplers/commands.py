"""``mixpretrain samplers list|simulate``: the registry and the simulated comparison."""

from __future__ import annotations

import argparse
import json
import sys


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("samplers", help="mixture samplers: list them, compare them on simulated worlds")
    actions = parser.add_subparsers(dest="samplers_action", metavar="ACTION")
    lst = actions.add_parser("list", help="registered samplers (built-in and entry points) with their options")
    lst.add_argument("--json", action="store_true", help="machine-readable output")
    lst.set_defaults(func=_list)
    sim = actions.add_parser("simulate", help="compare samplers on worlds with known laws "
                             "(same as benchmarks/compare_samplers.py --simulated)")
    sim.add_argument("--worlds", type=int, default=20)
    sim.add_argument("--seed", type=int, default=0)
    sim.add_argument("--seeds", type=int, default=1, help="pool the worlds of seeds --seed .. --seed + N - 1")
    sim.add_argument("--jobs", type=int, default=1, help="worlds evaluated in parallel processes (same results)")
    sim.add_argument("--samplers", default="uniform,proportional,temperature,ado,odm,doremi,transfer,oracle")
    for flag, what in (("forgetting", "a starved domain's loss rises with its low recent share"),
                       ("interference", "a domain's loss rises with another domain's recent share"),
                       ("plateau", "a domain's loss stalls until it has seen enough of its own data")):
        sim.add_argument(f"--{flag}", action="store_true", help=f"the same worlds plus {flag} ({what})")
    sim.add_argument("--transfer-variants", help="JSON {row name: transfer options}: extra transfer rows")
    sim.add_argument("--reuse", help="the JSON of an earlier run with the same worlds (--json): the samplers it "
                     "holds are taken from it and only the others are run")
    sim.add_argument("--timing", action="store_true", help="also time transfer refits with 3 and 10 domains")
    sim.add_argument("--json", action="store_true", help="print the full result as JSON")
    sim.set_defaults(func=_simulate)
    parser.set_defaults(func=lambda args: parser.print_help() or 2)


def _list(args: argparse.Namespace) -> int:
    from mixpretrain.samplers import COMMON_OPTIONS, MixtureSampler, available_samplers, get_factory

    rows = {}
    for name, target in available_samplers().items():
        try:
            factory = get_factory(name)
        except ValueError as exc:  # a broken plugin: list it with its error
            rows[name] = {"target": target, "error": str(exc)}
            continue
        opts = dict(factory.OPTIONS) if isinstance(factory, type) and issubclass(factory, MixtureSampler) else None
        rows[name] = {"target": target, "options": opts}
    if args.json:
        json.dump({"common_options": COMMON_OPTIONS, "samplers": rows}, sys.stdout, indent=1, default=str)
        print()
        return 0
    print("common options: " + ", ".join(f"{k}={v!r}" for k, v in COMMON_OPTIONS.items()))
    for name, row in rows.items():
        extra = row.get("error") or (", ".join(f"{k}={v!r}" for k, v in row["options"].items())
                                     if row.get("options") is not None else "(options not declared)")
        print(f"{name:<13} {row['target']:<45} {extra}")
    return 0


def _simulate(args: argparse.Namespace) -> int:
    from mixpretrain.samplers import simulate

    if args.worlds < 1:
        raise ValueError(f"--worlds must be >= 1, got {args.worlds}")
    variants = simulate.parse_variants(args.transfer_variants)
    samplers = simulate.with_variant_rows(tuple(s for s in args.samplers.split(",") if s), variants)
    result = simulate.run_benchmark(args.worlds, seed=args.seed, samplers=samplers, seeds=args.seeds, jobs=args.jobs,
                                    forgetting=args.forgetting, interference=args.interference, plateau=args.plateau,
                                    variants=variants, reuse=simulate.load_reuse(args.reuse))
    if args.timing:
        result["refit_timing"] = simulate.refit_timings()
    if args.json:
        json.dump(result, sys.stdout, indent=1, allow_nan=False)
        print()
    else:
        print(simulate.format_table(result["table"]))
        print(f"hard worlds: {result['hard_worlds']}; {result['seconds']:.1f} s")
        for line in simulate.format_notes(result, args.reuse):
            print(line)
        for name, by_seed in result["hard_wins_by_seed"].items():
            if "all" in by_seed:
                won, n = by_seed["all"]
                lo, hi = simulate.wilson_interval(won, n)
                print(f"{name}: beats the baselines on {won}/{n} hard worlds (95% CI {lo:.0%}-{hi:.0%})")
    return 0
