#!/usr/bin/env python
"""Compare mixture samplers.

    python benchmarks/compare_samplers.py --simulated [--worlds 20] [--seed 0] [--seeds 1] [--jobs 1] [--json] [--timing]
        [--forgetting] [--interference] [--plateau] [--transfer-variants '{"name": {transfer options}, ...}']
        [--reuse earlier.json]

``--simulated``: worlds whose losses follow known laws (random asymmetric transfer, hubs, islands,
skewed data sizes, a misspecified family, noise); every sampler gets the same budget and
observation schedule; the table gives, per sampler, the mean objective relative to
``proportional`` (negative = better), the gap to the oracle allocation computed from the true
laws, how often it beats ``proportional``, how often it beats proportional, uniform, ado and odm
on the "hard" worlds (oracle >= 3% better than proportional), hub/island recovery and time.
``--forgetting``: the same worlds plus forgetting (a starved domain's loss rises with its recent
share; the oracle includes that penalty). ``--interference``: the same worlds plus poor company
(a domain's loss rises with another domain's recent share above its proportional share).
``--plateau``: the same worlds plus plateaus (a domain's loss stalls until it has seen enough of
its own data, then drops, as mri's did in the H100 runs; the oracle knows the plateau).
``--transfer-variants``: extra ``transfer`` rows with
the given options (e.g. guard settings), side by side with the same baselines. ``--seeds N``
pools the worlds of N seeds into one table and prints the hard-world wins per seed and pooled,
with a 95% interval (one seed has 2-8 hard worlds); ``--jobs`` runs the worlds in parallel.
``--reuse FILE`` takes the rows an earlier ``--simulated --json`` run with the same worlds holds
from that file and runs only the others (a new variant against stored baselines in minutes
instead of the whole table); the worlds are checked to be the same, a row made under other sampler
defaults runs again, and the reused rows are as good as the code that made the file.
All the logic lives in ``mixpretrain.samplers.simulate``; this script only parses arguments.

    python benchmarks/compare_samplers.py --pretrain --config configs/bench/cpu_tiny.yaml [--samplers a,b] [--seeds N]
        [--transfer-variants '{"band": {"steer_band": 1.25}}']
        [--variants '{"c2p": {"sampler": "fixed", "options": {"weights": {"cells": 0.12, "ct": 0.465, ...}}}}']

``--pretrain``: every sampler trains the same data, model, budget and seeds through the real
trainer (``launch/pretrain.py``); the table gives final validation loss per domain, mean
normalised loss (1 = ``proportional``), improvement per domain, realised consumption and the hubs
and islands ``transfer`` found, with loss-curve and weight plots. ``--transfer-variants`` adds
rows (runs ``<name>-seedN``) normalised by the same proportional runs; finished runs in the output
folder are reused, so a variant can be added to an earlier comparison. ``--variants`` adds rows of
any sampler with its options (the form of a bench config's ``variants``): fixed mixtures next to
proportional tell whether re-weighting can gain anything on this data at all. The logic lives in
``mixpretrain.eval.compare``.
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import sys


def parse_variants(text: str | None) -> dict[str, dict] | None:
    """--transfer-variants: JSON {row name: transfer options}."""
    from mixpretrain.samplers import simulate

    try:
        return simulate.parse_variants(text)
    except ValueError as exc:
        raise SystemExit(f"compare_samplers.py: error: {exc}") from exc


def parse_row_variants(text: str | None) -> dict[str, dict] | None:
    """--variants: JSON {row name: {"sampler": NAME, "options": {...}}} (checked by collect_variants)."""
    if text is None:
        return None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise SystemExit(f"compare_samplers.py: error: --variants is not valid JSON ({exc})") from None
    if not isinstance(value, dict):
        raise SystemExit("compare_samplers.py: error: --variants must map row names to "
                         '{"sampler": NAME, "options": {...}}')
    return value


def run_simulated(args: argparse.Namespace) -> int:
    from mixpretrain.samplers import simulate

    variants = parse_variants(args.transfer_variants)
    samplers = simulate.with_variant_rows(tuple(s for s in args.samplers.split(",") if s), variants)
    seeds = 1 if args.seeds is None else args.seeds
    try:
        result = simulate.run_benchmark(args.worlds, seed=args.seed, samplers=samplers, forgetting=args.forgetting,
                                        variants=variants, interference=args.interference, seeds=seeds,
                                        plateau=args.plateau, reuse=simulate.load_reuse(args.reuse),
                                        jobs=1 if args.jobs is None else args.jobs)
    except ValueError as exc:
        raise SystemExit(f"compare_samplers.py --simulated: error: {exc}") from exc
    if args.timing:
        result["refit_timing"] = simulate.refit_timings()
    if args.json:
        json.dump(result, sys.stdout, indent=1, allow_nan=False)
        print()
        return 0
    seed_text = f"seed {args.seed}" if seeds == 1 else f"seeds {args.seed}-{args.seed + seeds - 1} pooled"
    print(f"# simulated sampler comparison: {args.worlds} worlds per seed, {seed_text}"
          f"{', forgetting' if args.forgetting else ''}{', interference' if args.interference else ''}"
          f"{', plateaus' if args.plateau else ''}, "
          f"{platform.processor() or platform.machine()}, python {platform.python_version()}")
    print(simulate.format_table(result["table"]))
    hard = result["hard_worlds"]
    print(f"hard worlds (oracle >= {simulate.HARD_GAIN:.0%} better than proportional): {len(hard)} {hard}")
    for name, by_seed in result["hard_wins_by_seed"].items():
        if "all" not in by_seed:
            continue
        won, n = by_seed["all"]
        lo, hi = simulate.wilson_interval(won, n)
        per_seed = " ".join(f"s{s}:{w}/{k}" for s, (w, k) in by_seed.items() if s != "all")
        print(f"{name} beats proportional, uniform, ado and odm on {won}/{n} hard worlds ({won / n:.0%}, "
              f"95% CI {lo:.0%}-{hi:.0%})" + (f"; per seed {per_seed}" if seeds > 1 else ""))
    gains = [w["oracle_gain_vs_proportional"] for w in result["worlds"]]
    print(f"oracle gain vs proportional: mean {sum(gains) / len(gains):.2%}, max {max(gains):.2%}")
    for line in simulate.format_notes(result, args.reuse):
        print(line)
    print(f"total {result['seconds']:.1f} s")
    return 0


def run_pretrain(args: argparse.Namespace) -> int:
    """Real pretraining through launch/pretrain.py; the logic lives in mixpretrain.eval.compare."""
    from mixpretrain.eval.compare import cmd_compare

    if not args.config:
        raise SystemExit("compare_samplers.py --pretrain: error: --config configs/bench/<name>.yaml is required")
    logging.getLogger("mixpretrain").setLevel(logging.INFO)  # progress of the runs (minutes each)
    try:
        variants = parse_variants(args.transfer_variants)
        return cmd_compare(args.config, samplers=args.samplers, seeds=args.seeds, out=args.out, as_json=args.json,
                           jobs=args.jobs, transfer_variants=variants, variants=parse_row_variants(args.variants))
    except (ValueError, FileNotFoundError, FileExistsError) as exc:
        raise SystemExit(f"compare_samplers.py --pretrain: error: {exc}") from exc


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--simulated", action="store_true", help="worlds with known laws (fast, CPU)")
    mode.add_argument("--pretrain", action="store_true", help="real pretraining of every sampler (needs --config)")
    parser.add_argument("--config", help="--pretrain: bench config, e.g. configs/bench/cpu_tiny.yaml")
    parser.add_argument("--seeds", type=int, help="--pretrain: seeds per sampler (default: the config's bench.seeds); "
                        "--simulated: pool the benchmarks of seeds --seed .. --seed + N - 1 (default 1)")
    parser.add_argument("--out", help="--pretrain: output folder (default: outputs/bench/<config name>/compare)")
    parser.add_argument("--jobs", type=int, help="--pretrain: runs trained at the same time (default: the config's bench.jobs, "
                        "else 1); --simulated: worlds evaluated in parallel processes (default 1; same results)")
    parser.add_argument("--worlds", type=int, default=20, help="number of simulated worlds")
    parser.add_argument("--seed", type=int, default=0, help="seed of the world generator")
    parser.add_argument("--samplers", default="uniform,proportional,temperature,ado,odm,doremi,transfer,oracle",
                        help="comma-separated registry names (oracle: fixed weights from the true laws)")
    parser.add_argument("--timing", action="store_true", help="also time transfer refits with 3 and 10 domains")
    parser.add_argument("--forgetting", action="store_true",
                        help="--simulated: the same worlds plus forgetting (loss rises with a low recent share)")
    parser.add_argument("--interference", action="store_true",
                        help="--simulated: the same worlds plus poor company (loss rises with another domain's recent share)")
    parser.add_argument("--plateau", action="store_true",
                        help="--simulated: the same worlds plus plateaus (a domain's loss stalls until it has seen enough of its own data)")
    parser.add_argument("--transfer-variants",
                        help="JSON {row name: transfer options}: extra transfer rows (--simulated and --pretrain)")
    parser.add_argument("--variants", help='--pretrain: JSON {row name: {"sampler": NAME, "options": {...}}}: extra rows '
                        "of any sampler, e.g. fixed mixtures")
    parser.add_argument("--reuse", help="--simulated: the JSON of an earlier --simulated --json run with the same worlds; "
                        "the samplers it holds are taken from it and only the others are run")
    parser.add_argument("--json", action="store_true", help="print the full result as JSON")
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.ERROR, format="%(asctime)s %(message)s")
    if args.jobs is not None and args.jobs < 1:
        parser.error(f"--jobs must be >= 1, got {args.jobs}")
    if args.worlds < 1:
        parser.error(f"--worlds must be >= 1, got {args.worlds}")
    from mixpretrain.samplers import SamplerError

    try:
        if args.pretrain:  # --samplers left at the simulated default: the config's bench.samplers apply
            args.samplers = None if args.samplers == parser.get_default("samplers") else args.samplers
            return run_pretrain(args)
        if args.simulated:
            if args.variants is not None:
                parser.error("--variants is for --pretrain (use --transfer-variants with --simulated)")
            return run_simulated(args)
    except SamplerError as exc:  # e.g. an unknown name in --samplers
        parser.error(str(exc))
    return 2


if __name__ == "__main__":
    sys.exit(main())
