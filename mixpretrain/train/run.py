"""Entry point of a pretraining run: pre-flight checks, then the engine and the loop.

``preflight`` runs in every process *before* any process group starts, so a bad config key, a
missing shards dir, an unknown sampler or model option, a foreign output_dir or a refused resume
fails at once with one clear message (and no rank waits on a rank that already died).
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mixpretrain.config import ConfigError, RunConfig, config_diff, config_from_dict, config_to_dict
from mixpretrain.data.mixture import MixtureStream, build_loader, derive_seed
from mixpretrain.provenance import code_record
from mixpretrain.train import checkpoint as ckpt
from mixpretrain.train.engine import build_model, deepspeed_config

log = logging.getLogger(__name__)

RUN_FILE = "run.json"  # marks a directory as a mixpretrain run directory (ours to write into)


@dataclass
class Plan:
    domains: tuple[str, ...]
    model: torch.nn.Module
    sampler: Any
    resume: tuple[int, Path] | None  # (step, tag dir) of the latest complete checkpoint
    run_id: str
    # Per domain: its modality and the ingest recipe from index.json (intensity, spacing): written
    # into the encoder export, so downstream use knows what input the encoder was trained on.
    preprocessing: dict[str, Any] = field(default_factory=dict)


def resolve_domains(cfg: RunConfig) -> tuple[tuple[str, ...], dict[str, Any]]:
    """The run's domains and their index.json entries; ``data.shards`` is a local shards folder or an
    ``http(s)://`` URL of one (its index.json is fetched)."""
    from mixpretrain.data.shards import index_location, load_index

    try:
        index = load_index(cfg.data.shards)["domains"]
    except (FileNotFoundError, ValueError) as exc:
        raise ConfigError(f"config key 'data.shards': {exc}") from exc
    where = index_location(cfg.data.shards)
    domains = tuple(cfg.data.domains) or tuple(sorted(index))
    missing = [d for d in domains if d not in index]
    if missing:
        raise ConfigError(f"config key 'data.domains': {missing} not in {where} (has {sorted(index)})")
    if not domains:
        raise ConfigError(f"config key 'data.shards': {where} lists no domains")
    empty = [d for d in domains if index[d].get("splits", {}).get("train", {}).get("samples", 0) == 0]
    if empty:
        raise ConfigError(f"config key 'data.domains': domains {empty} have no train samples in {cfg.data.shards}")
    _check_shard_files(cfg, domains, index)
    return domains, index


def _http_missing(url: str) -> str | None:
    """"HTTP 404 ..." when the server says the file is not there (404 / 410), else None (also when
    it does not answer HEAD: the stream will find out and skip it, counted)."""
    import urllib.error
    import urllib.request

    from mixpretrain.data.shards import HTTP_TIMEOUT

    try:
        with urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=HTTP_TIMEOUT):
            return None
    except urllib.error.HTTPError as exc:
        return f"HTTP {exc.code} {exc.reason}" if exc.code in (404, 410) else None
    except (urllib.error.URLError, OSError) as exc:
        log.debug("HEAD %s failed (%s): left to the streams", url, exc)
        return None


def _check_shard_files(cfg: RunConfig, domains: tuple[str, ...], index: dict[str, Any]) -> None:
    """Every shard the index lists for these domains is on disk (a stat each). A missing
    validation shard would change the fixed validation set, and a domain without any train shard
    cannot be sampled: both stop here. A few missing train shards are warned about by name; the
    streams then skip them, counted, as they skip a corrupted shard (``data.strict`` stops here).

    Over http(s) only the validation shards are checked, by a HEAD request each (a few per domain;
    one request per train shard from every rank would be too many): one the server answers 404 or
    410 for stops here; train shards that cannot be fetched are skipped by the streams, counted."""
    from mixpretrain.data.shards import index_location, is_url, shard_location

    if is_url(cfg.data.shards):
        gone = [f"{d}: {s['file']} ({why})" for d in domains for s in index[d].get("shards", [])
                if s["split"] == "val" and (why := _http_missing(shard_location(cfg.data.shards, s["file"])))]
        if gone:
            raise ConfigError(f"config key 'data.shards': {index_location(cfg.data.shards)} lists validation shards "
                              f"the server does not have ({'; '.join(gone)}): the fixed validation set would change")
        return
    root = Path(cfg.data.shards)
    missing = {d: [s for s in index[d].get("shards", []) if not (root / s["file"]).is_file()] for d in domains}
    missing = {d: m for d, m in missing.items() if m}
    if not missing:
        return
    names = "; ".join(f"{d}: {', '.join(s['file'] for s in m)}" for d, m in missing.items())
    fatal = cfg.data.strict or any(s["split"] == "val" for m in missing.values() for s in m) or any(
        all(not (root / s["file"]).is_file() for s in index[d]["shards"] if s["split"] == "train") for d in missing)
    if fatal:
        raise ConfigError(f"config key 'data.shards': {root / 'index.json'} lists shards that are not on disk ({names}); "
                          "a missing validation shard, or every train shard of a domain missing, cannot be skipped "
                          "(check with `mixpretrain shards verify`)")
    log.warning("%s: train shards listed in index.json are not on disk and will be skipped: %s", root, names)


