"""Segmentation on a pretrained encoder: a UNETR-style decoder fine-tuned with the encoder.

Input: a dataset in the Medical Segmentation Decathlon layout: ``dataset.json`` with ``labels``
({"0": "background", "1": ...}) and ``training`` ([{"image": "./imagesTr/x.nii.gz", "label":
"./labelsTr/x.nii.gz"}, ...]); held-out cases from ``validation`` when present, else a
deterministic 25% of ``training``; no case may be in both, and every class of the held-out cases
must be in some training case. Label voxels must hold whole class numbers 0..K-1 as read (checked
before the resize). Metric: Dice per foreground class on the held-out cases (MONAI ``DiceMetric``),
plus their mean. A class's Dice is the mean over the held-out cases whose truth contains it (e.g. the
lesion over lesion cases only); how many cases that is, and in how many cases without the class it
was predicted anyway (false positives, which Dice does not see), are reported next to it. A class
that no held-out case has gets Dice NaN (undefined), is left out of the mean and named in ``notes``.

The decoder is UNETR's (Hatamizadeh et al., 2022), built from MONAI's blocks on top of OUR
encoder's token features (``MAEEncoder.forward_intermediates``): for a patch size of ``2**k``,
skips at 1/2 ... 1/2**(k-1) resolution come from evenly spaced blocks (layers 3, 6, 9 of 12 for
patch 16, as in UNETR) upsampled by ``UnetrPrUpBlock``; the last block's normed tokens start the
decoder (``UnetrUpBlock`` x k) and a ``UnetrBasicBlock`` on the raw image gives the full-resolution
skip. It works for any encoder depth >= k and any isotropic power-of-two patch size.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

REQUIRED_KEYS = ("labels", "training")
EXPECTED = "a Decathlon dataset folder (imagesTr/, labelsTr/, dataset.json) or its dataset.json"
# Background left out of the Dice term (it is ~98% of the voxels and otherwise a quarter of the
# Dice average for free); batch Dice (over the whole batch, as nnU-Net) so that a small class
# absent from one case of the batch still gets a Dice gradient from the other. CE is unweighted.
# With MONAI's defaults (background included, per-case Dice) the default 40^3 phantom lesion barely
# moved in 200 steps: mean lesion softmax 0.03 inside lesions vs 0.01 in the liver, soft Dice 0.002.
LOSS = {"to_onehot_y": True, "softmax": True, "include_background": False, "batch": True}


@dataclass
class SegmentConfig:
    patch_size: int | None = None  # expected patch size; None: the export's
    img_size: list[int] | None = None  # None: the export's image size
    intensity: str = "none"  # none | ct | zscore | percentile | ingest (the export's recorded recipe)
    intensity_domain: str | None = None  # --domain: whose recipe (ingest) and spacing (spacing "export"); None: the only one
    steps: int = 100
    batch_size: int = 2
    lr: float = 1e-3  # decoder
    encoder_lr: float = 1e-4
    weight_decay: float = 1e-5
    feature_size: int = 16  # UNETR decoder width at full resolution
    freeze_encoder: bool = False
    seed: int = 0
    device: str = "auto"
    scratch: bool = False  # same architecture, random init (baseline)
    # None: resize whole images to the encoder size; "export" (the pretraining domain's recorded
    # spacing) or "X,Y,Z" mm: resample, train on crops of the encoder size, score by sliding window
    spacing: str | None = None
    # A label on another voxel grid than its image: False = error naming both files; True =
    # resample the label onto the image grid (nearest neighbour, by the two affines), reported
    resample_labels: bool = False


def read_decathlon(root: str | Path) -> tuple[list[dict], list[dict], dict[int, str]]:
    """(train items, val items, {class index: name}) from ``root/dataset.json``; errors name the key."""
    given = Path(root)
    path = given / "dataset.json" if given.is_dir() else given
    root = path.parent
    if given.is_dir() and not path.is_file():
        raise FileNotFoundError(f"{given} has no dataset.json: segment expects {EXPECTED}")
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: segment expects {EXPECTED}")
    if path.suffix.lower() == ".csv":
        raise ValueError(f"{path} is a CSV file: segment expects {EXPECTED} "
                         "(a classification CSV is the input of `eval classify`)")
    try:
        spec = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path} is not valid JSON ({exc}): segment expects {EXPECTED}") from exc
    if not isinstance(spec, dict):
        raise ValueError(f"{path} holds a JSON {type(spec).__name__}, not an object: segment expects {EXPECTED}")
    missing = [k for k in REQUIRED_KEYS if k not in spec]
    if missing:
        raise ValueError(f"{path}: missing key(s) {missing}; a Decathlon dataset.json needs {list(REQUIRED_KEYS)}")
    try:
        classes = {int(k): str(v) for k, v in spec["labels"].items()}
    except (AttributeError, ValueError) as exc:
        raise ValueError(f"{path}: 'labels' must map class indices to names, got {spec['labels']!r}") from exc
    if sorted(classes) != list(range(len(classes))) or len(classes) < 2:
        raise ValueError(f"{path}: 'labels' must have keys 0..K-1 with K >= 2, got {sorted(classes)}")

    def items(key: str) -> list[dict]:
        out = []
        for i, entry in enumerate(spec.get(key) or []):
            if not isinstance(entry, dict) or "image" not in entry:
                raise ValueError(f"{path}: {key}[{i}] has no 'image'")
            if not entry.get("label"):
                raise ValueError(f"{path}: {key}[{i}] ({entry['image']}) has no 'label': segmentation needs a label per case")
            out.append({k: str((root / entry[k]).resolve()) for k in ("image", "label")})
        return out

    from .splits import check_disjoint

    train, val = items("training"), items("validation")
    held_out = "validation"
    if not val:  # deterministic hold-out: every 4th case
        train, val = [t for i, t in enumerate(train) if i % 4], train[::4]
        held_out = "held-out (every 4th training case)"
    if not train or not val:
        raise ValueError(f"{path}: need at least 2 labelled cases (train and val), got {len(train) + len(val)}")
    check_disjoint(train, val, path, held_out)
    return train, val, classes


def _skip_layers(depth: int, levels: int) -> list[int]:
    """0-based block indices for the ``levels - 1`` skips, evenly spaced (UNETR: 3, 6, 9 of 12)."""
    if depth < levels:
        raise ValueError(f"a UNETR decoder for this patch size needs an encoder of depth >= {levels}, got {depth}")
    return [max(round(depth * s / levels) - 1, 0) for s in range(1, levels)]


def _levels(patch_size: tuple[int, int, int]) -> int:
    p = patch_size[0]
    if len(set(patch_size)) != 1 or p < 2 or p & (p - 1):
        raise ValueError(f"UNETR decoder needs an isotropic power-of-two patch size, got {list(patch_size)}")
    return int(np.log2(p))


def build_unetr(encoder: Any, out_channels: int, feature_size: int = 16) -> Any:
    """UNETR decoder (MONAI blocks) on our encoder; returns an ``nn.Module`` mapping x -> logits."""
    import torch
    from monai.networks.blocks import UnetrBasicBlock, UnetrPrUpBlock, UnetrUpBlock

    levels = _levels(tuple(encoder.patch_size))
    layers = _skip_layers(encoder.depth, levels)
    width, norm = encoder.width, "instance"
    feats = [feature_size * 2**s for s in range(levels)]  # channels at 1/2**s resolution

    class EncoderUNETR(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.encoder = encoder
            self.skip0 = UnetrBasicBlock(3, encoder.in_chans, feats[0], 3, 1, norm, res_block=True)
            # Skip at 1/2**s from tokens at 1/2**levels: levels - s upsamplings (num_layer + 1).
            self.skips = torch.nn.ModuleList(
                UnetrPrUpBlock(3, width, feats[s], levels - s - 1, 3, 1, 2, norm, conv_block=True, res_block=True)
                for s in range(1, levels)
            )
            ups = [UnetrUpBlock(3, width, feats[levels - 1], 3, 2, norm, res_block=True)]
            ups += [UnetrUpBlock(3, feats[s + 1], feats[s], 3, 2, norm, res_block=True) for s in reversed(range(levels - 1))]
            self.ups = torch.nn.ModuleList(ups)
            self.out = torch.nn.Conv3d(feats[0], out_channels, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            hidden = self.encoder.forward_intermediates(x, [*layers, encoder.depth - 1])
            grid = self.encoder.tokens_to_grid
            skips = [self.skip0(x)] + [blk(grid(h)) for blk, h in zip(self.skips, hidden[:-1], strict=True)]
            y = grid(self.encoder.stack.norm(hidden[-1]))  # the encoder's final normed tokens
            for up, skip in zip(self.ups, reversed(skips), strict=True):
                y = up(y, skip)
            return self.out(y)

    return EncoderUNETR()


def _crop_sampler(img_size: list[int], seed: int) -> Any:
    """Random crops of the encoder size, half of them centred on a foreground voxel (MONAI's
    positive/negative sampling, so small lesions are seen), for volumes kept at their own size."""
    from monai import transforms as mt

    crop = mt.RandCropByPosNegLabeld(["image", "label"], label_key="label", spatial_size=img_size, pos=1, neg=1,
                                     num_samples=1, allow_smaller=False)
    crop.set_random_state(seed)
    return crop


def _batch(x: Any, y: Any, idx: Any, crop: Any) -> tuple[Any, Any]:
    """The cases ``idx`` as a batch: stacked whole volumes, or one random crop of each."""
    import torch

    if crop is None:
        return x[idx], y[idx]
    crops = [crop({"image": x[i], "label": y[i]})[0] for i in idx.tolist()]
    as_tensor = lambda t: t.as_tensor() if hasattr(t, "as_tensor") else t  # noqa: E731
    return (torch.stack([as_tensor(c["image"]) for c in crops]), torch.stack([as_tensor(c["label"]) for c in crops]))


def _train(model: Any, x: Any, y: Any, cfg: SegmentConfig, device: Any, crop: Any = None) -> list[float]:
    import torch
    from monai.losses import DiceCELoss

    loss_fn = DiceCELoss(**LOSS)
    enc_params = [] if cfg.freeze_encoder else list(model.encoder.parameters())
    for p in model.encoder.parameters():
        p.requires_grad_(not cfg.freeze_encoder)
    head = [p for n, p in model.named_parameters() if not n.startswith("encoder.")]
    groups = [{"params": head, "lr": cfg.lr}] + ([{"params": enc_params, "lr": cfg.encoder_lr}] if enc_params else [])
    opt = torch.optim.AdamW(groups, weight_decay=cfg.weight_decay)
    rng = np.random.default_rng(cfg.seed)
    losses = []
    model.train()
    for _ in range(cfg.steps):
        idx = torch.as_tensor(rng.choice(len(x), size=min(cfg.batch_size, len(x)), replace=False))
        opt.zero_grad()
        xb, yb = _batch(x, y, idx, crop)
        loss = loss_fn(model(xb.to(device)), yb.to(device))
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def _predictions(model: Any, x: Any, y: Any, batch_size: int, device: Any, roi: list[int] | None) -> Any:
    """(predicted classes, truth) per batch: stacked volumes in batches, or (``roi``) each volume
    whole by MONAI's sliding window of the encoder size."""
    if roi is None:
        for i in range(0, len(x), batch_size):
            yield model(x[i : i + batch_size].to(device)).argmax(1), y[i : i + batch_size, 0]
        return
    from monai.inferers import sliding_window_inference

    for xi, yi in zip(x, y, strict=True):
        logits = sliding_window_inference(xi[None].to(device), roi_size=roi, sw_batch_size=batch_size,
                                          predictor=model, overlap=0.25, mode="gaussian")
        yield logits.argmax(1), yi[None, 0]


