"""``mixpretrain eval ...``: downstream evaluation of a pretrained encoder.

    mixpretrain eval synth-tasks --out DIR [--cases 16 --size 32 --seed 0 --domain ct --overwrite]
                                 [--lesion-contrast 1 --lesion-radius 0.10,0.15]
    mixpretrain eval classify --encoder enc.pt --data DIR/classification.csv [--mode probe|finetune|both]
    mixpretrain eval segment  --encoder enc.pt --data DIR [--steps 100 --compare-scratch]

Each prints a JSON result (``--json``) or a short table, and writes it to ``--out FILE`` when given.
Heavy libraries (torch, monai) are imported inside the handlers only.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

LESION_RADIUS = (0.10, 0.15)  # = phantom_tasks.LESION_RADIUS (not imported: keeps the CLI import light)
VAL_FRACTION = 0.25  # = phantom_tasks.VAL_FRACTION (same reason)
CLASSIFY_BATCH_SIZE = 4  # = ClassifyConfig.batch_size (same reason; a test checks both)
SEGMENT_BATCH_SIZE = 2  # = SegmentConfig.batch_size


def _size(text: str) -> list[int]:
    parts = [int(p) for p in text.replace("x", ",").split(",") if p.strip()]
    if len(parts) == 1:
        parts *= 3
    if len(parts) != 3:
        raise argparse.ArgumentTypeError(f"expected one int or three (e.g. 32 or 32,32,16), got {text!r}")
    return parts


def _radius(text: str) -> tuple[float, float]:
    parts = [float(p) for p in text.split(",") if p.strip()]
    if len(parts) == 1:
        parts *= 2
    if len(parts) != 2:
        raise argparse.ArgumentTypeError(f"expected LOW,HIGH (e.g. 0.15,0.25), got {text!r}")
    return parts[0], parts[1]


def _positive_int(text: str) -> int:
    """A step count or batch size: an integer >= 1 (0 steps would score an untrained head)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


CLASSIFY_DATA_HELP = "classification CSV with columns image,label[,split], e.g. TASKS/classification.csv"
SEGMENT_DATA_HELP = "Decathlon dataset folder (imagesTr/, labelsTr/, dataset.json) or its dataset.json"


def _common(p: argparse.ArgumentParser, data_help: str, batch_size: int) -> None:
    p.add_argument("--encoder", required=True, help="encoder export file (save_encoder), e.g. RUN/encoder.pt")
    p.add_argument("--data", required=True, help=data_help)
    p.add_argument("--patch-size", type=int, default=None, help="expected patch size (error if the export differs)")
    p.add_argument("--img-size", type=_size, default=None, help="input size (default: the export's image size)")
    p.add_argument("--intensity", default="none", choices=["none", "ingest", "ct", "zscore", "percentile"],
                   help="intensity normalisation: none (images already preprocessed like the shards), ingest "
                        "(the recipe the export records for --domain, run by ingest's code), or a fixed "
                        "approximation: ct (phantom window -200..300 HU), zscore, percentile (default: none)")
    p.add_argument("--domain", default=None,
                   help="with --intensity ingest (and segment's --spacing export): the pretraining domain whose "
                        "recipe (spacing) the images get (default: the export's only domain)")
    p.add_argument("--spacing", default=None,
                   help="none (default: resize whole images to the encoder size) | export (resample to the spacing the "
                        "export records for the pretraining domain, --domain when it has several) | X,Y,Z mm. At a "
                        "spacing, segment trains on crops of the encoder size (half centred on foreground) and scores "
                        "whole volumes by sliding window; classify pads / crops all volumes to one size and rebuilds "
                        "the encoder's position grid for it")
    p.add_argument("--batch-size", type=_positive_int, default=None, help=f"batch size (default: {batch_size})")
    p.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (default: %(default)s)")
    p.add_argument("--scratch", action="store_true", help="same architecture, random init (baseline)")
    p.add_argument("--out", default=None, help="also write the JSON result to this file")
    p.add_argument("--json", action="store_true", help="print the full JSON result")


