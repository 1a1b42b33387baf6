"""Sampler comparison in real pretraining: same data, model, budget and seeds for every sampler.

A bench config (``configs/bench/*.yaml``) is a normal run config plus a ``bench`` section that
this module removes before the trainer sees it::

    bench:
      samplers: [uniform, proportional, temperature, transfer, ado, odm, doremi]
      seeds: 1                      # seeds train.seed, train.seed+1, ...
      phantom: {size: 32, seed: 0, cases: {ct: 48, mri: 16, pet: 8}}   # synthesised if data.shards lacks index.json
      sampler_options: {transfer: {explore_fraction: 0.2}}              # per sampler, merged into sampler.options
      final_evals: 5                # "final" validation loss = mean of the last 5 evaluations (default 1)
      jobs: 1                       # runs trained at the same time (a GPU machine's trainer is host-bound)
      variants: {transfer_band: {sampler: transfer, options: {steer_band: 1.25}}}  # extra rows: a sampler with other options

For every (sampler, seed) one run config is written to ``OUT/configs/`` -- only ``output_dir``,
``sampler.name``, ``sampler.options`` and ``train.seed`` differ -- and trained through
``launch/pretrain.py`` as a subprocess. Then, per sampler (mean over seeds): final validation
loss per domain (the mean of the last ``final_evals`` evaluations: one evaluation of a small model
on a few fixed crops swings by 2-4% from one evaluation to the next late in training, as much
as the mixture effects measured); mean normalised loss (each domain's loss divided by ``proportional``'s loss
with the same seed -- or by the mean over samplers when ``proportional`` did not run -- then
averaged over domains); improvement over ``proportional`` per domain and on average; realised
consumption; for ``transfer`` the hubs and islands of its last law. Written to
``OUT/comparison.json`` and ``OUT/comparison.md``, with plots ``OUT/loss_curves.png`` (validation
loss per domain per sampler) and ``OUT/weights.png`` (mixture weights over time per sampler).
"""

from __future__ import annotations

import copy
import json
import logging
import math
import re
import time
from pathlib import Path
from typing import Any

import numpy as np

from .runner import check_same_config, read_metrics, run_one

log = logging.getLogger(__name__)

DEFAULT_EXCLUDED = ("fixed",)  # needs explicit weights; not a policy to compare
BENCH_KEYS = ("samplers", "seeds", "phantom", "sampler_options", "final_evals", "jobs", "variants")
VARIANT_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")  # a row name is also a folder name


def split_bench_config(path: str | Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """(run config dict, bench section) from a bench YAML; the run part is validated by the trainer's schema."""
    import yaml

    from mixpretrain.config import config_from_dict, config_to_dict

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"bench config {path} does not exist")
    raw = yaml.safe_load(path.read_text()) or {}
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: expected a mapping at the top level")
    bench = raw.pop("bench", {}) or {}
    unknown = sorted(set(bench) - set(BENCH_KEYS))
    if unknown:
        raise ValueError(f"{path}: unknown bench key(s) {unknown}; valid: {', '.join(BENCH_KEYS)}")
    final_evals = bench.get("final_evals", 1)
    if isinstance(final_evals, bool) or not isinstance(final_evals, int) or final_evals < 1:
        raise ValueError(f"{path}: bench.final_evals must be an integer >= 1, got {final_evals!r}")
    jobs = bench.get("jobs", 1)
    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
        raise ValueError(f"{path}: bench.jobs must be an integer >= 1, got {jobs!r}")
    try:
        run = config_to_dict(config_from_dict(raw))
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from exc
    return run, bench


def default_samplers() -> list[str]:
    from mixpretrain.samplers import available_samplers

    return [s for s in available_samplers() if s not in DEFAULT_EXCLUDED]


def ensure_phantom_shards(shards: str, phantom: dict[str, Any] | None) -> None:
    """Synthesise the bench's phantom shards when ``shards`` has no index.json yet."""
    if (Path(shards) / "index.json").is_file():
        return
    if not phantom:
        raise FileNotFoundError(f"{shards}/index.json does not exist and the bench config has no 'bench.phantom' to synthesise it")
    from mixpretrain.data.synth import write_phantom_shards

    cases = phantom.get("cases") or {}
    if not isinstance(cases, dict) or not cases:
        raise ValueError(f"bench.phantom.cases must map domain -> number of cases, got {cases!r}")
    by_count: dict[int, list[str]] = {}
    for dom, n in cases.items():  # one call per case count: domains may hold different amounts of data
        by_count.setdefault(int(n), []).append(dom)
    for n, doms in sorted(by_count.items()):
        write_phantom_shards(shards, doms, cases=n, size=phantom.get("size", 32), seed=int(phantom.get("seed", 0)))


