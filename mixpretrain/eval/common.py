"""Shared pieces of the downstream tasks: encoder loading, MONAI data loading, small helpers.

Images are read with MONAI's ``LoadImage`` (NIfTI, NRRD, MHA ... whatever MONAI reads; DICOM, a
series folder or one multi-frame file, with ingest's own reader, ``read_image``), made
channel-first, reoriented to RAS (the orientation of the pretraining shards), optionally
intensity-normalised (``intensity``: ``none`` when the images are already preprocessed like the
shards — e.g. phantom tasks or volumes exported after ``mixpretrain ingest`` — ``ingest`` for the
recipe recorded in the encoder export for one pretraining domain, run by ingest's own code
(:func:`mixpretrain.data.preprocess.normalise_intensity`), or one of three fixed approximations:
``ct`` for the phantom CT window, ``zscore`` for MRI-like foreground z-scoring, ``percentile`` for
PET-like scaling), then resized to the encoder's image size.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

log = logging.getLogger(__name__)

INTENSITY_MODES = ("none", "ct", "zscore", "percentile", "ingest")
CT_WINDOW = (-200.0, 300.0)  # the phantom CT window, scaled to [0, 1] (real CT ingest: -1000..1000)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def check_steps(name: str, value: int) -> None:
    """A step count (or batch size) must be an integer >= 1: 0 steps would report the metrics of an
    untrained model as a result. The error names the field and its CLI flag (``--probe-steps``)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        flag = "--" + name.replace("_", "-")
        raise ValueError(f"{name} ({flag}) must be an integer >= 1, got {value!r}")


def pick_device(name: str | None) -> torch.device:
    if name in (None, "", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def load_pretrained(
    path: str | Path,
    patch_size: int | Sequence[int] | None = None,
    img_size: int | Sequence[int] | None = None,
    scratch: bool = False,
) -> torch.nn.Module:
    """The encoder from its export file, configured from the file's metadata.

    ``patch_size``: the patch size the caller expects (None: whatever the export has); a
    mismatch is an error, since patch embeddings do not transfer across patch sizes.
    ``scratch``: same architecture, freshly initialised weights (the from-scratch baseline).
    """
    from mixpretrain.models import load_encoder, read_encoder_file
    from mixpretrain.models.mae3d import MAEEncoder
    from mixpretrain.models.patches import to_3tuple

    if Path(path).is_dir():
        candidate = Path(path) / "encoder.pt"
        hint = (f"did you mean {candidate}?" if candidate.is_file() else
                "it has no encoder.pt (a pretraining run writes RUN/encoder.pt when it finishes)")
        raise ValueError(f"encoder {path} is a directory, not an encoder export file (save_encoder); {hint}")
    meta = read_encoder_file(path)["meta"]
    for domain, recipe in (meta.get("preprocessing") or {}).items():  # pretraining's input, per domain
        log.info("encoder %s was pretrained on domain %s: %s (--intensity ingest --domain %s gives task images "
                 "this recipe; --intensity none for images already preprocessed so)", path, domain,
                 describe_recipe(recipe), domain)
    saved = tuple(int(p) for p in meta["patch_size"])
    if patch_size is not None and to_3tuple(patch_size, "patch_size") != saved:
        raise ValueError(
            f"{path}: encoder was exported with patch size {list(saved)}, but patch size "
            f"{list(to_3tuple(patch_size, 'patch_size'))} was requested; pretrain with that patch size or drop --patch-size"
        )
    if not scratch:
        return load_encoder(path, img_size=img_size)
    keys = ("patch_size", "in_chans", "width", "depth", "heads", "mlp_ratio", "qkv_bias", "norm_eps")
    enc = MAEEncoder(img_size=img_size if img_size is not None else meta["img_size"], **{k: meta[k] for k in keys})
    enc.export_meta = dict(meta)
    return enc


# MONAI's LoadImage builds every reader it knows, the nvImageCodec DICOM one (an optional GPU decoder)
# included, which without nvImageCodec logs and warns each time: noise, since the reader then just
# declines every file (pydicom / ITK read DICOM). Dropped while the reader is built, unless the user
# asked for it with MONAI_DICOM_READER=nvimgcodec.
_NVIMGCODEC_LOGGER = "monai.data.nvimgcodec_pydicom_plugin"
_NVIMGCODEC_LOG = "nvImageCodec is not available; skipping pydicom decoder plugin registration."
_NVIMGCODEC_WARNING = r"NvImgCodecPydicomReader: nvImageCodec decoder plugin did not register successfully"


class _DropMessage(logging.Filter):
    def __init__(self, message: str) -> None:
        super().__init__()
        self.message = message

    def filter(self, record: logging.LogRecord) -> bool:
        return record.getMessage() != self.message


@contextlib.contextmanager
def _quiet_nvimgcodec() -> Iterator[None]:
    if os.environ.get("MONAI_DICOM_READER", "").strip().lower() == "nvimgcodec":
        yield
        return
    logger, drop = logging.getLogger(_NVIMGCODEC_LOGGER), _DropMessage(_NVIMGCODEC_LOG)
    logger.addFilter(drop)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=_NVIMGCODEC_WARNING, category=UserWarning)
            yield
    finally:
        logger.removeFilter(drop)