def dice_per_class(model: Any, x: Any, y: Any, n_classes: int, batch_size: int, device: Any,
                   roi: list[int] | None = None) -> dict[str, list]:
    """Per foreground class 1..K-1: ``dice`` (mean over the cases whose truth has the class; NaN if
    none has it), ``cases`` (how many cases that is) and ``false_positive_cases`` (cases without the
    class in which it was predicted: MONAI's ``ignore_empty`` leaves them out of Dice). ``roi``:
    volumes of their own sizes (a list), each scored whole by a sliding window of that size.

    The NaN is set here from the truth counts: MONAI's ``mean_batch`` reduction returns 0.0 for a
    class whose every case was ignored, which would pull the mean over classes down."""
    import torch
    from monai.metrics import DiceMetric

    metric = DiceMetric(include_background=False, reduction="mean_batch", ignore_empty=True)
    present = torch.zeros(n_classes - 1, dtype=torch.long)
    false_pos = torch.zeros(n_classes - 1, dtype=torch.long)
    model.eval()
    with torch.no_grad():
        for pred, truth in _predictions(model, x, y, batch_size, device, roi):
            onehot = lambda t: torch.nn.functional.one_hot(t, n_classes).permute(0, 4, 1, 2, 3)  # noqa: E731
            p, t = onehot(pred).cpu(), onehot(truth)
            metric(p, t)
            has_t, has_p = t[:, 1:].flatten(2).any(2), p[:, 1:].flatten(2).any(2)  # (batch, K-1)
            present += has_t.sum(0)
            false_pos += (has_p & ~has_t).sum(0)
    dice = [float(v) if n > 0 else float("nan") for v, n in zip(metric.aggregate(), present.tolist(), strict=True)]
    return {"dice": dice, "cases": present.tolist(), "false_positive_cases": false_pos.tolist()}