def collect_variants(bench: dict[str, Any], transfer_variants: dict[str, Any] | None = None,
                     variants: dict[str, Any] | None = None) -> dict[str, dict[str, Any]]:
    """Extra table rows, {row name: {"sampler": registry name, "options": {...}}}: the bench
    section's ``variants``, then ``variants`` (same form, the CLI's ``--variants``, e.g. fixed
    mixtures), then ``transfer_variants`` ({row name: transfer options}, the CLI's
    ``--transfer-variants``); a later one replaces an earlier row of the same name. Why rows and not
    separate comparisons: a variant is then normalised by the same proportional runs, and the
    finished runs of a comparison folder are reused."""
    from mixpretrain.samplers import available_samplers
    from mixpretrain.samplers.base import COMMON_OPTIONS
    from mixpretrain.samplers.registry import get_factory

    raw = dict(bench.get("variants") or {})
    if variants is not None and not isinstance(variants, dict):
        raise ValueError(f"--variants must map row names to {{sampler: NAME, options: {{...}}}}, got {variants!r}")
    raw.update(variants or {})
    raw.update({name: {"sampler": "transfer", "options": opts} for name, opts in (transfer_variants or {}).items()})
    out = {}
    for name, spec in raw.items():
        if not isinstance(name, str) or not VARIANT_NAME.match(name) or name in available_samplers():
            raise ValueError(f"variant name {name!r}: use letters, digits, '_', '-' or '.', not a sampler's registry name")
        if not isinstance(spec, dict) or set(spec) - {"sampler", "options"}:
            raise ValueError(f"variant {name!r}: expected {{sampler: NAME, options: {{...}}}}, got {spec!r}")
        sampler, options = spec.get("sampler"), spec.get("options") or {}
        if sampler not in available_samplers():
            raise ValueError(f"variant {name!r}: unknown sampler {sampler!r}; available: {', '.join(available_samplers())}")
        if not isinstance(options, dict):
            raise ValueError(f"variant {name!r}: options must be a mapping, got {options!r}")
        # Names now, values when the run builds its sampler: a typo should not wait for the other runs.
        known = getattr(get_factory(sampler), "OPTIONS", None)
        unknown = sorted(set(options) - set(COMMON_OPTIONS) - set(known or {}))
        if known is not None and unknown:
            raise ValueError(f"variant {name!r}: unknown {sampler} option(s) {unknown}; valid: "
                             f"{', '.join(sorted({*COMMON_OPTIONS, *known}))}")
        out[name] = {"sampler": sampler, "options": options}
    return out


def _row_spec(row: str, variants: dict[str, dict[str, Any]]) -> tuple[str, dict[str, Any]]:
    """(registry name, the row's own options) of a table row: a variant, or a sampler by name."""
    spec = variants.get(row)
    return (spec["sampler"], spec["options"]) if spec else (row, {})