def register(subparsers: argparse._SubParsersAction) -> None:
    ev = subparsers.add_parser("eval", help="downstream evaluation of a pretrained encoder",
                               description="Downstream evaluation of a pretrained encoder. Options and their "
                                           "defaults: mixpretrain eval EVAL_COMMAND --help.")
    sub = ev.add_subparsers(dest="eval_command", metavar="EVAL_COMMAND")
    ev.set_defaults(func=lambda args: (ev.print_help(), 2)[1])

    t = sub.add_parser("synth-tasks", help="write phantom lesion classification + segmentation tasks")
    t.add_argument("--out", required=True, help="output folder")
    t.add_argument("--cases", type=int, default=16)
    t.add_argument("--size", type=_size, default=[32, 32, 32])
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--domain", default="ct", help="phantom preset: ct, mri, pet, ...")
    t.add_argument("--overwrite", action="store_true")
    t.add_argument("--lesion-contrast", type=float, default=1.0,
                   help="multiplier on the lesion-vs-liver contrast (1: the pretraining phantoms'; 3: CNR ~2-5 at 40^3)")
    t.add_argument("--lesion-radius", type=_radius, default=LESION_RADIUS,
                   help="LOW,HIGH lesion radius as a fraction of half the grid (default 0.10,0.15; >= 2 voxels)")
    t.add_argument("--val-fraction", type=float, default=VAL_FRACTION,
                   help=f"share of cases held out for validation (default {VAL_FRACTION})")
    t.set_defaults(func=_synth_tasks)

    c = sub.add_parser("classify", help="linear probe and/or fine-tuning on pooled encoder features",
                       description="Linear probe and/or fine-tuning on pooled encoder features; "
                                   "accuracy and ROC AUC on the held-out split.")
    _common(c, CLASSIFY_DATA_HELP, CLASSIFY_BATCH_SIZE)
    c.add_argument("--mode", default="both", choices=["probe", "finetune", "both"],
                   help="probe: frozen encoder + logistic regression; finetune: end to end (default: %(default)s)")
    c.add_argument("--probe-steps", type=_positive_int, default=300,
                   help="linear-probe steps, full batch; used by --mode probe|both (default: %(default)s)")
    c.add_argument("--finetune-steps", type=_positive_int, default=50,
                   help="fine-tuning steps (mini-batches); used by --mode finetune|both (default: %(default)s)")
    c.add_argument("--lr", type=float, default=1e-4,
                   help="fine-tuning LR (encoder; the head gets 10x) (default: %(default)s)")
    c.set_defaults(func=_classify)

    s = sub.add_parser("segment", help="fine-tune a UNETR-style decoder on the encoder, Dice per class",
                       description="Fine-tune a UNETR-style decoder on the encoder; Dice per class on the held-out cases.")
    _common(s, SEGMENT_DATA_HELP, SEGMENT_BATCH_SIZE)
    s.add_argument("--steps", type=_positive_int, default=100, help="training steps (mini-batches) (default: %(default)s)")
    s.add_argument("--lr", type=float, default=1e-3, help="decoder LR (default: %(default)s)")
    s.add_argument("--encoder-lr", type=float, default=1e-4, help="encoder LR (default: %(default)s)")
    s.add_argument("--feature-size", type=_positive_int, default=16,
                   help="decoder width at full resolution (default: %(default)s)")
    s.add_argument("--freeze-encoder", action="store_true", help="train the decoder only")
    s.add_argument("--resample-labels", action="store_true",
                   help="resample a label that is on another voxel grid than its image (a cropped ROI, another "
                        "spacing or origin) onto the image grid by their affines, nearest neighbour (default: such a "
                        "label is an error naming both files)")
    s.add_argument("--compare-scratch", action="store_true",
                   help="also train the same model from scratch, side by side, and print the ratio")
    s.set_defaults(func=_segment)


