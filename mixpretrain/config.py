"""One typed configuration schema for a pretraining run.

A run config is a YAML file (see ``configs/``) plus ``key.sub=value`` overrides from the
command line. Everything is validated before any process group or data loader starts:
an unknown key fails with the key's dotted name and the closest valid names, a value of
the wrong type fails with the key, the value and the expected type.

    cfg = load_config("configs/demo.yaml", ["train.max_steps=20", "data.crop_size=[32,32,16]"])
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml


class ConfigError(ValueError):
    """A config file or override is invalid; the message names the key and the reason.

    ``key`` is the dotted config key at fault where one is known: it lets ``load_config`` say
    whether the bad value came from the YAML file or from a command-line override."""

    def __init__(self, message: str, key: str | None = None) -> None:
        super().__init__(message)
        self.key = key


@dataclass
class DataConfig:
    shards: str = "outputs/demo/shards"  # shards dir (with index.json) or a list of URLs
    domains: list[str] = field(default_factory=list)  # empty: every domain in the index
    crop_size: list[int] = field(default_factory=lambda: [32, 32, 32])  # one int (cube) or three
    crops_per_volume: int = 4
    num_workers: int = 2
    shuffle_buffer: int = 16
    prefetch_factor: int = 2
    val_crops_per_domain: int = 8  # fixed crops (and fixed masks) for per-domain validation
    strict: bool = False  # raise on a corrupted shard instead of a counted, logged skip


@dataclass
class ModelConfig:
    preset: str = "tiny"
    patch_size: int = 8
    mask_ratio: float = 0.75
    norm_pix_loss: bool = True
    activation_checkpointing: bool = False
    overrides: dict[str, Any] = field(default_factory=dict)  # explicit sizes (width, depth, heads, ...)


@dataclass
class SamplerConfig:
    name: str = "transfer"
    update_every: int = 10  # optimizer steps between sampler observations / weight updates
    options: dict[str, Any] = field(default_factory=dict)  # passed to samplers.build(name, ...)


@dataclass
class TrainConfig:
    max_steps: int = 100
    micro_batch_size: int = 4
    grad_accum_steps: int = 1
    lr: float = 1.5e-4
    min_lr: float = 1.0e-5
    weight_decay: float = 0.05
    warmup_steps: int = 10
    schedule: str = "cosine"  # cosine | wsd (warm-up, stable, decay)
    decay_fraction: float = 0.2  # wsd only: fraction of steps spent decaying
    grad_clip: float = 1.0
    precision: str = "auto"  # auto | bf16 | fp16 | fp32 (auto: bf16 on GPUs that have it, fp16 on older GPUs, fp32 on CPU)
    zero_stage: int = 0
    checkpoint_every: int = 50
    eval_every: int = 25
    log_every: int = 1
    seed: int = 0
    allow_config_change: bool = False
    # Added by the trainer (issue 6):
    deepspeed_config: str = ""  # DeepSpeed JSON template; empty: configs/deepspeed/zero{zero_stage}.json
    keep_checkpoints: int = 2  # newest complete checkpoints kept on disk (older ones removed)


@dataclass
class LoggingConfig:
    wandb: bool = True  # offline unless the user is logged in
    wandb_project: str = "mixpretrain"
    progress_bar: bool = True


@dataclass
class RunConfig:
    output_dir: str = "outputs/run"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)


# Keys whose values are free-form dicts: their contents are validated by their consumers
# (the model builder, the sampler registry), not by this schema.
_FREE_FORM = {"model.overrides", "sampler.options"}


def _valid_keys(cls: type, prefix: str = "") -> list[str]:
    keys = []
    for f in dataclasses.fields(cls):
        name = f"{prefix}{f.name}"
        keys.append(name)
        ftype = typing.get_type_hints(cls)[f.name]
        if dataclasses.is_dataclass(ftype):
            keys.extend(_valid_keys(ftype, name + "."))
    return keys


def _unknown_key(key: str) -> ConfigError:
    close = difflib.get_close_matches(key, _valid_keys(RunConfig), n=3, cutoff=0.5)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    return ConfigError(f"unknown config key '{key}'{hint}", key=key)


def _coerce(key: str, value: Any, ftype: Any) -> Any:
    """Check ``value`` against the annotated type, converting only where it is lossless."""
    origin = typing.get_origin(ftype)
    if ftype is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(ftype):
            try:
                return _coerce(key, value, arg)
            except ConfigError:
                continue
        raise ConfigError(f"config key '{key}': value {value!r} does not match {ftype}", key=key)
    if origin is list:
        (item_type,) = typing.get_args(ftype)
        if key == "data.crop_size" and isinstance(value, int):
            value = [value] * 3  # one int means a cube
        if not isinstance(value, list | tuple):
            raise ConfigError(f"config key '{key}': expected a list, got {value!r}", key=key)
        return [_coerce(f"{key}[{i}]", v, item_type) for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"config key '{key}': expected a mapping, got {value!r}", key=key)
        return dict(value)
    if ftype is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"config key '{key}': expected true or false, got {value!r}", key=key)
    if ftype is float and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if ftype is float and isinstance(value, str):
        try:  # YAML 1.1 reads "1e-3" (no dot) as a string; it is clearly meant as a number
            return float(value)
        except ValueError:
            pass
    if ftype is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if ftype is str and isinstance(value, str):
        return value
    raise ConfigError(f"config key '{key}': expected {getattr(ftype, '__name__', ftype)}, got {value!r}", key=key)


def _build(cls: type, raw: dict[str, Any], prefix: str = "") -> Any:
    if not isinstance(raw, dict):
        raise ConfigError(f"config section '{prefix.rstrip('.') or '<root>'}' must be a mapping, got {raw!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    for key in raw:
        if key not in names:
            raise _unknown_key(f"{prefix}{key}")
    kwargs = {}
    for name, value in raw.items():
        ftype = hints[name]
        if dataclasses.is_dataclass(ftype):
            kwargs[name] = _build(ftype, value or {}, f"{prefix}{name}.")
        else:
            kwargs[name] = _coerce(f"{prefix}{name}", value, ftype)
    return cls(**kwargs)


# Numeric ranges checked before any process starts (a value out of range would otherwise fail deep
# inside torch or a DataLoader worker, after the process group and the engine were built).
_RANGES: tuple[tuple[str, str, float], ...] = (
    ("data.crops_per_volume", ">=", 1), ("data.num_workers", ">=", 0), ("data.shuffle_buffer", ">=", 0),
    ("data.prefetch_factor", ">=", 1), ("data.val_crops_per_domain", ">=", 1), ("model.patch_size", ">=", 1),
    ("train.max_steps", ">=", 1), ("train.micro_batch_size", ">=", 1), ("train.grad_accum_steps", ">=", 1),
    ("train.checkpoint_every", ">=", 1), ("train.eval_every", ">=", 1), ("train.log_every", ">=", 1),
    ("train.keep_checkpoints", ">=", 1), ("train.lr", ">", 0), ("train.min_lr", ">=", 0),
    ("train.weight_decay", ">=", 0), ("train.warmup_steps", ">=", 0), ("train.decay_fraction", ">=", 0),
    ("train.decay_fraction", "<=", 1), ("train.grad_clip", ">=", 0), ("train.seed", ">=", 0),
    ("sampler.update_every", ">=", 1),
)
_COMPARE = {">=": lambda v, b: v >= b, ">": lambda v, b: v > b, "<=": lambda v, b: v <= b}


def _get(cfg: RunConfig, key: str) -> Any:
    node: Any = cfg
    for part in key.split("."):
        node = getattr(node, part)
    return node


def _validate(cfg: RunConfig) -> None:
    from mixpretrain.data.shards import local_shards_dir

    try:  # a file: URL (as webdataset takes) is the local folder it names, for every reader downstream
        cfg.data.shards = str(local_shards_dir(cfg.data.shards))
    except ValueError as exc:
        raise ConfigError(f"config key 'data.shards': {exc}", key="data.shards") from None
    for key, op, bound in _RANGES:
        value = _get(cfg, key)
        if not (math.isfinite(value) and _COMPARE[op](value, bound)):
            raise ConfigError(f"config key '{key}': must be {op} {bound:g}, got {value}", key=key)
    if len(cfg.data.crop_size) != 3 or any(c <= 0 for c in cfg.data.crop_size):
        raise ConfigError(f"config key 'data.crop_size': expected one int or three positive ints, got {cfg.data.crop_size}",
                          key="data.crop_size")
    if any(c % cfg.model.patch_size for c in cfg.data.crop_size):
        raise ConfigError(
            f"config key 'data.crop_size': {cfg.data.crop_size} must be a multiple of model.patch_size={cfg.model.patch_size}",
            key="data.crop_size",
        )
    if not 0.0 < cfg.model.mask_ratio < 1.0:
        raise ConfigError(f"config key 'model.mask_ratio': must be in (0, 1), got {cfg.model.mask_ratio}",
                          key="model.mask_ratio")
    if cfg.train.schedule not in ("cosine", "wsd"):
        raise ConfigError(f"config key 'train.schedule': expected cosine or wsd, got {cfg.train.schedule!r}",
                          key="train.schedule")
    if cfg.train.precision not in ("auto", "bf16", "fp16", "fp32"):
        raise ConfigError(f"config key 'train.precision': expected auto, bf16, fp16 or fp32, got {cfg.train.precision!r}",
                          key="train.precision")
    if cfg.train.zero_stage not in (0, 1, 2, 3):
        raise ConfigError(f"config key 'train.zero_stage': expected 0..3, got {cfg.train.zero_stage}", key="train.zero_stage")


def parse_override(text: str) -> tuple[str, Any]:
    """``a.b=value`` -> ("a.b", parsed value). Values are parsed as YAML (``3``, ``true``, ``[1,2]``)."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} is not of the form key.sub=value")
    key, _, raw = text.partition("=")
    key = key.strip()
    if key.startswith("--"):
        key = key[2:]
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        raise ConfigError(f"override {text!r}: value is not valid YAML ({exc})") from exc
    return key, value


