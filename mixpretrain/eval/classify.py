"""Classification on a pretrained encoder: linear probe and fine-tuning on pooled token features.

Input: a CSV with columns ``image`` (path, relative to the CSV's folder or absolute), ``label``
(integer class 0..K-1; ``1.0`` reads as 1, ``1.5`` is an error) and optionally ``split`` (``train``
/ ``val``, ``validation`` being read as ``val``; without it a deterministic 25% of rows, by hash of the
image path, are held out). No image may be in both splits, and every class of the val split must
be in the train split. Metrics on the held-out split: accuracy and ROC AUC (binary, or macro
one-vs-rest for more classes; MONAI's ``compute_roc_auc``); both NaN, with a warning, when a class
probability is not finite (a diverged fine-tune), never a made-up number.

- ``probe``: the encoder is frozen; the mean of its tokens is standardised and a logistic
  regression (one linear layer) is trained full-batch on the train split.
- ``finetune``: encoder and linear head trained end to end (AdamW, lower LR on the encoder).
"""

from __future__ import annotations

import csv
import hashlib
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

MODES = ("probe", "finetune")


@dataclass
class ClassifyConfig:
    mode: str = "both"  # probe | finetune | both
    patch_size: int | None = None  # expected patch size; None: the export's
    img_size: list[int] | None = None  # None: the export's image size
    intensity: str = "none"  # none | ct | zscore | percentile | ingest (the export's recorded recipe)
    intensity_domain: str | None = None  # --domain: whose recipe (ingest) and spacing (spacing "export"); None: the only one
    probe_steps: int = 300
    probe_lr: float = 1e-2
    finetune_steps: int = 50
    finetune_lr: float = 1e-4
    batch_size: int = 4
    weight_decay: float = 1e-4
    seed: int = 0
    device: str = "auto"
    scratch: bool = False  # same architecture, random init (baseline)
    # None: resize whole images to the encoder size; "export" (the pretraining domain's recorded
    # spacing) or "X,Y,Z" mm: resample, pad/crop all to one size, the encoder's position grid rebuilt for it
    spacing: str | None = None


SPLITS = {"train": "train", "val": "val", "validation": "val"}  # the split column's values (lower case)


def _parse_label(raw: str, path: Path, line: int) -> int:
    """An integer class >= 0 (``1`` or ``1.0``); ``1.5``, ``-1``, ``nan``, ``x`` are errors naming the line."""
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value != int(value) or value < 0:
        raise ValueError(f"{path} line {line}: label {raw!r} is not an integer class (0, 1, ..., K-1)")
    return int(value)


def read_classification_csv(path: str | Path) -> tuple[list[dict], list[dict]]:
    """(train items, val items), each ``{"image": abs path, "label": int}``; errors name the row.

    Refused: a label that is not a whole number >= 0, a split other than train / val (``test`` rows
    included: classify holds out the val rows only), an image in both splits, fewer than 2 train rows."""
    from .splits import check_disjoint

    path = Path(path)
    if path.is_dir():
        hint = ""
        if (path / "classification.csv").is_file():
            hint = f"; did you mean {path / 'classification.csv'}?"
        elif (path / "dataset.json").is_file():
            hint = " (a Decathlon dataset folder is the input of `eval segment`)"
        raise ValueError(f"{path} is a folder: classify expects a CSV of (image, label) rows, "
                         f"columns image,label[,split]{hint}")
    if not path.is_file():
        raise FileNotFoundError(f"classification CSV {path} does not exist")
    with path.open(newline="") as fh:
        reader = csv.DictReader(fh)
        cols = set(reader.fieldnames or [])
        missing = [c for c in ("image", "label") if c not in cols]
        if missing:
            raise ValueError(f"{path}: missing column(s) {missing}; expected image,label[,split], found {sorted(cols)}")
        rows = list(reader)
    if not rows:
        raise ValueError(f"{path}: no rows")
    train, val = [], []
    for line, row in enumerate(rows, start=2):  # header is line 1
        raw = (row.get("label") or "").strip()
        if not raw:
            raise ValueError(f"{path} line {line}: missing label for image {row.get('image')!r}")
        label = _parse_label(raw, path, line)
        image = Path(row["image"].strip())
        item = {"image": str(image if image.is_absolute() else path.parent / image), "label": label}
        split = (row.get("split") or "").strip().lower()
        if split and split not in SPLITS:
            hint = " (a test split is not read: drop those rows, or mark them val)" if split == "test" else ""
            raise ValueError(f"{path} line {line}: split {split!r} is not train or val{hint}")
        if not split:  # deterministic hold-out by hash of the path
            split = "val" if int(hashlib.sha256(row["image"].encode()).hexdigest(), 16) % 4 == 0 else "train"
        (train if SPLITS[split] == "train" else val).append(item)
    if not train or not val:
        raise ValueError(f"{path}: need rows in both train and val splits, got {len(train)} train, {len(val)} val")
    if len(train) < 2:
        raise ValueError(f"{path}: need at least 2 train rows (the probe standardises features over them), got 1")
    check_disjoint(train, val, path)
    return train, val