def _fit_and_score(encoder_path: str | Path, data: dict, classes: dict[int, str], cfg: SegmentConfig,
                   scratch: bool, device: Any) -> dict:
    import torch

    from .common import load_pretrained

    torch.manual_seed(cfg.seed)  # same decoder init for pretrained and scratch
    enc = load_pretrained(encoder_path, cfg.patch_size, cfg.img_size, scratch=scratch)
    model = build_unetr(enc, len(classes), cfg.feature_size).to(device)
    t0 = time.perf_counter()
    roi = data.get("roi")  # set when the volumes keep their own sizes (--spacing)
    crop = _crop_sampler(roi, cfg.seed) if roi else None
    losses = _train(model, data["x_train"], data["y_train"], cfg, device, crop)
    scores = dice_per_class(model, data["x_val"], data["y_val"], len(classes), cfg.batch_size, device, roi)
    dice = scores["dice"]
    finite = [d for d in dice if np.isfinite(d)]
    return {
        "init": "scratch" if scratch else "pretrained",
        "dice": {classes[c + 1]: d for c, d in enumerate(dice)},
        "dice_cases": {classes[c + 1]: n for c, n in enumerate(scores["cases"])},
        "false_positive_cases": {classes[c + 1]: n for c, n in enumerate(scores["false_positive_cases"])},
        "mean_dice": float(np.mean(finite)) if finite else float("nan"),
        "final_train_loss": float(np.mean(losses[-5:])) if losses else float("nan"),
        "seconds": round(time.perf_counter() - t0, 2),
    }