def describe_recipe(recipe: dict[str, Any]) -> str:
    """One line for a domain's recorded preprocessing (from ingest or the phantom synthesiser)."""
    modality = recipe.get("modality")
    if recipe.get("phantom"):
        how = (recipe.get("intensity") or {}).get("method", "?")
        return f"{modality} phantom, synthesised normalised ({how})"
    if modality == "ct":
        how = f"HU window {recipe.get('ct_window')} -> [0, 1]"
    elif modality == "mri":
        how = f"foreground percentiles {recipe.get('mri_percentiles')} clip + z-score"
    elif modality == "pet":
        how = f"SUV (body weight) up to {recipe.get('pet_suv_max')}, else / foreground p{recipe.get('pet_percentile')}"
    else:
        how = "intensity not recorded"
    return f"{modality}, {how}, spacing {recipe.get('spacing')} mm"


def ingest_recipe(meta: dict[str, Any], domain: str | None, where: str | Path) -> dict[str, Any]:
    """The preprocessing recorded in an encoder export for one pretraining domain, for
    ``--intensity ingest``. ``domain`` may be left out when the export has a single domain."""
    recipes = meta.get("preprocessing") or {}
    if not recipes:
        raise ValueError(f"encoder {where} records no preprocessing per domain (exported before exports "
                         "recorded it); use --intensity none|ct|zscore|percentile")
    if domain is None:
        if len(recipes) > 1:
            raise ValueError(f"encoder {where} was pretrained on {len(recipes)} domains ({', '.join(sorted(recipes))}); "
                             "--intensity ingest needs --domain NAME, the domain whose recipe the task images get")
        domain = next(iter(recipes))
    if domain not in recipes:
        raise ValueError(f"--domain {domain!r}: encoder {where} was not pretrained on it; its domains are "
                         f"{', '.join(sorted(recipes))}")
    return {"domain": domain, **recipes[domain]}


def resolve_intensity(mode: str, domain: str | None, meta: dict[str, Any], where: str | Path) -> str | dict[str, Any]:
    """``mode`` as given, or for ``ingest`` the recorded recipe of ``domain`` (a dict)."""
    if mode not in INTENSITY_MODES:
        raise ValueError(f"intensity mode {mode!r} unknown; valid: {', '.join(INTENSITY_MODES)}")
    if mode != "ingest":
        if domain is not None:
            raise ValueError(f"--domain {domain!r} applies to --intensity ingest (and segment's --spacing export) only "
                             f"(got --intensity {mode})")
        return mode
    recipe = ingest_recipe(meta, domain, where)
    log.info("task images get the intensity recipe of pretraining domain %s: %s", recipe["domain"], describe_recipe(recipe))
    return recipe


def resolve_inputs(intensity: str, spacing: str | None, domain: str | None, meta: dict[str, Any],
                   where: str | Path) -> tuple[str | dict[str, Any], tuple[float, float, float] | None]:
    """(intensity, spacing) of ``--intensity`` / ``--spacing`` for one export. ``--domain`` names
    the recipe of ``--intensity ingest`` and/or the spacing of ``--spacing export``; given with
    neither, ``resolve_intensity`` refuses it."""
    intensity_domain = domain if intensity == "ingest" or spacing != "export" else None
    return (resolve_intensity(intensity, intensity_domain, meta, where),
            resolve_spacing(spacing, domain, meta, where))


