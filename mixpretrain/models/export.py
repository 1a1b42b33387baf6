"""Encoder export: weights + the metadata that rebuilds the encoder, in one file, no pickle.

File format (``torch.save`` of plain containers, read back with ``torch.load(weights_only=True)``,
so loading never runs code from the file):

    {"format": "mixpretrain.encoder", "format_version": 1,
     "meta": {img_size: [D,H,W], patch_size: [pd,ph,pw], in_chans, width, depth, heads, mlp_ratio,
              qkv_bias, norm_eps, pos_embed: "sincos3d", grid_size, num_patches, ...extra_meta},
     "state_dict": {name: tensor}}

Position embeddings are fixed sin-cos, so they are not stored: :func:`load_encoder` recomputes
them for the saved image size or for any other ``img_size`` (a multiple of the patch size).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .mae3d import MAE3D, MAEEncoder
from .posembed import POS_EMBED_KIND

FORMAT = "mixpretrain.encoder"
FORMAT_VERSION = 1
_BUILD_KEYS = ("img_size", "patch_size", "in_chans", "width", "depth", "heads", "mlp_ratio", "qkv_bias", "norm_eps")
_INT_KEYS = ("in_chans", "width", "depth", "heads")  # a float here builds, then fails at the first forward


def _find_encoder(model: nn.Module) -> MAEEncoder:
    """The encoder inside an MAE3D, a bare encoder, or a wrapper (DDP, DeepSpeed engine: ``.module``;
    torch.compile: ``._orig_mod``)."""
    seen = model
    while not isinstance(seen, MAE3D | MAEEncoder) and (hasattr(seen, "module") or hasattr(seen, "_orig_mod")):
        seen = seen.module if hasattr(seen, "module") else seen._orig_mod
    if isinstance(seen, MAE3D):
        return seen.encoder
    if isinstance(seen, MAEEncoder):
        return seen
    raise TypeError(f"save_encoder: expected an MAE3D or MAEEncoder (or a wrapper of one), got {type(model).__name__}")


def save_encoder(model: nn.Module, path: str | os.PathLike, *, overwrite: bool = False,
                 extra_meta: dict[str, Any] | None = None) -> Path:
    """Write the encoder of ``model`` to ``path`` (atomically: temp file, then rename).

    Under ZeRO-3, gather the parameters first (``deepspeed.zero.GatheredParameters``). ``extra_meta``
    (JSON-able: e.g. the run name, step, domains) is stored beside the build metadata.
    """
    enc = _find_encoder(model)
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"save_encoder: {path} exists (pass overwrite=True to replace it)")
    meta = enc.config()
    if extra_meta:
        clash = sorted(set(extra_meta) & set(meta))
        if clash:
            raise ValueError(f"save_encoder: extra_meta keys {clash} clash with the build metadata")
        try:
            extra_meta = json.loads(json.dumps(extra_meta))
        except (TypeError, ValueError) as exc:
            raise ValueError(f"save_encoder: extra_meta must be JSON-able plain data: {exc}") from exc
        meta.update(extra_meta)
    state = {k: v.detach().cpu().contiguous().clone() for k, v in enc.state_dict().items()}
    payload = {"format": FORMAT, "format_version": FORMAT_VERSION, "meta": meta, "state_dict": state}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    torch.save(payload, tmp)
    os.replace(tmp, path)
    return path


def read_encoder_file(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load and validate an encoder file; returns ``{"meta": ..., "state_dict": ...}``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"load_encoder: {path} does not exist")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises several types for corrupt or pickled-object files
        raise ValueError(f"load_encoder: {path} is not a readable encoder file ({type(exc).__name__}: {exc})") from exc
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ValueError(f"load_encoder: {path} is not a mixpretrain encoder file (no format={FORMAT!r})")
    version = payload.get("format_version")
    if isinstance(version, bool) or not isinstance(version, int) or not 1 <= version <= FORMAT_VERSION:
        raise ValueError(f"load_encoder: {path} has format_version {version!r}; this code reads up to {FORMAT_VERSION}")
    meta = payload.get("meta")
    missing = [k for k in _BUILD_KEYS if not isinstance(meta, dict) or k not in meta]
    if missing:
        raise ValueError(f"load_encoder: {path} metadata lacks {missing}")
    if meta.get("pos_embed") != POS_EMBED_KIND:
        raise ValueError(f"load_encoder: {path} has pos_embed {meta.get('pos_embed')!r}; supported: {POS_EMBED_KIND!r}")
    wrong = {k: meta[k] for k in _INT_KEYS if isinstance(meta[k], bool) or not isinstance(meta[k], int)}
    if wrong:
        raise ValueError(f"load_encoder: {path} metadata {wrong} should be integers")
    if not isinstance(payload.get("state_dict"), dict):
        raise ValueError(f"load_encoder: {path} holds no state_dict mapping of weights")
    return payload


def load_encoder(path: str | os.PathLike, img_size: int | Sequence[int] | None = None, *,
                 map_location: str | torch.device = "cpu",
                 activation_checkpointing: bool = False) -> MAEEncoder:
    """Rebuild the encoder saved by :func:`save_encoder`, optionally for another ``img_size``.

    The sin-cos position embedding is recomputed for the new token grid; all weights load strictly.
    The encoder's ``export_meta`` attribute holds the file's metadata (extra keys included).
    """
    payload = read_encoder_file(path, map_location)
    meta = payload["meta"]
    kwargs = {k: meta[k] for k in _BUILD_KEYS}
    if img_size is not None:
        kwargs["img_size"] = img_size
    try:
        enc = MAEEncoder(**kwargs, activation_checkpointing=activation_checkpointing)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"load_encoder: {path} metadata does not describe a buildable encoder: {exc}") from exc
    try:
        enc.load_state_dict(payload["state_dict"], strict=True)
    except RuntimeError as exc:
        raise ValueError(f"load_encoder: {path} weights do not match its metadata: {exc}") from exc
    # The build keys as loaded (img_size may differ from the file's); the file's own under "saved".
    enc.export_meta = {**meta, **enc.config(), "saved": {k: meta.get(k) for k in ("img_size", "grid_size", "num_patches")}}
    return enc.to(map_location)
