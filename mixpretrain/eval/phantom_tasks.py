"""Phantom downstream tasks: lesion classification and organ/lesion segmentation.

``write_phantom_tasks(out_dir, cases, size)`` writes, from one set of phantom subjects:

- ``imagesTr/case_NNNN.nii.gz`` and ``labelsTr/case_NNNN.nii.gz`` with ``dataset.json`` in the
  Medical Segmentation Decathlon layout (labels in :data:`LABELS`: liver, spleen, kidney, lesion);
- ``classification.csv`` with columns ``image, label, split`` (label 1: a lesion is present).

The subjects are the pretraining phantoms' torso anatomy (:func:`mixpretrain.data.synth.torso_anatomy`)
rendered by the same :func:`~mixpretrain.data.synth.render` and normalisation as the phantom
shards, so an encoder pretrained on phantom shards sees the statistics it was trained on. Subject
ids start at :data:`SUBJECT_OFFSET`, far from the ids the shards use, so no downstream case is a
pretraining case. Exactly half the cases (in shuffled order) carry a liver lesion; in the other half
every lesion the anatomy drew is painted over with the surrounding tissue. Every case is a pure
function of ``(seed, case index)`` and the options.

Lesion size and contrast are options because the defaults (the pretraining phantoms' contrast, a
radius of 10-15% of half the grid) make a faint target at small grids: at 40^3 CT the lesion has
33-93 voxels and a contrast-to-noise ratio of 0.4-1.3 against the liver, whose texture has blobs of
the same size and amplitude (+-40 HU vs the lesion's -45 HU); a segmentation decoder did not find it
in 400 CPU steps. ``lesion_contrast=3, lesion_radius=(0.15, 0.25)`` gives 123-485 voxels, CNR 2-5.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
from pathlib import Path

import numpy as np
from scipy import ndimage

log = logging.getLogger(__name__)

LABELS = {"0": "background", "1": "liver", "2": "spleen", "3": "kidney", "4": "lesion"}
VAL_FRACTION = 0.25  # share of cases in the held-out split of both tasks
SUBJECT_OFFSET = 1_000_000  # downstream subjects never coincide with pretraining subjects
TASK_FILES = ("imagesTr", "labelsTr", "dataset.json", "classification.csv")
LESION_RADIUS = (0.10, 0.15)  # default lesion radius range, as a fraction of half the grid size


def _paint_over_lesions(labels: np.ndarray, lesion: int) -> np.ndarray:
    """Replace lesion voxels by the nearest non-lesion tissue (the organ they sat in)."""
    mask = labels == lesion
    if not mask.any():
        return labels
    _, idx = ndimage.distance_transform_edt(mask, return_distances=True, return_indices=True)
    return labels[tuple(idx)]


def _add_liver_lesion(labels: np.ndarray, rng: np.random.Generator, liver: int, lesion: int,
                      radius_range: tuple[float, float] = LESION_RADIUS) -> np.ndarray:
    """Paint one sphere centred in the liver, radius ``radius_range`` x half the grid, >= 2 voxels (survives 32^3)."""
    cand = np.argwhere(labels == liver)
    if not len(cand):  # a deformed subject without liver voxels: lesion in any soft tissue
        cand = np.argwhere(labels > 0)
    centre = cand[rng.integers(len(cand))]
    radius = max(2.0, float(rng.uniform(*radius_range)) * labels.shape[0] / 2)
    grid = np.ogrid[tuple(slice(0, s) for s in labels.shape)]
    sphere = sum((g - c) ** 2 for g, c in zip(grid, centre, strict=True)) <= radius**2
    out = labels.copy()
    out[sphere & (labels > 0)] = lesion
    return out


def _case(subject: int, shape: tuple[int, int, int], seed: int, lesion: bool, domain: str,
          lesion_radius: tuple[float, float] = LESION_RADIUS, lesion_contrast: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """One case: (image float32, normalised like the shards; label uint8 with :data:`LABELS`)."""
    from mixpretrain.data import synth

    tissues, texture = synth.torso_anatomy(subject, shape, seed)
    tissues = _paint_over_lesions(tissues, synth.LESION)
    if lesion:
        tissues = _add_liver_lesion(tissues, synth._rng("lesion", seed, subject), synth.LIVER, synth.LESION, lesion_radius)
    dom = synth.resolve_domain(domain)
    # Scale the lesion-vs-liver contrast only; the name (and so the render noise) stays the same.
    dom = dataclasses.replace(dom, lesion=dom.lesion * lesion_contrast)
    image = synth.render(dom, tissues, texture, synth._rng("render", seed, dom.name, subject))
    label = np.zeros(shape, np.uint8)
    for value, tissue in ((1, synth.LIVER), (2, synth.SPLEEN), (3, synth.KIDNEY), (4, synth.LESION)):
        label[tissues == tissue] = value
    return image, label


def _size3(size: int | tuple[int, ...] | list[int]) -> tuple[int, int, int]:
    dims = (size,) * 3 if isinstance(size, int) else tuple(size)
    if len(dims) != 3 or any(int(d) < 8 for d in dims):
        raise ValueError(f"phantom task size must be one int or three ints >= 8, got {size!r}")
    return tuple(int(d) for d in dims)  # type: ignore[return-value]


def _prepare(out: Path, overwrite: bool) -> None:
    existing = [out / n for n in TASK_FILES if (out / n).exists()]
    if existing and not overwrite:
        raise FileExistsError(f"{out} already holds phantom task files ({existing[0].name}); pass overwrite=True / --overwrite")
    for path in existing:
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink()
    (out / "imagesTr").mkdir(parents=True, exist_ok=True)
    (out / "labelsTr").mkdir(parents=True, exist_ok=True)


def write_phantom_tasks(
    out_dir: str | Path,
    cases: int,
    size: int | tuple[int, int, int],
    seed: int = 0,
    overwrite: bool = False,
    domain: str = "ct",
    lesion_radius: tuple[float, float] = LESION_RADIUS,
    lesion_contrast: float = 1.0,
    val_fraction: float = VAL_FRACTION,
) -> dict:
    """Write the phantom classification and segmentation tasks; return a summary dict.

    ``domain`` is a phantom preset (``ct``, ``mri``, ``pet``, ... see ``mixpretrain.data.synth``).
    ``lesion_radius``: (low, high) lesion radius as a fraction of half the grid size (at least 2
    voxels). ``lesion_contrast``: multiplier on the domain's lesion-vs-liver contrast (1: the
    pretraining phantoms' contrast, e.g. CT lesion 15 HU in a 60 HU liver; 3: -75 HU).
    ``val_fraction``: share of cases held out (at least 2, at most cases - 2); a larger held-out
    split makes Dice/AUC comparisons between encoders less noisy.
    Both classes appear in both splits whenever ``cases >= 4``.
    """
    import nibabel as nib

    if cases < 4:
        raise ValueError(f"phantom tasks need at least 4 cases (2 per class, train and val), got {cases}")
    shape = _size3(size)
    lo, hi = (float(r) for r in lesion_radius)
    if not 0.0 < lo <= hi <= 1.0:
        raise ValueError(f"lesion_radius must be (low, high) with 0 < low <= high <= 1, got {lesion_radius!r}")
    if not lesion_contrast > 0.0:
        raise ValueError(f"lesion_contrast must be > 0 (0 would hide the lesion), got {lesion_contrast!r}")
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction!r}")
    out = Path(out_dir)
    _prepare(out, overwrite)
    order = np.random.default_rng(seed).permutation(cases)
    has_lesion = {int(c): bool(i % 2) for i, c in enumerate(order)}
    n_val = min(cases - 2, max(2, int(round(cases * val_fraction))))
    val_ids = {int(c) for c in order[:n_val]}  # a prefix of the alternating order: both classes
    spacing = 320.0 / max(shape)  # the phantoms' ~32 cm field of view
    affine = np.diag([spacing, spacing, spacing, 1.0])  # RAS
    rows, training, validation = [], [], []
    for case in range(cases):
        image, label = _case(SUBJECT_OFFSET + case, shape, seed, has_lesion[case], domain, (lo, hi), lesion_contrast)
        name = f"case_{case:04d}.nii.gz"
        nib.save(nib.Nifti1Image(image, affine), str(out / "imagesTr" / name))
        nib.save(nib.Nifti1Image(label, affine), str(out / "labelsTr" / name))
        split = "val" if case in val_ids else "train"
        entry = {"image": f"./imagesTr/{name}", "label": f"./labelsTr/{name}"}
        (validation if split == "val" else training).append(entry)
        rows.append(f"imagesTr/{name},{int(has_lesion[case])},{split}")
    dataset = {
        "name": "PhantomLesion",
        "description": f"procedural {domain} phantoms (mixpretrain.data.synth anatomy), liver lesion in half the cases "
                       f"(radius {lo}-{hi} x half the grid, contrast x{lesion_contrast})",
        "tensorImageSize": "3D",
        "modality": {"0": domain.upper()},
        "labels": LABELS,
        "numTraining": len(training),
        "numValidation": len(validation),
        "training": training,
        "validation": validation,  # MONAI's load_decathlon_datalist reads this key too
        "test": [],
    }
    (out / "dataset.json").write_text(json.dumps(dataset, indent=2))
    (out / "classification.csv").write_text("image,label,split\n" + "\n".join(rows) + "\n")
    summary = {
        "out_dir": str(out),
        "cases": cases,
        "size": list(shape),
        "domain": domain,
        "lesion_cases": int(sum(has_lesion.values())),
        "lesion_radius": [lo, hi],
        "lesion_contrast": float(lesion_contrast),
        "val_cases": len(validation),
        "classification_csv": str(out / "classification.csv"),
        "dataset_json": str(out / "dataset.json"),
    }
    log.info("phantom tasks: %s", summary)
    return summary