def resolve_spacing(value: str | Sequence[float] | None, domain: str | None, meta: dict[str, Any],
                    where: str | Path) -> tuple[float, float, float] | None:
    """``--spacing``: None / "none" (resize whole images), "export" (the spacing the export records
    for the pretraining domain, ``--domain`` when it has several) or "X,Y,Z" / "S" in mm."""
    if value is None or value == "none":
        return None
    if value == "export":
        recipes = meta.get("preprocessing") or {}
        if not any(isinstance(r, dict) and r.get("spacing") for r in recipes.values()):
            raise ValueError(f"--spacing export: encoder {where} records no pretraining spacing (exported before "
                             "exports recorded the preprocessing); give --spacing X,Y,Z in mm")
        if domain is None and len(recipes) > 1:
            raise ValueError(f"--spacing export: encoder {where} was pretrained on {len(recipes)} domains "
                             f"({', '.join(sorted(recipes))}); pass --domain NAME, the domain whose spacing to use")
        recipe = ingest_recipe(meta, domain, where)
        log.info("task images resampled to pretraining domain %s's spacing %s mm", recipe["domain"], recipe["spacing"])
        return tuple(float(v) for v in recipe["spacing"])  # type: ignore[return-value]
    try:
        parts = [float(v) for v in value.split(",")] if isinstance(value, str) else [float(v) for v in value]
    except ValueError:
        parts = []
    if len(parts) == 1:
        parts *= 3
    if len(parts) != 3 or not all(np.isfinite(v) and v > 0 for v in parts):
        raise ValueError(f"--spacing {value!r}: expected none, export, or 1 or 3 positive numbers in mm (e.g. 1.5 or 0.8,0.8,2.5)")
    return tuple(parts)  # type: ignore[return-value]


def _recipe_settings(recipe: dict[str, Any]) -> Any:
    """ingest's PreprocessSettings from a recorded recipe (its ``to_dict`` plus the modality)."""
    from dataclasses import fields

    from mixpretrain.data.preprocess import PreprocessSettings

    names = {f.name for f in fields(PreprocessSettings)}
    return PreprocessSettings(**{k: tuple(v) if isinstance(v, list) else v for k, v in recipe.items() if k in names})


def _apply_recipe(image: Any, path: str | Path, settings: Any, meta: dict[str, Any] | None) -> torch.Tensor:
    """ingest's intensity step on one channel-first image as read (C = 1). ``meta``: the reader's
    for a DICOM image (``read_image``), which names its first file, so PET gets SUV from its
    headers as at ingest."""
    from mixpretrain.data.preprocess import normalise_intensity
    from mixpretrain.data.readers import Volume

    t = image.as_tensor() if hasattr(image, "as_tensor") else torch.as_tensor(image)
    if t.shape[0] != 1:
        raise ValueError(f"image {path}: {t.shape[0]} channels; --intensity ingest expects one")
    meta = dict(meta or {"path": str(path), "format": "other"})
    arr = t[0].detach().cpu().numpy().astype(np.float32)
    out, _ = normalise_intensity(Volume(arr, np.eye(4), (1.0, 1.0, 1.0), meta), settings)
    return torch.from_numpy(out)[None]


def _intensity_transform(keys: list[str], mode: str) -> list:
    from monai import transforms as mt

    if mode not in INTENSITY_MODES:
        raise ValueError(f"intensity mode {mode!r} unknown; valid: {', '.join(INTENSITY_MODES)}")
    if mode == "ct":
        lo, hi = CT_WINDOW
        return [mt.ScaleIntensityRanged(keys, a_min=lo, a_max=hi, b_min=0.0, b_max=1.0, clip=True)]
    if mode == "zscore":
        return [mt.NormalizeIntensityd(keys, nonzero=True)]
    if mode == "percentile":
        return [mt.ScaleIntensityRangePercentilesd(keys, lower=0.0, upper=99.5, b_min=0.0, b_max=1.0, clip=True)]
    return []


def _values(t: torch.Tensor, limit: int = 5) -> str:
    vals = list(dict.fromkeys(f"{float(v):g}" for v in torch.unique(t)))  # NaNs are unique to torch, not here
    return ", ".join(vals[:limit]) + (f", ... ({len(vals)} distinct)" if len(vals) > limit else "")