def sampler_options(cfg: RunConfig, domains: tuple[str, ...], index: dict[str, Any], world: int) -> dict[str, Any]:
    """Fill the options every built-in sampler understands, unless the config sets them."""
    from mixpretrain.samplers import MixtureSampler, get_factory

    opts = dict(cfg.sampler.options)
    factory = get_factory(cfg.sampler.name)
    if isinstance(factory, type) and issubclass(factory, MixtureSampler):
        global_batch = cfg.train.micro_batch_size * cfg.train.grad_accum_steps * world
        opts.setdefault("seed", cfg.train.seed)
        opts.setdefault("total_budget", cfg.train.max_steps * global_batch)
        # Unique data: k crops of each training volume count as one pass over the domain.
        opts.setdefault("available", {d: index[d]["splits"]["train"]["samples"] * cfg.data.crops_per_volume
                                      for d in domains})
    return opts


def _check_output_dir(cfg: RunConfig) -> None:
    out = Path(cfg.output_dir)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"config key 'output_dir': {out} exists and is not a directory")
    if out.is_dir() and any(out.iterdir()) and not (out / RUN_FILE).is_file():
        raise ConfigError(
            f"config key 'output_dir': {out} is not empty and holds no {RUN_FILE}: it is not a mixpretrain run "
            f"directory, and nothing in it will be overwritten. Choose a new or empty output_dir."
        )


def preflight(cfg: RunConfig, world_size: int) -> Plan:
    deepspeed_config(cfg, "fp32")  # the template exists and fits the run config
    domains, index = resolve_domains(cfg)
    _check_output_dir(cfg)
    resume = ckpt.latest_complete(ckpt.checkpoint_dir(cfg))
    run_file = Path(cfg.output_dir) / RUN_FILE
    run_id = json.loads(run_file.read_text())["run_id"] if run_file.is_file() else secrets.token_hex(4)
    changed: list[str] = []
    if resume is not None:
        changed = ckpt.check_resume(cfg, ckpt.read_meta(resume[1]), world_size)
        if changed:
            log.warning("resuming %s with changed keys %s", cfg.output_dir, changed)
    elif run_file.is_file():
        # An attempt that stopped before its first checkpoint left nothing to resume: start afresh,
        # saying what changed (its metrics records are moved to the .discarded files at start).
        earlier = json.loads(run_file.read_text()).get("config", {})
        differ = config_diff(earlier, config_to_dict(cfg))
        if differ:
            log.warning("%s: the attempt recorded in %s stopped before its first checkpoint; nothing to resume, "
                        "starting afresh with changed keys %s", cfg.output_dir, RUN_FILE, differ)
    try:
        from mixpretrain.samplers import build

        sampler = build(cfg.sampler.name, domains, **sampler_options(cfg, domains, index, world_size))
    except ValueError as exc:
        raise ConfigError(f"config key 'sampler': {exc}") from exc
    torch.manual_seed(cfg.train.seed)  # same initial weights on every rank
    try:
        model = build_model(cfg)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"config key 'model': {exc}") from exc
    if resume is not None and changed:
        _refuse_unloadable(cfg, ckpt.read_meta(resume[1]), domains, model, run_file)
    preprocessing = {d: {"modality": index[d].get("modality"), **(index[d].get("preprocessing") or {})}
                     for d in domains}
    return Plan(domains, model, sampler, resume, run_id, preprocessing)


def _refuse_unloadable(cfg: RunConfig, meta: dict[str, Any], domains: tuple[str, ...], model: torch.nn.Module,
                       run_file: Path) -> None:
    """``train.allow_config_change`` lets any key change, but a checkpoint loads only into a model
    with the same parameter shapes, and its consumption counts and sampler state only into a run
    over the same domains: say so here, before any process group starts, rather than with a
    size-mismatch traceback from inside DeepSpeed."""
    where = f"{cfg.output_dir}/checkpoints/{ckpt.tag_for(meta['step'])}"
    saved_domains = json.loads(run_file.read_text()).get("domains") if run_file.is_file() else None
    if saved_domains is not None and list(saved_domains) != list(domains):
        raise ConfigError(f"config key 'data.domains': checkpoint {where} was trained on domains {saved_domains}, "
                          f"this run has {list(domains)}; a run cannot be resumed over other domains. Use another "
                          "output_dir (and load the encoder export for a new run).")
    try:
        saved_cfg = config_from_dict(meta["config"])
        with torch.device("meta"):  # shapes only: no memory, no initialisation
            saved_model = build_model(saved_cfg)
    except (ConfigError, ValueError, TypeError, KeyError) as exc:
        log.warning("could not rebuild the checkpoint's model to compare shapes (%s); loading it as is", exc)
        return
    old = {k: tuple(v.shape) for k, v in saved_model.state_dict().items()}
    new = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    differ = sorted(k for k in old.keys() | new.keys() if old.get(k) != new.get(k))
    if differ:
        keys = [k for k in config_diff(meta["config"], config_to_dict(cfg)) if k.startswith(("model.", "data.crop_size"))]
        first = differ[0]
        raise ConfigError(
            f"checkpoint {where} holds another model: {len(differ)} parameter(s) differ in shape (e.g. {first}: "
            f"{old.get(first)} in the checkpoint, {new.get(first)} now; changed keys {keys}). "
            "train.allow_config_change cannot load weights into another architecture: use another output_dir."
        )