def classification_metrics(probs: Any, labels: Any, n_classes: int) -> dict[str, float]:
    """Accuracy and ROC AUC. NaN, with a warning, when the val split lacks a class (AUC) or when a
    class probability is not finite (both: argmax and ranking of NaN would give made-up numbers);
    then ``note`` says why."""
    import torch
    from monai.metrics import compute_roc_auc

    probs, labels = torch.as_tensor(probs).float(), torch.as_tensor(labels).long()
    finite = torch.isfinite(probs).all(1) if probs.ndim == 2 else torch.isfinite(probs)
    if not bool(finite.all()):
        note = (f"{int((~finite).sum())} of {len(finite)} val rows have non-finite class probabilities "
                "(NaN/inf features or a diverged fine-tune): accuracy and AUC undefined")
        log.warning("classification: %s", note)
        return {"accuracy": float("nan"), "auc": float("nan"), "note": note}
    acc = float((probs.argmax(1) == labels).float().mean())
    if len(torch.unique(labels)) < 2:
        log.warning("val split has one class only: AUC undefined")
        return {"accuracy": acc, "auc": float("nan")}
    if n_classes == 2:
        auc = compute_roc_auc(probs[:, 1], labels)
    else:
        onehot = torch.nn.functional.one_hot(labels, n_classes)
        auc = compute_roc_auc(probs, onehot, average="macro")
    return {"accuracy": acc, "auc": float(auc)}


def _stack(volumes: list[dict], items: list[dict]) -> tuple[Any, Any]:
    import torch

    return torch.stack([v["image"] for v in volumes]), torch.tensor([it["label"] for it in items])