def check_label_values(label: Any, path: str | Path, n_classes: int) -> None:
    """A label volume, as read (before any resize: a bad voxel could vanish in a nearest-neighbour
    downsample), must hold whole class numbers 0..n_classes-1 only. Non-integer values (2.6, NaN)
    are refused, never rounded; the error names the file, the bad values and the allowed range."""
    t = label.as_tensor() if hasattr(label, "as_tensor") else torch.as_tensor(label)
    t = t.detach().reshape(-1)
    allowed = f"class numbers 0..{n_classes - 1} (dataset.json 'labels' has {n_classes} classes)"
    if t.is_floating_point():
        bad = ~torch.isfinite(t) | (t != t.round())
        if bool(bad.any()):
            raise ValueError(f"label {path}: {int(bad.sum())} voxel(s) hold non-integer value(s) {_values(t[bad])}; "
                             f"labels must be whole {allowed}")
    if t.numel() and (int(t.min()) < 0 or int(t.max()) >= n_classes):
        bad = (t < 0) | (t >= n_classes)
        raise ValueError(f"label {path}: {int(bad.sum())} voxel(s) hold value(s) {_values(t[bad])} outside the allowed "
                         f"{allowed}")


def read_image(path: str | Path, monai_reader: Any) -> tuple[Any, dict[str, Any] | None]:
    """(channel-first RAS MetaTensor, the reader's meta or None) of one image path.

    DICOM (a series folder, or one multi-frame file) is read by ingest's reader
    (:func:`mixpretrain.data.readers.read_dicom_path`): the same tilt, slice-gap and multi-frame
    geometry handling and the same SUV headers as the pretraining data had (MONAI's readers take a
    folder as one series without those checks, and GDCM's geometry of a converted multi-frame CT
    was wrong, docs/data.md). Every other file goes through ``monai_reader`` (LoadImage, RAS)."""
    from monai.data import MetaTensor

    from mixpretrain.data.readers import ReadError, is_dicom_path, read_dicom_path

    if not is_dicom_path(path):
        return monai_reader(str(path)), None
    try:
        vol = read_dicom_path(path)
    except ReadError as exc:
        raise ValueError(str(exc)) from exc
    image = MetaTensor(torch.from_numpy(np.ascontiguousarray(vol.array))[None], affine=torch.as_tensor(vol.affine),
                       meta={"filename_or_obj": str(path)})
    return image, vol.meta


def voxel_mm_after_resize(image: Any, img_size: Sequence[int]) -> list[float]:
    """The voxel size (mm) an image reaches the encoder at once resized whole to ``img_size``:
    its extent (shape x spacing from its affine) over the image size."""
    affine = np.asarray(getattr(image, "affine", np.eye(4)), dtype=np.float64)
    spacing = np.linalg.norm(affine[:3, :3], axis=0)
    extent = spacing * np.asarray(image.shape[1:], dtype=np.float64)
    return [round(float(v), 3) for v in extent / np.asarray(img_size, dtype=np.float64)]


# A task whose voxels reach the encoder more than this factor (per axis) off every pretraining
# spacing sees anatomy at another physical scale than the encoder learnt from: reported.
SCALE_WARN_FACTOR = 2.0


def scale_report(volumes: Sequence[dict[str, Any]], export_meta: dict[str, Any]) -> dict[str, Any]:
    """The voxel sizes the task's images reach the encoder at (median, min, max per axis) next to
    the spacing of each pretraining domain the export records; ``note`` when the median is more than
    ``SCALE_WARN_FACTOR`` off the nearest of them on some axis. Why: without ``--spacing`` eval
    resizes whole images to the encoder size, while pretraining crops were taken at the domain
    spacing, so a 512 x 512 CT resized to 64^3 reaches the encoder at 8x coarser voxels than a 1 mm
    pretraining."""
    vox = np.array([v["voxel_mm"] for v in volumes], dtype=np.float64)
    median = np.median(vox, axis=0)
    report: dict[str, Any] = {"voxel_mm_median": [round(float(v), 3) for v in median],
                              "voxel_mm_min": [round(float(v), 3) for v in vox.min(axis=0)],
                              "voxel_mm_max": [round(float(v), 3) for v in vox.max(axis=0)]}
    spacings = {d: [float(x) for x in r["spacing"]] for d, r in (export_meta.get("preprocessing") or {}).items()
                if isinstance(r, dict) and r.get("spacing")}
    report["pretraining_spacing_mm"] = spacings
    if not spacings:
        return report
    off = {d: float(np.max(np.abs(np.log(median / np.asarray(sp))))) for d, sp in spacings.items()}
    nearest = min(off, key=off.get)
    if off[nearest] > np.log(SCALE_WARN_FACTOR):
        report["note"] = (f"task images reach the encoder at about {'x'.join(f'{v:g}' for v in report['voxel_mm_median'])} mm "
                          f"voxels (median), more than {SCALE_WARN_FACTOR:g}x off the "
                          f"nearest pretraining spacing ({nearest}: {'x'.join(f'{v:g}' for v in spacings[nearest])} mm): the "
                          "encoder sees anatomy at another physical scale than it learnt (--spacing export resamples to it, "
                          "docs/eval.md)")
    return report