def plan_runs(run_cfg: dict[str, Any], bench: dict[str, Any], samplers: list[str], seeds: int,
              out_dir: Path, variants: dict[str, dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """One entry per (row, seed): name, config path, output dir; writes the configs. A row is a
    sampler's registry name or a variant's name (``collect_variants``)."""
    import yaml

    from mixpretrain.config import config_from_dict

    per_sampler = bench.get("sampler_options") or {}
    variants = variants or {}
    base_seed = int(run_cfg["train"]["seed"])
    runs = []
    (out_dir / "configs").mkdir(parents=True, exist_ok=True)
    for row in samplers:
        sampler, extra = _row_spec(row, variants)
        for i in range(seeds):
            seed = base_seed + i
            name = f"{row}-seed{seed}"
            raw = copy.deepcopy(run_cfg)
            raw["output_dir"] = str(out_dir / "runs" / name)
            raw["sampler"]["name"] = sampler
            raw["sampler"]["options"] = {**raw["sampler"].get("options", {}), **per_sampler.get(sampler, {}), **extra}
            if sampler == "doremi" and "reference" not in raw["sampler"]["options"]:
                # DoReMi's reference model: the uniform mixture at the same budget and seed.
                raw["sampler"]["options"]["reference"] = str(out_dir / "runs" / f"uniform-seed{seed}")
            raw["train"]["seed"] = seed
            raw["logging"]["progress_bar"] = False  # logs go to a file
            config_from_dict(raw)
            path = out_dir / "configs" / f"{name}.yaml"
            path.write_text(yaml.safe_dump(raw, sort_keys=False))
            reference = raw["sampler"]["options"].get("reference") if sampler == "doremi" else None
            runs.append({"name": name, "sampler": row, "registry": sampler, "seed": seed, "config": path,
                         "run_dir": Path(raw["output_dir"]), "max_steps": int(raw["train"]["max_steps"]),
                         "needs": Path(reference).name if reference else None})
    return runs


def train_runs(runs: list[dict[str, Any]], out: Path, jobs: int, launcher: str, nproc: int,
               timeout: float | None) -> dict[str, dict[str, Any]]:
    """Train the planned runs, ``jobs`` at a time; a run that ``needs`` another (doremi's reference
    run) starts after it. Returns {run name: run_one's status}."""
    from concurrent.futures import ThreadPoolExecutor

    futures: dict[str, Any] = {}

    def train(r: dict[str, Any]) -> dict[str, Any]:
        if r["needs"] in futures:  # planned earlier, so already running or done: waiting cannot deadlock
            futures[r["needs"]].result()
        return run_one(r["config"], r["run_dir"], r["max_steps"], out / "logs" / f"{r['name']}.log",
                       launcher, nproc, timeout)

    # Runs that others need go first: the executor starts tasks in submission order.
    order = sorted(runs, key=lambda r: r["needs"] is not None)
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        for r in order:
            futures[r["name"]] = pool.submit(train, r)
    return {r["name"]: futures[r["name"]].result() for r in runs}


def summarise_run(run_dir: Path, final_evals: int = 1) -> dict[str, Any]:
    """Curves and final values of one finished run from its metrics.jsonl / sampler.jsonl.
    ``final_val`` is the mean of the last ``final_evals`` validation records."""
    recs = read_metrics(run_dir)
    if not recs:
        raise ValueError(f"{run_dir}: no metrics.jsonl records")
    val_recs = [r for r in recs if any(k.startswith("val/") for k in r)]
    if not val_recs:
        raise ValueError(f"{run_dir}: no validation records (val/<domain>)")
    domains = list(recs[-1]["consumed"])
    last = val_recs[-final_evals:]
    final = last[-1]
    # The trainer logs a NaN/Inf loss as null: a run that diverged has no final loss to compare.
    bad = [(int(r["step"]), k) for r in last for k, v in r.items()
           if k.startswith("val/") and (v is None or not math.isfinite(float(v)))]
    if bad:
        raise ValueError(f"{run_dir}: non-finite validation loss ({bad[0][1]} at step {bad[0][0]}; "
                         f"{len(bad)} value(s) among the last {len(last)} evaluations)")
    if len(last) < final_evals:
        log.warning("%s: %d validation records, fewer than final_evals %d: the final loss is their mean",
                    run_dir, len(last), final_evals)
    out: dict[str, Any] = {
        "domains": domains,
        "final_step": int(final["step"]),
        "final_evals": [int(r["step"]) for r in last],  # the steps averaged into final_val
        "final_val": {d: float(np.mean([r[f"val/{d}"] for r in last if f"val/{d}" in r]))
                      for d in domains if f"val/{d}" in final},
        "consumed": {d: float(n) for d, n in recs[-1]["consumed"].items()},
        "val_curve": {d: [[int(r["step"]), float(r[f"val/{d}"])] for r in val_recs if r.get(f"val/{d}") is not None]
                      for d in domains},
        "weights_curve": [[int(r["step"]), [float(r["weights"][d]) for d in domains]] for r in recs if "weights" in r],
        "samples_per_s": float(np.mean([r["samples_per_s"] for r in recs if "samples_per_s" in r] or [math.nan])),
    }
    diag_path = run_dir / "sampler.jsonl"
    if diag_path.is_file():
        diags = [json.loads(x) for x in diag_path.read_text().splitlines() if x.strip().startswith("{")]
        with_fit = [d for d in diags if "hubs" in d or "transfer_matrix" in d]
        if with_fit:
            last = with_fit[-1]
            out["transfer"] = {k: last.get(k) for k in ("family", "hubs", "islands", "hub_score", "island_score", "transfer_matrix")}
            # forgetting: company: the pairs whose estimate was > 0 at the end of the run ({source: {target: C}})
            out["transfer"]["interference"] = last.get("interference") or {}
    return out


def _normalise(per_run: dict[str, dict], runs: list[dict], domains: list[str]) -> dict[str, dict[str, float]]:
    """Per run: each domain's loss / reference loss (proportional, same seed; else, where no
    proportional run was planned, the mean over samplers). A seed whose proportional run failed is
    left out: there is nothing to pair it with (a mean over the other samplers would make up a
    reference, and a ratio of 1.0 with one other sampler)."""
    out = {}
    prop_planned = any(r["sampler"] == "proportional" for r in runs)
    for r in runs:
        s = per_run.get(r["name"])
        if s is None:
            continue
        ref_name = f"proportional-seed{r['seed']}"
        if ref_name in per_run:
            ref = per_run[ref_name]["final_val"]
        elif prop_planned:
            continue
        else:
            same_seed = [per_run[x["name"]]["final_val"] for x in runs if x["seed"] == r["seed"] and x["name"] in per_run]
            ref = {d: float(np.mean([v[d] for v in same_seed])) for d in domains}
        out[r["name"]] = {d: s["final_val"][d] / ref[d] for d in domains}
    return out


def vs_reference(mean_norm: list[float], level: float = 0.95) -> dict[str, Any] | None:
    """Paired comparison with the reference over seeds: each seed's mean normalised loss is already
    a ratio to the reference run of the same seed, so a t-interval of their mean around 1 is the
    paired test. Why: at cpu_tiny scale one seed moves a sampler's ratio 0.5-1%, as much as the
    mixture effects, and a mean of a few seeds alone read as a win that was noise. None with fewer
    than 2 seeds, or with no spread (the reference itself)."""
    from scipy import stats

    x = np.asarray(mean_norm, dtype=np.float64) - 1.0
    n = x.size
    if n < 2 or (sd := float(np.std(x, ddof=1))) == 0.0:
        return None
    se = sd / math.sqrt(n)
    half = float(stats.t.ppf(0.5 + level / 2, n - 1)) * se
    mean = float(x.mean())
    p = float(2.0 * stats.t.sf(abs(mean) / se, n - 1))
    verdict = "lower" if mean + half < 0 else "higher" if mean - half > 0 else "not distinguishable"
    return {"level": level, "ci": [1.0 + mean - half, 1.0 + mean + half], "p": p, "verdict": verdict}


def build_table(runs: list[dict], per_run: dict[str, dict]) -> dict[str, Any]:
    """Per-sampler aggregates (mean over the seeds that finished)."""
    done = [r for r in runs if r["name"] in per_run]
    if not done:
        raise ValueError("no run finished: nothing to compare (see the run logs)")
    domains = per_run[done[0]["name"]]["domains"]
    norm = _normalise(per_run, runs, domains)
    table: dict[str, Any] = {}
    for sampler in dict.fromkeys(r["sampler"] for r in runs):
        finished = [r for r in done if r["sampler"] == sampler]
        names = [r["name"] for r in finished if r["name"] in norm]
        unpaired = [r["seed"] for r in finished if r["name"] not in norm]
        if not names:
            table[sampler] = {"status": "failed", **({"unpaired_seeds": unpaired} if unpaired else {})}
            continue
        val = {d: float(np.mean([per_run[n]["final_val"][d] for n in names])) for d in domains}
        nrm = {d: float(np.mean([norm[n][d] for n in names])) for d in domains}
        mean_norm = [float(np.mean(list(norm[n].values()))) for n in names]
        consumed = {d: float(np.mean([per_run[n]["consumed"][d] for n in names])) for d in domains}
        total = sum(consumed.values()) or 1.0
        row = {
            "seeds": len(names),
            "final_val": val,
            "normalised": nrm,
            "mean_normalised": float(np.mean(mean_norm)),
            "mean_normalised_per_seed": mean_norm,
            # Seed-to-seed spread and per-seed wins: at cpu_tiny scale one sampler's ratio moves 0.5-1%
            # between seeds, as much as the mixture effects, so a mean alone overstates what is known.
            "mean_normalised_sd": float(np.std(mean_norm, ddof=1)) if len(mean_norm) > 1 else None,
            "seeds_below_reference": int(sum(m < 1.0 for m in mean_norm)),
            "vs_reference": vs_reference(mean_norm),
            "improvement_vs_proportional_pct": {d: 100.0 * (1.0 - nrm[d]) for d in domains},
            "mean_improvement_vs_proportional_pct": 100.0 * (1.0 - float(np.mean(mean_norm))),
            "consumed": consumed,
            "consumed_fraction": {d: c / total for d, c in consumed.items()},
        }
        if unpaired:
            row["unpaired_seeds"] = unpaired
        transfer = [per_run[n]["transfer"] for n in names if "transfer" in per_run[n]]
        if transfer:
            row["hubs"], row["islands"] = transfer[-1].get("hubs"), transfer[-1].get("islands")
            row["transfer_matrix"] = transfer[-1].get("transfer_matrix")
            pairs = [f"{i}->{j}" for t in transfer for i, targets in (t.get("interference") or {}).items() for j in targets]
            if pairs:
                row["company_pairs"] = {p: pairs.count(p) for p in sorted(set(pairs))}
        table[sampler] = row
    has_prop = any(r["sampler"] == "proportional" for r in done)
    return {"domains": domains, "reference": "proportional" if has_prop else "mean over samplers", "samplers": table}


def format_table(result: dict[str, Any]) -> str:
    """A markdown table (also what the CLI prints)."""
    doms = result["domains"]
    head = ["sampler", *[f"val {d}" for d in doms], "mean norm.", "sd (seeds)", "below ref", "95% CI (p)",
            *[f"Δ% {d}" for d in doms],
            "Δ% mean", "consumed " + "/".join(doms)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    notes = []
    for name, row in result["samplers"].items():
        if row.get("status") == "failed":
            lines.append(f"| {name} | " + " | ".join(["failed"] * (len(head) - 1)) + " |")
            if row.get("unpaired_seeds"):
                notes.append(f"{name}: finished seed(s) {row['unpaired_seeds']} have no {result['reference']} run "
                             "of the same seed to pair with")
            continue
        sd = row.get("mean_normalised_sd")
        cells = [name, *[f"{row['final_val'][d]:.4f}" for d in doms], f"{row['mean_normalised']:.4f}",
                 ("-" if sd is None else f"{sd:.4f}") + f" ({row['seeds']})",
                 f"{row.get('seeds_below_reference', 0)}/{row['seeds']}", _ci_cell(row.get("vs_reference")),
                 *[f"{row['improvement_vs_proportional_pct'][d]:+.2f}" for d in doms],
                 f"{row['mean_improvement_vs_proportional_pct']:+.2f}",
                 "/".join(f"{row['consumed_fraction'][d]:.2f}" for d in doms)]
        lines.append("| " + " | ".join(cells) + " |")
        vs = row.get("vs_reference")
        if vs is not None:
            what = "not distinguishable from" if vs["verdict"] == "not distinguishable" else f"{vs['verdict']} than"
            notes.append(f"{name}: mean normalised loss {what} {result['reference']} at {vs['level']:.0%} "
                         f"over {row['seeds']} seeds (p = {vs['p']:.2g})")
        if row.get("unpaired_seeds"):
            notes.append(f"{name}: seed(s) {row['unpaired_seeds']} left out: the {result['reference']} run of the "
                         "same seed did not finish, so there is nothing to pair them with")
        if row.get("hubs") is not None or row.get("islands") is not None:
            notes.append(f"{name}: hubs {row.get('hubs')}, islands {row.get('islands')}")
        if row.get("company_pairs"):
            found = ", ".join(f"{p} in {n}/{row['seeds']}" for p, n in row["company_pairs"].items())
            notes.append(f"{name}: poor company at the end of the run (forgetting: company): {found} seeds")
    other = sorted(name for name, st in (result.get("runs") or {}).items() if st.get("other_code"))
    if other:
        notes.append(f"reused {len(other)} finished run(s) trained by other mixpretrain code: {', '.join(other)} "
                     "(remove them to retrain under this code)")
    short = result.get("short_final_evals") or {}
    if short:
        notes.append(f"fewer validation records than final_evals {result.get('final_evals')} (their mean is used): "
                     + ", ".join(f"{n} ({c})" for n, c in sorted(short.items())))
    ref = result["reference"]
    k = int(result.get("final_evals", 1))
    val = "val = last validation loss" if k == 1 else f"val = mean of the last {k} validation losses"
    lines.append(f"\n{val}; normalised by {ref} (same seed); sd (seeds) = standard deviation of the mean normalised "
                 f"loss over seeds (number of seeds); below ref = seeds on which it was below {ref}; 95% CI (p) = "
                 f"t-interval of the mean normalised loss over seeds, paired by seed, and its p against 1 (2+ seeds); "
                 f"Δ% = improvement over {ref} (positive = lower loss); consumed = realised fraction of samples per domain")
    return "\n".join(lines + notes)


def _ci_cell(vs: dict[str, Any] | None) -> str:
    return "-" if vs is None else f"[{vs['ci'][0]:.4f}, {vs['ci'][1]:.4f}] ({vs['p']:.2g})"


def _plot_losses(plt: Any, result: dict[str, Any], per_run: dict[str, dict], runs: list[dict], path: Path) -> None:
    doms = result["domains"]
    fig, axes = plt.subplots(1, len(doms), figsize=(4 * len(doms), 3.2), squeeze=False)
    for sampler in result["samplers"]:
        names = [r["name"] for r in runs if r["sampler"] == sampler and r["name"] in per_run]
        for ax, d in zip(axes[0], doms, strict=True):
            curves = [np.asarray(per_run[n]["val_curve"][d]) for n in names]
            if curves:  # mean over seeds, on the evaluation steps every seed reached
                n = min(len(c) for c in curves)
                ax.plot(curves[0][:n, 0], np.mean([c[:n, 1] for c in curves], axis=0), label=sampler)
    for ax, d in zip(axes[0], doms, strict=True):
        ax.set(title=f"val loss: {d}", xlabel="step")
    axes[0][-1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _plot_weights(plt: Any, result: dict[str, Any], per_run: dict[str, dict], runs: list[dict], path: Path) -> None:
    firsts = {}
    for r in runs:  # the first finished seed of every sampler
        if r["name"] in per_run:
            firsts.setdefault(r["sampler"], r["name"])
    fig, axes = plt.subplots(1, len(firsts), figsize=(3.2 * len(firsts), 3.0), squeeze=False, sharey=True)
    for ax, (sampler, name) in zip(axes[0], firsts.items(), strict=True):
        steps = [s for s, _ in per_run[name]["weights_curve"]]
        w = np.asarray([w for _, w in per_run[name]["weights_curve"]])
        for i, d in enumerate(result["domains"]):
            ax.plot(steps, w[:, i], label=d)
        ax.set(title=f"{sampler} weights", xlabel="step", ylim=(0, 1))
    axes[0][-1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot(result: dict[str, Any], per_run: dict[str, dict], runs: list[dict], out_dir: Path) -> list[str]:
    """``loss_curves.png`` (val loss per domain per sampler) and ``weights.png`` (weights over time)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    files = [out_dir / "loss_curves.png", out_dir / "weights.png"]
    _plot_losses(plt, result, per_run, runs, files[0])
    _plot_weights(plt, result, per_run, runs, files[1])
    return [str(f) for f in files]


def run_comparison(config: str | Path, out_dir: str | Path, samplers: list[str] | None = None, seeds: int | None = None,
                   launcher: str = "python", nproc: int = 1, timeout: float | None = None,
                   overrides: list[str] | None = None, jobs: int | None = None,
                   transfer_variants: dict[str, Any] | None = None,
                   variants: dict[str, Any] | None = None) -> dict[str, Any]:
    """Train every (sampler, seed) through the real trainer, then tabulate and plot; returns the result.
    ``jobs`` (default: the config's ``bench.jobs``, else 1) runs train at the same time; variants
    (``collect_variants``) are rows after the samplers."""
    from mixpretrain.config import config_from_dict, config_to_dict

    run_cfg, bench = split_bench_config(config)
    if overrides:
        run_cfg = config_to_dict(config_from_dict(run_cfg, overrides))
    samplers = samplers or bench.get("samplers") or default_samplers()
    from mixpretrain.samplers import available_samplers

    variants = collect_variants(bench, transfer_variants, variants)
    unknown = [s for s in samplers if s not in available_samplers() and s not in variants]
    if unknown:
        raise ValueError(f"unknown sampler(s) {unknown}; available: {', '.join(available_samplers())}"
                         + (f"; variants: {', '.join(variants)}" if variants else ""))
    samplers = [*samplers, *(v for v in variants if v not in samplers)]
    seeds = int(bench.get("seeds", 1) if seeds is None else seeds)
    if seeds < 1:
        raise ValueError(f"seeds must be >= 1, got {seeds} (--seeds or bench.seeds)")
    final_evals = int(bench.get("final_evals", 1))  # validated by split_bench_config
    jobs = int(bench.get("jobs", 1) if jobs is None else jobs)
    if jobs < 1:
        raise ValueError(f"jobs must be >= 1, got {jobs}")
    samplers = list(dict.fromkeys(samplers))
    doremi_opts = (bench.get("sampler_options") or {}).get("doremi", {})
    if any(name == "doremi" and "reference" not in {**doremi_opts, **extra}
           for name, extra in (_row_spec(r, variants) for r in samplers)):
        if "uniform" not in samplers:
            log.info("doremi needs a reference run: adding 'uniform' (DoReMi's reference mixture)")
        samplers = ["uniform"] + [s for s in samplers if s != "uniform"]  # the reference trains first
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ensure_phantom_shards(run_cfg["data"]["shards"], bench.get("phantom"))
    runs = plan_runs(run_cfg, bench, samplers, seeds, out, variants)
    for r in runs:  # a stale run folder is refused now, not after hours of training the others
        check_same_config(r["config"], r["run_dir"])
    t0 = time.perf_counter()
    status = train_runs(runs, out, jobs, launcher, nproc, timeout)
    per_run = {}
    for r in runs:
        if status[r["name"]]["status"] == "failed":
            continue
        try:
            per_run[r["name"]] = summarise_run(r["run_dir"], final_evals)
        except ValueError as exc:  # e.g. a diverged run: left out by name, the others compared
            log.error("%s: left out of the comparison: %s", r["name"], exc)
            status[r["name"]] = {**status[r["name"]], "status": "failed", "reason": str(exc)}
    result = build_table(runs, per_run)
    result.update({
        "config": str(config), "variants": variants, "seeds": seeds, "final_evals": final_evals, "launcher": launcher, "nproc": nproc, "jobs": jobs, "runs": status,
        "total_samples": {n: sum(s["consumed"].values()) for n, s in per_run.items()},
        "short_final_evals": {n: len(s["final_evals"]) for n, s in per_run.items() if len(s["final_evals"]) < final_evals},
        "wall_s": round(time.perf_counter() - t0, 1),
    })
    result["plots"] = plot(result, per_run, runs, out)
    (out / "comparison.json").write_text(json.dumps(result, indent=2))
    (out / "comparison.md").write_text(format_table(result) + "\n")
    failed = [n for n, s in status.items() if s["status"] == "failed"]
    if failed:
        log.error("%d run(s) failed: %s (logs in %s)", len(failed), ", ".join(failed), out / "logs")
    return result


# ----------------------------------------------------------------------------- CLI (benchmarks/compare_samplers.py --pretrain)


def cmd_compare(config: str, samplers: str | None = None, seeds: int | None = None, out: str | None = None,
                launcher: str = "python", nproc: int = 1, as_json: bool = False, overrides: list[str] | None = None,
                jobs: int | None = None, transfer_variants: dict[str, Any] | None = None,
                variants: dict[str, Any] | None = None) -> int:
    """Run the comparison and print the table (or the JSON result as the last line)."""
    out_dir = Path(out) if out else Path("outputs/bench") / Path(config).stem / "compare"
    names = [s.strip() for s in samplers.split(",") if s.strip()] if samplers else None
    result = run_comparison(config, out_dir, samplers=names, seeds=seeds, launcher=launcher, nproc=nproc,
                            overrides=overrides, jobs=jobs, transfer_variants=transfer_variants, variants=variants)
    print(format_table(result))
    print(f"\nruns: {out_dir}/runs, logs: {out_dir}/logs, plots: {', '.join(result['plots'])}; wall {result['wall_s']} s")
    if as_json:
        print(json.dumps(result))
    failed = [n for n, s in result["runs"].items() if s["status"] == "failed"]
    return 1 if failed else 0