def _set_dotted(raw: dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    node = raw
    for i, part in enumerate(parts[:-1]):
        dotted = ".".join(parts[: i + 1])
        if dotted in _FREE_FORM:  # e.g. sampler.options.tau=2
            node = node.setdefault(part, {})
            continue
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"override '{key}': '{dotted}' is not a section")
        node = child
    node[parts[-1]] = value


def config_from_dict(raw: dict[str, Any], overrides: list[str] | None = None) -> RunConfig:
    raw = json.loads(json.dumps(raw or {}))  # deep copy; YAML gives plain types
    for text in overrides or []:
        key, value = parse_override(text)
        if key not in _valid_keys(RunConfig) and not key.startswith(tuple(f"{k}." for k in _FREE_FORM)):
            raise _unknown_key(key)
        _set_dotted(raw, key, value)
    cfg = _build(RunConfig, raw)
    _validate(cfg)
    return cfg


def load_config(path: str | Path | None, overrides: list[str] | None = None) -> RunConfig:
    """Read a YAML run config (or the defaults when ``path`` is None) and apply overrides."""
    raw: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist")
        try:
            raw = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"config file {path} is not valid YAML: {exc}") from exc
    try:
        return config_from_dict(raw, overrides)
    except ConfigError as exc:
        # Name where the bad key or value came from: the command line or the file.
        given = [parse_override(t)[0] for t in overrides or []]
        if exc.key is not None and any(exc.key == k or exc.key.startswith((f"{k}.", f"{k}[")) for k in given):
            raise ConfigError(f"command-line override: {exc}", key=exc.key) from exc
        if path is not None:
            raise ConfigError(f"{path}: {exc}", key=exc.key) from exc
        raise


def config_to_dict(cfg: RunConfig) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}} -> {"a.b": 1}; free-form dicts are flattened too, for diffs."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict) and v:
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def config_fingerprint(cfg: RunConfig, ignore: tuple[str, ...] = ()) -> str:
    """Stable hash of the config, for refusing to resume a run under a different config."""
    flat = {k: v for k, v in flatten(config_to_dict(cfg)).items() if k not in ignore}
    return hashlib.sha256(json.dumps(flat, sort_keys=True).encode()).hexdigest()[:16]


def config_diff(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    """Dotted keys whose values differ between two config dicts."""
    fa, fb = flatten(a), flatten(b)
    return sorted(k for k in set(fa) | set(fb) if fa.get(k) != fb.get(k))
