"""``make demo``: phantom CT / MRI / PET shards -> tiny MAE on CPU with the transfer sampler -> report.

    python -m mixpretrain.demo                       # configs/demo.yaml, outputs/demo/
    python -m mixpretrain.demo train.max_steps=600   # any config override

Steps, each resumable (re-running the command continues where it stopped):
1. synthesise phantom shards into ``data.shards`` unless its index already lists the domains;
2. pretrain in this process (one rank; DeepSpeed engine, gloo) - a re-run resumes from the latest
   complete checkpoint, a finished run is not retrained;
3. print a per-domain table (train / val loss, final weight, realised consumption, hub and island
   scores) and write the sampler's law report (plots + summary.md) to ``output_dir/report``.

Nothing outside ``data.shards`` and ``output_dir`` is written, and the trainer refuses an
``output_dir`` that holds files of anything but a mixpretrain run.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

from mixpretrain.config import ConfigError, RunConfig, load_config

log = logging.getLogger("mixpretrain.demo")

DEMO_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "demo.yaml"
DEMO_DOMAINS = ("ct", "mri", "pet")


def ensure_shards(cfg: RunConfig, cases: int, size: int) -> None:
    from mixpretrain.data.shards import is_url, load_index
    from mixpretrain.data.synth import write_phantom_shards

    if is_url(cfg.data.shards):  # remote shards are read as they are: nothing to synthesise there
        log.info("data.shards is a URL (%s): using its shards, synthesising none", cfg.data.shards)
        return
    shards = Path(cfg.data.shards)
    have: set[str] = set()
    if (shards / "index.json").is_file():
        have = set(load_index(shards)["domains"])
    wanted = [d for d in (cfg.data.domains or DEMO_DOMAINS) if d not in have]
    if not wanted:
        log.info("phantom shards already in %s: reusing them", shards)
        return
    log.info("synthesising %d phantom cases of %d^3 for %s into %s", cases, size, wanted, shards)
    write_phantom_shards(shards, wanted, cases=cases, size=size)  # refuses to replace existing domains


def _records(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def per_domain_table(out_dir: Path) -> str:
    """Text table from metrics.jsonl and the last sampler diagnostics."""
    recs = _records(out_dir / "metrics.jsonl")
    if not recs:
        return "(no metrics yet)"
    last = recs[-1]
    domains = list(last["weights"])
    diag = next((r for r in reversed(_records(out_dir / "sampler.jsonl")) if "phase" in r or "hubs" in r), {})
    hub, isl = diag.get("hub_score") or {}, diag.get("island_score") or {}
    hubs, islands = set(diag.get("hubs") or []), set(diag.get("islands") or [])
    val = next((r for r in reversed(recs) if any(k.startswith("val/") for k in r)), {})
    total = max(sum(last["consumed"].values()), 1)
    lines = [f"step {last['step']}, {last['samples']} samples, sampler phase: {diag.get('phase', '-')}",
             f"{'domain':<8} {'train loss':>10} {'val loss':>9} {'weight':>7} {'consumed':>9} {'share':>6} "
             f"{'hub':>7} {'island':>7}  role"]
    for d in domains:
        train = [r[f"loss/{d}"] for r in recs[-20:] if f"loss/{d}" in r]
        role = ", ".join(x for x, on in (("hub", d in hubs), ("island", d in islands)) if on) or "-"
        lines.append(
            f"{d:<8} {_fmt(sum(train) / len(train) if train else None):>10} {_fmt(val.get(f'val/{d}')):>9} "
            f"{last['weights'][d]:>7.3f} {last['consumed'][d]:>9d} {last['consumed'][d] / total:>6.1%} "
            f"{_fmt(_score(hub, d, domains)):>7} {_fmt(_score(isl, d, domains)):>7}  {role}"
        )
    return "\n".join(lines)


def _score(scores: Any, d: str, domains: list[str]) -> float | None:
    if isinstance(scores, dict):
        return scores.get(d)
    if isinstance(scores, list) and len(scores) == len(domains):
        return scores[domains.index(d)]
    return None


def _fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:.4g}"


def write_law_report(cfg: RunConfig, out_dir: Path) -> list[Path]:
    """Rebuild the sampler from the last checkpoint and write its law report (if it has a fit)."""
    import torch

    from mixpretrain.samplers import build
    from mixpretrain.scaling.report import write_report
    from mixpretrain.train.checkpoint import checkpoint_dir, latest_complete
    from mixpretrain.train.run import resolve_domains, sampler_options

    latest = latest_complete(checkpoint_dir(cfg))
    if latest is None:
        return []
    # Our own checkpoint, written by DeepSpeed with torch.save (holds numpy state): not a foreign file.
    state = torch.load(latest[1] / "mp_rank_00_model_states.pt", map_location="cpu", weights_only=False)
    domains, index = resolve_domains(cfg)
    opts = sampler_options(cfg, domains, index, 1)
    sampler = build(cfg.sampler.name, domains, **opts)
    sampler.load_state_dict(state["mixpretrain"]["sampler"])
    fit = getattr(sampler, "fit", None)
    if fit is None:
        log.info("the %s sampler has no fitted law yet: no law report", cfg.sampler.name)
        return []
    return write_report(fit, out_dir / "report", budget=opts.get("total_budget"))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m mixpretrain.demo", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=str(DEMO_CONFIG), help="run config (default: configs/demo.yaml)")
    p.add_argument("--cases", type=int, default=24, help="phantom cases per domain (default 24)")
    p.add_argument("--size", type=int, default=48, help="phantom volume edge in voxels (default 48)")
    p.add_argument("overrides", nargs="*", metavar="key.sub=value")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        cfg = load_config(args.config, args.overrides)
        ensure_shards(cfg, args.cases, args.size)
        from mixpretrain.train.run import run

        run(cfg)
    except (ConfigError, FileExistsError) as exc:
        print(f"demo: error: {exc}", file=sys.stderr)
        return 2
    out = Path(cfg.output_dir)
    print("\n" + per_domain_table(out) + "\n")
    files = write_law_report(cfg, out)
    print(f"metrics:      {out / 'metrics.jsonl'}")
    print(f"sampler fits: {out / 'sampler.jsonl'}")
    print(f"encoder:      {out / 'encoder.pt'}")
    for f in files:
        print(f"report:       {f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