def _ratio(p: float, s: float) -> float:
    """p / s; inf when only scratch scored 0, NaN when both did or either is NaN (class absent)."""
    if not (np.isfinite(p) and np.isfinite(s)) or (p <= 0 and s <= 0):
        return float("nan")
    return p / s if s > 0 else float("inf")


def run_segmentation(encoder_path: str | Path, data_dir: str | Path, cfg: SegmentConfig | None = None,
                     compare_scratch: bool = False) -> dict:
    """Fine-tune and score; with ``compare_scratch`` also the same model from scratch, side by side."""
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

    cfg = cfg or SegmentConfig()
    check_steps("steps", cfg.steps)
    check_steps("batch_size", cfg.batch_size)
    seed_everything(cfg.seed)
    device = pick_device(cfg.device)
    train, val, classes = read_decathlon(data_dir)
    enc = load_pretrained(encoder_path, cfg.patch_size, cfg.img_size)
    img_size = list(enc.img_size)
    intensity, spacing = resolve_inputs(cfg.intensity, cfg.spacing, cfg.intensity_domain, enc.export_meta, encoder_path)
    t0 = time.perf_counter()
    # Label values (whole numbers 0..K-1) are checked per file as read, before the resize.
    vols = {name: load_volumes(items, img_size, intensity, with_label=True, classes=classes, spacing=spacing,
                               resample_labels=cfg.resample_labels)
            for name, items in (("train", train), ("val", val))}
    data: dict[str, Any] = {"roi": img_size} if spacing else {}
    for name, v in vols.items():
        # Whole-resized volumes share a size and stack; resampled ones keep their own sizes.
        gather = (lambda ts: list(ts)) if spacing else torch.stack  # noqa: E731
        data[f"x_{name}"] = gather([d["image"] for d in v])
        data[f"y_{name}"] = gather([d["label"] for d in v])
    present = {name: set().union(*(torch.unique(d["label"]).tolist() for d in v)) for name, v in vols.items()}
    check_train_has_classes(present["train"], present["val"], data_dir, classes, "validation")
    notes = [f"{classes[c]}: no validation case has it (Dice undefined, left out of mean_dice)"
             for c in range(1, len(classes)) if c not in present["val"]]
    scale = scale_report(vols["train"] + vols["val"], enc.export_meta)  # its note is printed with the result's
    for note in notes + ([scale["note"]] if "note" in scale else []):
        log.warning("segmentation: %s", note)
    result: dict[str, Any] = {
        "encoder": str(encoder_path), "data": str(data_dir), "img_size": img_size, "intensity": intensity,
        "classes": classes, "spacing": list(spacing) if spacing else None, "scale": scale,
        "n_train": len(train), "n_val": len(val), "config": asdict(cfg), "loss": f"DiceCELoss({LOSS})",
        "load_s": round(time.perf_counter() - t0, 2),
    }
    resampled = [d["label_resampled"] for v in vols.values() for d in v if "label_resampled" in d]
    if resampled:
        result["labels_resampled"] = resampled
        notes.append(f"{len(resampled)} of {len(train) + len(val)} labels were on another voxel grid than their image "
                     "(or were DICOM SEG frames / RTSTRUCT contours) and were placed on it (labels_resampled lists them)")
    if notes:
        result["notes"] = notes
    runs = [cfg.scratch] + ([True] if compare_scratch and not cfg.scratch else [])
    for scratch in runs:
        out = _fit_and_score(encoder_path, data, classes, cfg, scratch, device)
        result[out["init"]] = out
        log.info("segmentation (%s): %s", out["init"], out)
    if "pretrained" in result and "scratch" in result:
        p, s = result["pretrained"]["mean_dice"], result["scratch"]["mean_dice"]
        result["mean_dice_ratio_pretrained_vs_scratch"] = _ratio(p, s)
        result["dice_ratio_pretrained_vs_scratch"] = {
            k: _ratio(v, result["scratch"]["dice"][k]) for k, v in result["pretrained"]["dice"].items()}
    return result