def _synth_tasks(args: argparse.Namespace) -> int:
    from .phantom_tasks import write_phantom_tasks

    summary = write_phantom_tasks(args.out, args.cases, tuple(args.size), seed=args.seed,
                                  overwrite=args.overwrite, domain=args.domain,
                                  lesion_radius=args.lesion_radius, lesion_contrast=args.lesion_contrast,
                                  val_fraction=args.val_fraction)
    print(json.dumps(summary, indent=2))
    return 0


def _base_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    kw = dict(patch_size=args.patch_size, img_size=args.img_size, intensity=args.intensity,
              intensity_domain=args.domain,
              seed=args.seed, device=args.device, scratch=args.scratch, spacing=args.spacing)
    if args.batch_size is not None:
        kw["batch_size"] = args.batch_size
    return kw


def _emit(result: dict, args: argparse.Namespace, lines: list[str]) -> None:
    text = json.dumps(result, indent=2, default=str)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text + "\n")
    print(text if args.json else "\n".join(lines + [f"note: {n}" for n in _notes(result)]))


def _notes(obj: Any, where: str = "") -> list[str]:
    """Every ``note`` / ``notes`` in a (nested) result, e.g. an undefined Dice or AUC, so the plain
    output says why a metric is NaN (they were only in --json)."""
    if not isinstance(obj, dict):
        return []
    out = [f"{where}{n}" for n in ([obj["note"]] if obj.get("note") else []) + list(obj.get("notes") or [])]
    for key, value in obj.items():
        out += _notes(value, f"{where}{key}: ")
    return out


def _fmt(v: float) -> str:
    return "nan" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.4f}"


def _classify(args: argparse.Namespace) -> int:
    from .classify import ClassifyConfig, run_classification

    cfg = ClassifyConfig(mode=args.mode, probe_steps=args.probe_steps, finetune_steps=args.finetune_steps,
                         finetune_lr=args.lr, **_base_kwargs(args))
    result = run_classification(args.encoder, args.data, cfg)
    at = f", at {'x'.join(f'{v:g}' for v in result['spacing'])} mm, {'x'.join(map(str, result['img_size']))} voxels" \
        if result.get("spacing") else ""
    lines = [f"classification on {args.data} ({result['n_train']} train, {result['n_val']} val), encoder {args.encoder}{at}"]
    lines += [f"  {m:9s} accuracy {_fmt(result[m]['accuracy'])}  AUC {_fmt(result[m]['auc'])}  ({result[m]['seconds']} s)"
              for m in ("probe", "finetune") if m in result]
    _emit(result, args, lines)
    return 0


def _segment(args: argparse.Namespace) -> int:
    from .segment import SegmentConfig, run_segmentation

    cfg = SegmentConfig(steps=args.steps, lr=args.lr, encoder_lr=args.encoder_lr, feature_size=args.feature_size,
                        freeze_encoder=args.freeze_encoder, resample_labels=args.resample_labels,
                        **_base_kwargs(args))
    result = run_segmentation(args.encoder, args.data, cfg, compare_scratch=args.compare_scratch)
    at = f", at {'x'.join(f'{v:g}' for v in result['spacing'])} mm by crops" if result.get("spacing") else ""
    lines = [f"segmentation on {args.data} ({result['n_train']} train, {result['n_val']} val), {args.steps} steps{at}"]
    for init in ("pretrained", "scratch"):
        if init in result:
            r = result[init]
            per = "  ".join(f"{k} {_fmt(v)} ({r['dice_cases'][k]} cases, {r['false_positive_cases'][k]} FP)"
                            for k, v in r["dice"].items())
            lines.append(f"  {init:10s} mean Dice {_fmt(r['mean_dice'])}  |  {per}  ({r['seconds']} s)")
    if "mean_dice_ratio_pretrained_vs_scratch" in result:
        lines.append(f"  pretrained / scratch mean Dice: {result['mean_dice_ratio_pretrained_vs_scratch']:.3f}x")
    _emit(result, args, lines)
    return 0