def _finished_record(cfg: RunConfig, plan: Plan) -> dict[str, Any] | None:
    """Re-running a finished run (the same command again) has nothing to train: say so and return
    its last metrics record, without building an engine or starting a process group. A run whose
    last checkpoint is final but whose encoder export is missing (killed in between) goes on as a
    resume, which writes the export."""
    out = Path(cfg.output_dir)
    if plan.resume is None or plan.resume[0] < cfg.train.max_steps or not (out / "encoder.pt").is_file():
        return None
    log.info("%s: the run already finished at step %d (train.max_steps %d): nothing to train; raise "
             "train.max_steps to extend it", out, plan.resume[0], cfg.train.max_steps)
    lines = (out / "metrics.jsonl").read_text().splitlines() if (out / "metrics.jsonl").is_file() else []
    return json.loads(lines[-1]) if lines else {}


def _write_run_file(cfg: RunConfig, plan: Plan, world: int) -> None:
    path = Path(cfg.output_dir) / RUN_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    record = {"run_id": plan.run_id, "config": config_to_dict(cfg), "world_size": world,
              "domains": list(plan.domains), "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "code": code_record()}  # at the latest (re)start
    ckpt.atomic_write(path, json.dumps(record, indent=1))


def run(cfg: RunConfig, local_rank: int | None = None) -> dict[str, Any]:
    """Train (or resume) the run described by ``cfg``; returns the last metrics record."""
    from mixpretrain.train import dist
    from mixpretrain.train.engine import build_engine
    from mixpretrain.train.evaluator import Evaluator, load_val_crops
    from mixpretrain.train.loggers import truncate_after
    from mixpretrain.train.trainer import Trainer

    start = time.time()
    world = int(os.environ.get("WORLD_SIZE", "1"))
    plan = preflight(cfg, world)
    finished = _finished_record(cfg, plan)
    if finished is not None:
        return finished
    info = dist.init_distributed(local_rank)
    if info.world_size != world:
        raise RuntimeError(f"WORLD_SIZE={world} but the process group has {info.world_size} ranks")
    resume_step = plan.resume[0] if plan.resume else 0
    if info.is_main:
        _write_run_file(cfg, plan, world)
        for name in ("metrics.jsonl", "sampler.jsonl"):  # drop records of a killed attempt
            moved = truncate_after(Path(cfg.output_dir) / name, resume_step)
            if moved:
                log.info("%s: moved %d records past step %d to the .discarded file", name, moved, resume_step)
    dist.barrier()

    mixture = MixtureStream(
        cfg.data.shards, plan.domains, seed=cfg.train.seed, rank=info.rank, world_size=info.world_size,
        resume_step=resume_step,
        stream_kwargs={"crop_size": tuple(cfg.data.crop_size), "crops_per_volume": cfg.data.crops_per_volume,
                       "strict": cfg.data.strict, "shuffle_buffer": cfg.data.shuffle_buffer, "epoch": resume_step},
    )
    loader = build_loader(mixture, cfg.train.micro_batch_size, num_workers=cfg.data.num_workers,
                          prefetch_factor=cfg.data.prefetch_factor, pin_memory=info.device.type == "cuda")
    engine, precision = build_engine(cfg, plan.model, info)
    evaluator = Evaluator(load_val_crops(cfg, plan.domains), plan.model.num_patches, cfg.train.seed, info.rank,
                          info.world_size, cfg.train.micro_batch_size)
    trainer = Trainer(cfg, info, engine, plan.model, precision, mixture, loader,
                      plan.sampler if info.is_main else None, evaluator,
                      ckpt.Checkpointer(cfg, info.rank, info.world_size), plan.run_id, plan.preprocessing)
    if plan.resume is not None:
        trainer.restore(trainer.checkpointer.load(engine, plan.resume[1]))
    else:
        torch.manual_seed(derive_seed(cfg.train.seed, "rank", info.rank))  # per-rank mask noise
        np.random.seed(derive_seed(cfg.train.seed, "numpy", info.rank))
        trainer._publish(np.asarray(plan.sampler.weights(), dtype=np.float64))
    record = trainer.fit(start)
    trainer.export_encoder(Path(cfg.output_dir) / "encoder.pt")  # all ranks: a gather under ZeRO-3
    dist.barrier()
    log.info("run finished at step %d in %.1fs", trainer.state.step, time.time() - start)
    dist.destroy()
    return record