def common_size(volumes: list[dict], patch_size: Sequence[int]) -> list[int]:
    """One input size for volumes resampled to a spacing: per axis the largest, rounded up to a
    multiple of the patch size (the encoder's token grid)."""
    largest = np.max([v["image"].shape[1:] for v in volumes], axis=0)
    return [int(-(-int(n) // int(p)) * int(p)) for n, p in zip(largest, patch_size, strict=True)]


def _to_size(volumes: list[dict], size: list[int]) -> None:
    """Centre pad / crop every image to ``size`` in place (MONAI ResizeWithPadOrCrop)."""
    from monai.transforms import ResizeWithPadOrCrop

    fit = ResizeWithPadOrCrop(size)
    for v in volumes:
        out = fit(v["image"])
        v["image"] = (out.as_tensor() if hasattr(out, "as_tensor") else out).float()


def _features(encoder: Any, x: Any, device: Any, batch_size: int) -> Any:
    import torch

    encoder.eval()
    with torch.no_grad():
        return torch.cat([encoder.forward_pooled(x[i : i + batch_size].to(device)).float().cpu()
                          for i in range(0, len(x), batch_size)])


def linear_probe(encoder: Any, data: dict, n_classes: int, cfg: ClassifyConfig, device: Any) -> dict:
    """Logistic regression on frozen, standardised pooled features."""
    import torch

    f_train = _features(encoder, data["x_train"], device, cfg.batch_size)
    f_val = _features(encoder, data["x_val"], device, cfg.batch_size)
    mean = f_train.mean(0)
    # One training row has no (unbiased) std: its NaN would make every probability NaN; centre only.
    std = (f_train.std(0) if len(f_train) > 1 else torch.ones_like(mean)).clamp_min(1e-6)
    f_train, f_val = (f_train - mean) / std, (f_val - mean) / std
    torch.manual_seed(cfg.seed)
    head = torch.nn.Linear(f_train.shape[1], n_classes)
    opt = torch.optim.AdamW(head.parameters(), lr=cfg.probe_lr, weight_decay=cfg.weight_decay)
    for _ in range(cfg.probe_steps):  # full batch: features are small
        opt.zero_grad()
        torch.nn.functional.cross_entropy(head(f_train), data["y_train"]).backward()
        opt.step()
    with torch.no_grad():
        probs = head(f_val).softmax(1)
    return classification_metrics(probs, data["y_val"], n_classes)


def pooled_classifier(encoder: Any, n_classes: int) -> Any:
    """Encoder + linear head on the token mean (built here so that torch loads only when used)."""
    import torch

    class PooledClassifier(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.encoder = encoder
            self.head = torch.nn.Linear(encoder.width, n_classes)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(self.encoder.forward_pooled(x))

    return PooledClassifier()


def finetune(encoder: Any, data: dict, n_classes: int, cfg: ClassifyConfig, device: Any) -> dict:
    """Encoder + linear head trained end to end for ``finetune_steps`` mini-batches."""
    import torch

    torch.manual_seed(cfg.seed)
    model = pooled_classifier(encoder, n_classes).to(device)
    opt = torch.optim.AdamW([
        {"params": model.encoder.parameters(), "lr": cfg.finetune_lr},
        {"params": model.head.parameters(), "lr": cfg.finetune_lr * 10},
    ], weight_decay=cfg.weight_decay)
    rng = np.random.default_rng(cfg.seed)
    x, y = data["x_train"], data["y_train"]
    model.train()
    for _ in range(cfg.finetune_steps):
        idx = torch.as_tensor(rng.choice(len(x), size=min(cfg.batch_size, len(x)), replace=False))
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(x[idx].to(device)), y[idx].to(device))
        loss.backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        xv = data["x_val"]
        probs = torch.cat([model(xv[i : i + cfg.batch_size].to(device)).softmax(1).cpu()
                           for i in range(0, len(xv), cfg.batch_size)])
    return classification_metrics(probs, data["y_val"], n_classes)


def run_classification(encoder_path: str | Path, csv_path: str | Path, cfg: ClassifyConfig | None = None) -> dict:
    """Load the encoder and the CSV, run the requested mode(s); returns metrics per mode."""
    import torch

    from .common import (
        check_steps,
        load_pretrained,
        load_volumes,
        pick_device,
        resolve_inputs,
        scale_report,
        seed_everything,
    )
    from .splits import check_train_has_classes

    cfg = cfg or ClassifyConfig()
    modes = MODES if cfg.mode == "both" else (cfg.mode,)
    if any(m not in MODES for m in modes):
        raise ValueError(f"classification mode {cfg.mode!r} unknown; valid: probe, finetune, both")
    for mode in modes:  # a mode not run may keep any step count
        check_steps(f"{mode}_steps", getattr(cfg, f"{mode}_steps"))
    check_steps("batch_size", cfg.batch_size)
    seed_everything(cfg.seed)
    device = pick_device(cfg.device)
    train, val = read_classification_csv(csv_path)
    labels = sorted({it["label"] for it in train + val})
    if labels != list(range(len(labels))) or len(labels) < 2:
        raise ValueError(f"{csv_path}: labels must be 0..K-1 with K >= 2, found {labels}")
    check_train_has_classes({it["label"] for it in train}, {it["label"] for it in val}, csv_path)
    probe_enc = load_pretrained(encoder_path, cfg.patch_size, cfg.img_size, scratch=cfg.scratch)
    img_size = list(probe_enc.img_size)
    meta = probe_enc.export_meta
    intensity, spacing = resolve_inputs(cfg.intensity, cfg.spacing, cfg.intensity_domain, meta, encoder_path)
    t0 = time.perf_counter()
    vols = {name: load_volumes(items, img_size, intensity, spacing=spacing) for name, items in (("train", train), ("val", val))}
    if spacing:
        # Whole volumes at the spacing, one size for all (--img-size, or the largest rounded up to
        # the patch grid); the encoder's sin-cos position grid is rebuilt for that size.
        if cfg.img_size is None:
            img_size = common_size(vols["train"] + vols["val"], probe_enc.patch_size)
            torch.manual_seed(cfg.seed)
            probe_enc = load_pretrained(encoder_path, cfg.patch_size, img_size, scratch=cfg.scratch)
        _to_size(vols["train"] + vols["val"], img_size)
        log.info("classification at %s mm: volumes padded / cropped to %s voxels", list(spacing), img_size)
    x_train, y_train = _stack(vols["train"], train)
    x_val, y_val = _stack(vols["val"], val)
    data = {"x_train": x_train, "y_train": y_train, "x_val": x_val, "y_val": y_val}
    scale = scale_report(vols["train"] + vols["val"], meta)
    if "note" in scale:
        log.warning("classification: %s", scale["note"])
    result: dict[str, Any] = {
        "encoder": str(encoder_path), "data": str(csv_path), "img_size": img_size, "intensity": intensity,
        "spacing": list(spacing) if spacing else None, "n_train": len(train), "n_val": len(val), "n_classes": len(labels), "config": asdict(cfg),
        "scale": scale, "load_s": round(time.perf_counter() - t0, 2),
    }
    for mode in modes:
        t0 = time.perf_counter()
        if mode == "probe":
            enc = probe_enc
        else:  # fine-tuning changes the weights: a fresh copy of the encoder, built right after seeding
            # so that a --scratch init does not depend on whether the probe ran first (--mode both / finetune)
            torch.manual_seed(cfg.seed)
            enc = load_pretrained(encoder_path, cfg.patch_size, img_size, cfg.scratch)
        fn = linear_probe if mode == "probe" else finetune
        result[mode] = {**fn(enc.to(device), data, len(labels), cfg, device), "seconds": round(time.perf_counter() - t0, 2)}
        log.info("classification %s: %s", mode, result[mode])
    return result