def load_volumes(
    items: list[dict[str, str]],
    img_size: Sequence[int],
    intensity: str | dict[str, Any] = "none",
    with_label: bool = False,
    classes: int | dict[int, str] | None = None,
    spacing: Sequence[float] | None = None,
    resample_labels: bool = False,
) -> list[dict[str, Any]]:
    """Read every item ``{"image": path[, "label": path]}`` with MONAI; returns tensors (C, D, H, W).

    Without ``spacing`` every image is resized whole to ``img_size``. With ``spacing`` (mm) it is
    resampled to that spacing instead (labels: nearest neighbour) and padded to at least
    ``img_size``: the volumes keep their own sizes, for crops and a sliding window (segment).

    A label is a file MONAI reads, a DICOM SEG or an RTSTRUCT (``labels.read_label``). It must be on
    its image's voxel grid (shape and affine, ``labels.grid_mismatch``): a mismatch is an error
    naming both files, or with ``resample_labels`` a nearest-neighbour resample of the label onto the
    image grid; a DICOM SEG is always placed so, an RTSTRUCT rasterised on the image grid. Either is
    reported per case in ``label_resampled``. ``classes``: ``{number: name}`` from dataset.json (or
    a class count): every label voxel must hold a whole class number as read, before any resample or
    resize (``check_label_values``); an RTSTRUCT's ROIs are matched to the names.
    ``intensity``: a mode name, or a recorded recipe (``resolve_intensity`` of ``ingest``) that
    ingest's own intensity step applies to each image as read; a phantom recipe changes nothing,
    since phantom task images are synthesised already normalised.
    """
    from monai import transforms as mt
    from monai.data import MetaTensor

    from .labels import read_label

    keys = ["image", "label"] if with_label else ["image"]
    if isinstance(classes, int):  # a class count: numbered names (an RTSTRUCT needs the real ones)
        classes = {c: str(c) for c in range(classes)}
    for item in items:
        for key in keys:
            if not Path(item[key]).exists():
                raise FileNotFoundError(f"{key} file {item[key]} does not exist")
    with _quiet_nvimgcodec():
        monai_reader = mt.Compose([mt.LoadImage(image_only=True, ensure_channel_first=True),
                                   mt.Orientation(axcodes="RAS", labels=None)])
    modes = ["trilinear", "nearest"] if with_label else ["trilinear"]
    recipe = intensity if isinstance(intensity, dict) else None
    settings = _recipe_settings(recipe) if recipe and not recipe.get("phantom") else None
    post = mt.Compose([
        *([] if recipe else _intensity_transform(["image"], intensity)),
        *([mt.Resized(keys, spatial_size=tuple(img_size), mode=modes)] if spacing is None else
          [mt.Spacingd(keys, pixdim=tuple(spacing), mode=["bilinear", "nearest"][:len(keys)]),
           mt.SpatialPadd(keys, spatial_size=tuple(img_size))]),
        mt.EnsureTyped(keys, data_type="tensor", track_meta=False),
    ])
    out = []
    for item in items:
        data, metas = dict(item), {}
        data["image"], metas["image"] = read_image(item["image"], monai_reader)
        if with_label:
            data["label"], report = read_label(item["label"], data["image"], item["image"], metas["image"], monai_reader,
                                               classes, resample_labels)
            if report is not None:
                data["label_resampled"] = report
        data["voxel_mm"] = (voxel_mm_after_resize(data["image"], img_size) if spacing is None
                            else [round(float(v), 3) for v in spacing])
        if settings is not None:
            image = data["image"]  # the recipe's output keeps the image's affine (Spacingd needs it)
            data["image"] = MetaTensor(_apply_recipe(image, item["image"], settings, metas["image"]),
                                       affine=image.affine, meta={k: v for k, v in image.meta.items() if k != "affine"})
        data = post(data)
        data["image"] = data["image"].float()
        if with_label:
            data["label"] = data["label"].round().long()
        out.append(data)
    return out

