"""The model / optimizer side of training: MAE, AdamW, LR schedule, DeepSpeed engine.

Kept apart from the loop (``trainer.py``) so the loop only sees ``engine(x) -> MAEOutput``,
``engine.backward``, ``engine.step`` and never how the engine was configured.

DeepSpeed config: a JSON template per ZeRO stage in ``configs/deepspeed/zeroN.json`` (or the file
named by ``train.deepspeed_config``); every ``"auto"`` value in it is filled from the run config
(micro batch, accumulation, clipping, precision), and anything else the template sets is kept, so
a user can tune bucket sizes or offload without touching code.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch

from mixpretrain.config import ConfigError, RunConfig
from mixpretrain.train.dist import DistInfo
from mixpretrain.train.schedule import build_scheduler

log = logging.getLogger(__name__)

DS_CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs" / "deepspeed"


def resolve_precision(cfg: RunConfig, device: torch.device) -> str:
    """auto: bf16 on GPUs that have it, fp16 on older GPUs, fp32 on CPU."""
    want = cfg.train.precision
    if want != "auto":
        return want
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "fp32"


def ds_template_path(cfg: RunConfig) -> Path:
    if cfg.train.deepspeed_config:
        return Path(cfg.train.deepspeed_config)
    return DS_CONFIG_DIR / f"zero{cfg.train.zero_stage}.json"


def _fill(node: Any, values: dict[str, Any], path: str = "") -> Any:
    """Replace ``"auto"`` leaves by ``values[dotted path]``; an unknown ``auto`` is an error."""
    if isinstance(node, dict):
        return {k: _fill(v, values, f"{path}{k}.") for k, v in node.items()}
    if node == "auto":
        key = path.rstrip(".")
        if key not in values:
            raise ConfigError(f"DeepSpeed template: no value for 'auto' at '{key}'")
        return values[key]
    return node


def deepspeed_config(cfg: RunConfig, precision: str) -> dict[str, Any]:
    path = ds_template_path(cfg)
    if not path.is_file():
        raise ConfigError(f"config key 'train.deepspeed_config': DeepSpeed template {path} does not exist")
    try:
        template = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ConfigError(f"DeepSpeed template {path} is not valid JSON: {exc}") from exc
    values = {
        "train_micro_batch_size_per_gpu": cfg.train.micro_batch_size,
        "gradient_accumulation_steps": cfg.train.grad_accum_steps,
        "gradient_clipping": cfg.train.grad_clip,
        "bf16.enabled": precision == "bf16",
        "fp16.enabled": precision == "fp16",
        "zero_optimization.stage": cfg.train.zero_stage,
    }
    ds = _fill(template, values)
    zero = ds.setdefault("zero_optimization", {})
    if zero.setdefault("stage", cfg.train.zero_stage) != cfg.train.zero_stage:
        # It was overwritten by train.zero_stage without a word: a ZeRO-3 template ran as ZeRO 0.
        raise ConfigError(f"DeepSpeed template {path}: zero_optimization.stage {zero['stage']} conflicts with "
                          f"train.zero_stage {cfg.train.zero_stage}: set train.zero_stage={zero['stage']} "
                          "(or \"stage\": \"auto\" in the template)")
    # A template that hard-codes a different batch would silently change the run: refuse.
    for key in ("train_micro_batch_size_per_gpu", "gradient_accumulation_steps"):
        if ds.get(key, values[key]) != values[key]:
            raise ConfigError(f"DeepSpeed template {path}: '{key}'={ds[key]} conflicts with the run config ({values[key]})")
    if ds.pop("train_batch_size", "auto") != "auto":  # derived by DeepSpeed from micro x accum x world
        log.warning("DeepSpeed template %s: train_batch_size is ignored; it follows train.micro_batch_size x "
                    "train.grad_accum_steps x ranks", path)
    return ds


def build_model(cfg: RunConfig) -> torch.nn.Module:
    from mixpretrain.models import build_mae

    return build_mae(
        cfg.model.preset,
        img_size=tuple(cfg.data.crop_size),
        patch_size=cfg.model.patch_size,
        in_chans=1,
        mask_ratio=cfg.model.mask_ratio,
        norm_pix_loss=cfg.model.norm_pix_loss,
        activation_checkpointing=cfg.model.activation_checkpointing,
        **cfg.model.overrides,
    )


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """No weight decay on biases, norms, tokens and position embeddings (1-D or named so)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if p.ndim <= 1 or name.endswith(".bias") or "token" in name or "pos_embed" in name:
            no_decay.append(p)
        else:
            decay.append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def build_engine(cfg: RunConfig, model: torch.nn.Module, info: DistInfo) -> tuple[Any, str]:
    """Wrap the model in a DeepSpeed engine with AdamW and the LR schedule; returns (engine, precision)."""
    import deepspeed

    precision = resolve_precision(cfg, info.device)
    ds_cfg = deepspeed_config(cfg, precision)
    optimizer = torch.optim.AdamW(param_groups(model, cfg.train.weight_decay), lr=cfg.train.lr, betas=(0.9, 0.95))
    scheduler = build_scheduler(optimizer, cfg.train)
    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, lr_scheduler=scheduler, config=ds_cfg)
    log.info("DeepSpeed engine: ZeRO %d, %s, micro batch %d x accum %d x world %d",
             cfg.train.zero_stage, precision, cfg.train.micro_batch_size, cfg.train.grad_accum_steps, info.world_size)
    return engine, precision


def engine_dtype(precision: str) -> torch.dtype:
    return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision, torch.float32)
