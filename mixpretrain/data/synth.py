"""Procedural phantom domains: paired CT / MRI / PET-like volumes with shared anatomy.

Every case is one *subject*: a torso with body wall, fat, lungs, liver, spleen, kidneys, a
segmented spine, pelvis, aorta, bladder, bowel loops and a few lesions, under a random pose and
a smooth random warp, plus a two-scale tissue-texture field. The subject depends only on ``(seed, subject id)``, so case
``i`` has the same anatomy in every domain: the domains share structure (an encoder trained on
one learns anatomy that helps the others) but differ in contrast, noise, blur and artefacts, so
they also genuinely differ. Each domain is a :class:`PhantomDomain` whose knobs (noise, blur,
bias field, texture, lesion contrast) set its difficulty and statistics; ``PRESETS`` holds named
ones (``ct``, ``ct_lowdose``, ``mri``/``mri_t1``, ``mri_t2``, ``pet``, ``cells``). ``cells`` is meant as
an *island*: a packed Voronoi cell tissue unrelated to the torso (``benchmarks/phantom_transfer.py``
measures how much each domain actually helps each other one; see docs/data.md).

Volumes are rendered, then normalised the way ingest normalises real scans of that modality
(CT: HU window then scale; MRI: foreground percentile clip then z-score; PET: percentile
normalisation), and written through :class:`mixpretrain.data.shards.ShardWriter` with
deterministic train/val splits and ``index.json``, exactly like ingested data.

    write_phantom_shards("outputs/demo/shards", ["ct", "mri", "pet"], cases=16, size=48)
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from mixpretrain.data.shards import ShardWriter, check_name, load_index, safe_key, update_index

log = logging.getLogger(__name__)

# Tissue labels of the shared anatomy.
AIR, FAT, MUSCLE, LUNG, LIVER, SPLEEN, KIDNEY, BONE, MARROW, VESSEL, BLADDER, LESION = range(12)
N_TISSUES = 12
TISSUE_NAMES = ("air", "fat", "muscle", "lung", "liver", "spleen", "kidney", "bone", "marrow", "vessel", "bladder", "lesion")

# Per-tissue contrast tables (indexed by label). CT in Hounsfield units; MRI and PET in
# arbitrary units (ratios between tissues are what matters after normalisation).
CONTRASTS: dict[str, tuple[float, ...]] = {
    #        air     fat    muscle  lung   liver  spleen kidney bone   marrow vessel bladder lesion
    "ct": (-1000.0, -100.0, 45.0, -850.0, 60.0, 48.0, 32.0, 900.0, 250.0, 180.0, 8.0, 15.0),
    "t1": (0.0, 1.0, 0.35, 0.04, 0.55, 0.42, 0.45, 0.08, 0.75, 0.85, 0.12, 0.30),
    "t2": (0.0, 0.80, 0.25, 0.03, 0.30, 0.55, 0.60, 0.05, 0.45, 0.10, 1.00, 0.90),
    "pet": (0.0, 0.25, 0.8, 0.15, 1.6, 1.3, 3.0, 0.6, 0.9, 1.2, 8.0, 6.0),
    # island domain: cytoplasm types (muscle, liver, spleen labels), nucleus (kidney), wall (bone)
    "cells": (0.0, 0.2, 0.6, 0.9, 0.3, 0.45, 0.9, 1.3, 0.6, 0.8, 0.45, 0.25),
}

# Modality of each contrast, as ingest and index.json know it.
CONTRAST_MODALITY = {"ct": "ct", "t1": "mri", "t2": "mri", "pet": "pet", "cells": "mri"}

# Soft-tissue HU window, clipped then scaled to [0, 1]: organs stay visible (a -1000..1000 window
# would flatten every soft tissue into one grey).
CT_WINDOW = (-200.0, 300.0)


@dataclass(frozen=True)
class PhantomDomain:
    """One phantom domain: its contrast and the knobs that set its difficulty and statistics.

    noise:    noise level (CT: HU std; MRI: Rician sigma relative to muscle=0.35 scale;
              PET: 1/sqrt(counts) scale -- higher is noisier).
    blur:     Gaussian PSF sigma in voxels (PET-like domains blur most).
    bias:     strength of the smooth multiplicative bias field (MRI-like).
    texture:  strength of the subject's shared tissue-texture field in this domain.
    lesion:   multiplier on the lesion contrast relative to its organ (0 hides lesions).
    anatomy:  "torso" (shared across domains) or "cells" (island: unrelated blob anatomy).
    subject_offset: added to the subject id; 0 pairs case i with case i of every other domain.
    """

    name: str
    contrast: str
    noise: float
    blur: float = 0.0
    bias: float = 0.0
    texture: float = 0.05
    lesion: float = 1.0
    anatomy: str = "torso"
    subject_offset: int = 0

    @property
    def modality(self) -> str:
        return CONTRAST_MODALITY[self.contrast]


PRESETS: dict[str, PhantomDomain] = {
    "ct": PhantomDomain("ct", "ct", noise=12.0, blur=0.5, texture=0.08),
    "ct_lowdose": PhantomDomain("ct_lowdose", "ct", noise=60.0, blur=0.7, texture=0.08),
    "mri": PhantomDomain("mri", "t1", noise=0.015, blur=0.3, bias=0.35, texture=0.25),
    "mri_t1": PhantomDomain("mri_t1", "t1", noise=0.015, blur=0.3, bias=0.35, texture=0.25),
    "mri_t2": PhantomDomain("mri_t2", "t2", noise=0.025, blur=0.3, bias=0.45, texture=0.25),
    "pet": PhantomDomain("pet", "pet", noise=0.5, blur=1.5, texture=0.15, lesion=1.0),
    "cells": PhantomDomain("cells", "cells", noise=0.03, blur=0.8, texture=0.2, anatomy="cells"),
}


def resolve_domain(spec: str | PhantomDomain) -> PhantomDomain:
    """A preset name, ``preset:key=value:...`` (e.g. ``ct:noise=40:name=ct40``) or a PhantomDomain.

    Options are separated by ``:`` so a spec survives the CLI's comma-separated ``--domains``.
    """
    if isinstance(spec, PhantomDomain):
        return spec
    base, _, opts = spec.strip().partition(":")
    if base not in PRESETS:
        raise ValueError(f"unknown phantom domain {base!r}; presets: {', '.join(sorted(PRESETS))}")
    domain = PRESETS[base]
    if not opts:
        return domain
    fields = {f.name: f.type for f in dataclasses.fields(PhantomDomain)}
    changes: dict[str, Any] = {}
    for item in opts.split(":"):
        key, eq, value = item.partition("=")
        key = key.strip()
        if not eq or key not in fields or key == "contrast":
            raise ValueError(f"phantom domain {spec!r}: bad option {item!r}; settable: {', '.join(sorted(set(fields) - {'contrast'}))}")
        default = getattr(domain, key)
        try:
            changes[key] = type(default)(value)
        except ValueError as exc:
            raise ValueError(f"phantom domain {spec!r}: option {key}={value!r} is not a {type(default).__name__}") from exc
    if "name" not in changes:
        changes["name"] = safe_key(f"{base}_" + "_".join(f"{k}{v:g}" if isinstance(v, float) else f"{k}{v}" for k, v in changes.items()))
    check_name("phantom domain name", changes["name"])
    if changes.get("anatomy", "torso") not in ANATOMIES:
        raise ValueError(f"phantom domain {spec!r}: anatomy must be one of {sorted(ANATOMIES)}")
    return dataclasses.replace(domain, **changes)


# ----------------------------------------------------------------------------- anatomy


def _rng(*keys: int | str) -> np.random.Generator:
    """A generator keyed by a tuple, stable across processes and Python versions."""
    digest = hashlib.sha256("/".join(map(str, keys)).encode()).digest()
    return np.random.default_rng(np.frombuffer(digest[:16], dtype=np.uint32).astype(np.uint64))


def _interp_matrix(n: int, coarse: int) -> np.ndarray:
    """(n, coarse) linear-interpolation weights from a coarse grid onto n points (end-aligned)."""
    pos = np.linspace(0.0, coarse - 1.0, n)
    lo = np.minimum(pos.astype(int), coarse - 2)
    frac = (pos - lo).astype(np.float32)
    m = np.zeros((n, coarse), dtype=np.float32)
    m[np.arange(n), lo] = 1.0 - frac
    m[np.arange(n), lo + 1] = frac
    return m


def _smooth_field(rng: np.random.Generator, shape: tuple[int, int, int], coarse: int = 4) -> np.ndarray:
    """Smooth random field in [-1, 1]: coarse Gaussian noise, trilinearly upsampled.

    Separable upsampling with three small matrices is ~20x faster than ndimage.zoom here.
    """
    field = rng.standard_normal((coarse, coarse, coarse)).astype(np.float32)
    for axis, n in enumerate(shape):
        field = np.moveaxis(np.tensordot(_interp_matrix(n, coarse), field, axes=([1], [axis])), 0, axis)
    return field / max(float(np.abs(field).max()), 1e-6)


def _grid(shape: tuple[int, int, int], rng: np.random.Generator, warp: float) -> list[np.ndarray]:
    """Normalised coordinates in [-1, 1] per axis under a random pose and smooth random warp.

    The pose (rotation about the body axis, a small tilt, shift, anisotropic scale) and the warp
    are what make subjects differ from each other; every domain sees the same ones.
    """
    axes = [np.linspace(-1.0, 1.0, n, dtype=np.float32) for n in shape]
    coords = np.stack(np.meshgrid(*axes, indexing="ij")).reshape(3, -1)
    a, t = float(rng.uniform(-0.35, 0.35)), float(rng.uniform(-0.12, 0.12))
    rot_z = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    rot_x = np.array([[1, 0, 0], [0, np.cos(t), -np.sin(t)], [0, np.sin(t), np.cos(t)]])
    scale = np.diag(rng.uniform(0.85, 1.15, size=3))
    shift = rng.uniform([-0.1, -0.1, -0.25], [0.1, 0.1, 0.25])[:, None]
    coords = ((scale @ rot_x @ rot_z).astype(np.float32) @ coords + shift.astype(np.float32)).reshape(3, *shape)
    return [coords[i] + warp * _smooth_field(rng, shape, coarse=3) for i in range(3)]


def _ellipsoid(x: np.ndarray, y: np.ndarray, z: np.ndarray, centre: Sequence[float], radii: Sequence[float]) -> np.ndarray:
    return ((x - centre[0]) / radii[0]) ** 2 + ((y - centre[1]) / radii[1]) ** 2 + ((z - centre[2]) / radii[2]) ** 2 <= 1.0


def torso_anatomy(subject: int, shape: tuple[int, int, int], seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Label volume (uint8, tissue ids) and texture field (float32 in [-1, 1]) of one subject.

    Axes are RAS: axis 0 left->right, axis 1 posterior->anterior, axis 2 inferior->superior.
    """
    rng = _rng("torso", seed, subject)
    x, y, z = _grid(shape, rng, warp=0.1)
    j = lambda scale=0.05: float(rng.uniform(-scale, scale))  # noqa: E731 -- per-subject jitter
    s = float(rng.uniform(0.85, 1.0))  # body size
    labels = np.zeros(shape, dtype=np.uint8)

    body = (x / (0.88 * s)) ** 2 + ((y + j()) / (0.62 * s)) ** 2 <= 1.0
    labels[body] = FAT
    inner = (x / (0.88 * s - 0.1 - j(0.03))) ** 2 + ((y + j()) / (0.62 * s - 0.1)) ** 2 <= 1.0
    labels[inner & body] = MUSCLE
    for side in (-1, 1):  # lungs in the upper body
        lung = _ellipsoid(x, y, z, (side * 0.38 * s + j(), 0.02 + j(), 0.72 + j(0.1)), (0.28 * s, 0.38 * s, 0.55))
        labels[lung & inner] = LUNG
    liver_c = (0.3 * s + j(), 0.05 + j(), 0.2 + j(0.08))
    liver = _ellipsoid(x, y, z, liver_c, (0.38 * s + j(), 0.32 * s, 0.28 + j()))
    labels[liver & inner] = LIVER
    spleen = _ellipsoid(x, y, z, (-0.45 * s + j(), -0.12 + j(), 0.22 + j()), (0.13, 0.16, 0.16))
    labels[spleen & inner] = SPLEEN
    for side in (-1, 1):
        kidney = _ellipsoid(x, y, z, (side * 0.32 * s + j(), -0.3 + j(), -0.05 + j(0.08)), (0.11, 0.09, 0.2))
        labels[kidney & inner] = KIDNEY
    bladder = _ellipsoid(x, y, z, (j(), 0.22 + j(), -0.78 + j()), (0.2 + j(), 0.16, 0.15 + j()))
    labels[bladder & inner] = BLADDER
    for _ in range(int(rng.integers(6, 12))):  # bowel loops and visceral fat, subject-specific
        c = (float(rng.uniform(-0.45, 0.45)), float(rng.uniform(-0.1, 0.4)), float(rng.uniform(-0.6, 0.0)))
        blob = _ellipsoid(x, y, z, c, rng.uniform(0.05, 0.14, size=3))
        labels[blob & (labels == MUSCLE)] = FAT if rng.random() < 0.6 else LUNG
    aorta = (x - 0.06 + j(0.02)) ** 2 + (y + 0.22 + j(0.02)) ** 2 <= 0.045**2 * (1 + (z > -0.5))
    labels[aorta & inner & (z > -0.7)] = VESSEL
    # spine: vertebral bodies (bone shell, marrow core) separated by discs (soft tissue)
    r2 = x**2 + (y + 0.43 * s) ** 2
    level = np.cos(np.pi * (z + j(0.2)) * float(rng.uniform(5.5, 7.0)))
    vertebra = (r2 <= (0.1 * s) ** 2) & (level > -0.55)
    labels[vertebra] = BONE
    labels[vertebra & (r2 <= (0.065 * s) ** 2)] = MARROW
    for side in (-1, 1):  # pelvis wings
        pelvis = _ellipsoid(x, y, z, (side * 0.5 * s, -0.2 + j(), -0.7 + j()), (0.22 * s, 0.1, 0.22))
        labels[pelvis & body] = BONE
    # lesions: small spheres in the liver (and sometimes a lung), 0-3 per subject
    for _ in range(int(rng.integers(0, 4))):
        organ = LIVER if rng.random() < 0.75 else LUNG
        cand = np.argwhere(labels == organ)
        if len(cand):
            c = cand[rng.integers(len(cand))] / (np.array(shape) - 1) * 2 - 1
            lesion = _ellipsoid(x, y, z, c, [float(rng.uniform(0.04, 0.09))] * 3)
            labels[lesion & (labels == organ)] = LESION
    # two scales of tissue texture (features of ~6 and ~3 voxels): real tissue is not flat, and
    # this shared fine structure is what makes a masked patch predictable from its context
    texture = _smooth_field(rng, shape, coarse=max(4, shape[0] // 6)) + _smooth_field(rng, shape, coarse=max(4, shape[0] // 3))
    texture /= max(float(np.abs(texture).max()), 1e-6)
    return labels, texture


def cells_anatomy(subject: int, shape: tuple[int, int, int], seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Island anatomy: a packed tissue of polyhedral cells (Voronoi), with walls and nuclei.

    Sharp, high-frequency, repetitive structure that nothing in the torso has: what a model
    learns here helps the torso domains little, and vice versa.
    """
    from scipy.spatial import cKDTree

    rng = _rng("cells", seed, subject)
    x, y, z = _grid(shape, rng, warp=0.08)
    n = int(rng.integers(150, 350))
    centres = rng.uniform(-1.2, 1.2, size=(n, 3))
    dist, idx = cKDTree(centres).query(np.stack([x.ravel(), y.ravel(), z.ravel()], axis=1), k=2)
    cytoplasm = np.array([LIVER, SPLEEN, MUSCLE], dtype=np.uint8)[rng.integers(0, 3, size=n)]
    labels = cytoplasm[idx[:, 0]]
    labels[dist[:, 0] < rng.uniform(0.05, 0.09, size=n)[idx[:, 0]]] = KIDNEY  # nucleus
    labels[dist[:, 1] - dist[:, 0] < 0.04] = BONE  # cell wall: near the bisector of two centres
    texture = _smooth_field(rng, shape, coarse=max(4, shape[0] // 4))
    return labels.reshape(shape), texture


ANATOMIES = {"torso": torso_anatomy, "cells": cells_anatomy}


# ----------------------------------------------------------------------------- rendering


def _ct_normalise(hu: np.ndarray) -> np.ndarray:
    lo, hi = CT_WINDOW
    return (np.clip(hu, lo, hi) - lo) / (hi - lo)


def _zscore_foreground(img: np.ndarray, foreground: np.ndarray) -> np.ndarray:
    fg = img[foreground] if foreground.any() else img.ravel()
    lo, hi = np.percentile(fg, (0.5, 99.5))
    img = np.clip(img, lo, hi)
    fg = img[foreground] if foreground.any() else img.ravel()
    return (img - fg.mean()) / max(float(fg.std()), 1e-6)


def _percentile_normalise(img: np.ndarray) -> np.ndarray:
    hi = float(np.percentile(img, 99.5))
    return np.clip(img, 0.0, None) / max(hi, 1e-6)


def render(domain: PhantomDomain, labels: np.ndarray, texture: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Render a label volume in the domain's contrast with its artefacts, then normalise it."""
    table = np.asarray(CONTRASTS[domain.contrast], dtype=np.float32)
    organ_of_lesion = table[LIVER]
    table[LESION] = organ_of_lesion + domain.lesion * (table[LESION] - organ_of_lesion)
    img = table[labels]
    foreground = labels != AIR
    if domain.contrast == "ct":
        img = img + np.float32(domain.texture * 500.0) * texture * foreground  # HU texture
    else:
        img = img * (1.0 + np.float32(domain.texture) * texture)
    noise = rng.standard_normal(labels.shape, dtype=np.float32)
    if domain.contrast == "pet":
        # Poisson-like counting noise (variance proportional to uptake), then the PSF blur: PET
        # noise is spatially correlated after reconstruction, unlike CT/MRI's white noise.
        img = np.clip(img + np.float32(domain.noise) * np.sqrt(np.clip(img, 0, None)) * noise, 0, None)
        img = ndimage.gaussian_filter(img, domain.blur, mode="nearest", truncate=3.0) if domain.blur > 0 else img
        return _percentile_normalise(img).astype(np.float32, copy=False)
    if domain.blur > 0:
        img = ndimage.gaussian_filter(img, domain.blur, mode="nearest", truncate=3.0)
    if domain.bias > 0:
        img = img * np.exp(np.float32(domain.bias) * _smooth_field(rng, labels.shape, coarse=3))
    if domain.contrast == "ct":
        img = _ct_normalise(img + np.float32(domain.noise) * noise)
    else:  # MRI-like magnitude image: Rician noise
        sigma = np.float32(domain.noise)
        img = np.sqrt((img + sigma * noise) ** 2 + (sigma * rng.standard_normal(labels.shape, dtype=np.float32)) ** 2)
        img = _zscore_foreground(img, foreground)
    return img.astype(np.float32, copy=False)


def phantom(domain: str | PhantomDomain, subject: int, size: int | Sequence[int], seed: int = 0) -> tuple[np.ndarray, dict]:
    """One normalised phantom volume (float32, D x H x W, RAS) and its metadata."""
    dom = resolve_domain(domain)
    shape = (size,) * 3 if isinstance(size, int) else tuple(int(s) for s in size)
    if len(shape) != 3 or min(shape) < 8:
        raise ValueError(f"phantom size must be one int or three ints >= 8, got {size!r}")
    sid = subject + dom.subject_offset
    labels, texture = ANATOMIES[dom.anatomy](sid, shape, seed)
    volume = render(dom, labels, texture, _rng("render", seed, dom.name, sid))
    meta = _meta(dom, sid, shape, seed)
    return volume, meta


def _meta(dom: PhantomDomain, subject: int, shape: tuple[int, ...], seed: int) -> dict:
    """Sample metadata in the same layout ingest writes for real scans (plus the phantom recipe)."""
    spacing = 320.0 / max(shape)  # a ~32 cm field of view, whatever the grid size
    return {
        "case_id": case_key(dom.name, subject),
        "modality": dom.modality,
        "domain": dom.name,
        "source": {"format": "phantom", "path": f"phantom:{dom.name}:{subject}"},
        "orientation": "RAS",
        "axes": "xyz",
        "spacing": [spacing] * 3,
        "intensity": _intensity(dom),
        "phantom": {**dataclasses.asdict(dom), "subject": subject, "seed": seed},
    }


def _intensity(dom: PhantomDomain) -> dict:
    """The normalisation applied, with ingest's method names (see preprocess.py)."""
    if dom.contrast == "ct":
        return {"method": "ct_window", "window_hu": list(CT_WINDOW), "range": [0.0, 1.0]}
    if dom.contrast == "pet":
        return {"method": "pet_percentile", "percentile": 99.5, "suv_unavailable": "phantom"}
    return {"method": "mri_percentile_zscore", "percentiles": [0.5, 99.5], "mask": "foreground"}


def _preprocessing(dom: PhantomDomain, spacing: float) -> dict:
    return {"modality": dom.modality, "spacing": [spacing] * 3, "phantom": True, "intensity": _intensity(dom)}


# ----------------------------------------------------------------------------- shards


def case_key(domain: str, subject: int) -> str:
    return f"{domain}-{subject:06d}"


def val_subjects(subjects: Sequence[int], seed: int, val_fraction: float) -> set[int]:
    """Deterministic split by subject hash, shared by every domain (no anatomy leaks into val).

    At least one validation subject whenever there are two or more subjects and val_fraction > 0,
    so small demo runs still have per-domain validation data.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    score = {s: int.from_bytes(hashlib.sha256(f"split/{seed}/{s}".encode()).digest()[:8], "little") / 2**64 for s in subjects}
    val = {s for s, u in score.items() if u < val_fraction}
    if not val and val_fraction > 0 and len(subjects) >= 2:
        val = {min(score, key=score.get)}
    return val


def _check_free(out_dir: Path, names: list[str], overwrite: bool) -> None:
    """Refuse to touch existing domains unless overwrite: user data is never replaced silently."""
    if len(set(names)) != len(names):
        raise ValueError(f"phantom domains repeat a name: {names}")
    if not (out_dir / "index.json").is_file():
        return
    existing = set(load_index(out_dir)["domains"]) & set(names)
    if existing and not overwrite:
        raise FileExistsError(f"{out_dir}: domains {sorted(existing)} already exist (use --overwrite to replace them)")


def write_phantom_shards(
    out_dir: str | Path,
    domains: Sequence[str | PhantomDomain],
    cases: int,
    size: int | Sequence[int],
    seed: int = 0,
    overwrite: bool = False,
    *,
    val_fraction: float = 0.2,
    maxcount: int | None = None,
) -> dict:
    """Synthesise ``cases`` subjects in every domain and write them as shards plus index.json.

    Anatomy is computed once per subject and rendered in every domain. ``maxcount`` (samples per
    shard) defaults to a quarter of the cases, so even small sets have several shards to split
    across ranks and workers. Returns a summary: per domain its modality, sample counts per split
    and shard files, plus the wall time.
    """
    t0 = time.perf_counter()
    out_dir = Path(out_dir)
    doms = [resolve_domain(d) for d in domains]
    if not doms:
        raise ValueError("no phantom domains given")
    if cases < 1:
        raise ValueError(f"cases must be >= 1, got {cases}")
    _check_free(out_dir, [d.name for d in doms], overwrite)
    shape = (int(size),) * 3 if isinstance(size, int | np.integer) else tuple(int(s) for s in size)
    maxcount = maxcount or max(1, min(64, -(-cases // 4)))
    subjects = list(range(cases))
    val = val_subjects(subjects, seed, val_fraction)
    writers = {(d.name, split): ShardWriter(out_dir, d.name, d.modality, split, maxcount=maxcount, overwrite=overwrite)
               for d in doms for split in ("train", "val")}
    case_rows: dict[str, dict[str, dict]] = {d.name: {} for d in doms}
    try:
        for subject in subjects:
            split = "val" if subject in val else "train"
            anatomy_cache: dict[tuple[str, int], tuple[np.ndarray, np.ndarray]] = {}
            for dom in doms:
                sid = subject + dom.subject_offset
                if (dom.anatomy, sid) not in anatomy_cache:
                    anatomy_cache[(dom.anatomy, sid)] = ANATOMIES[dom.anatomy](sid, shape, seed)
                labels, texture = anatomy_cache[(dom.anatomy, sid)]
                volume = render(dom, labels, texture, _rng("render", seed, dom.name, sid))
                meta = _meta(dom, sid, shape, seed)
                writers[(dom.name, split)].write(meta["case_id"], volume, meta)
                case_rows[dom.name][meta["case_id"]] = {"split": split, "source": f"phantom:{dom.name}:{sid}"}
    except BaseException:
        for w in writers.values():
            w.abort()
        raise
    summary: dict[str, Any] = {"out_dir": str(out_dir), "domains": {}}
    for dom in doms:
        # With overwrite, ShardWriter.close() removes this domain's older shards and
        # update_index(replace=True) starts its index entry afresh.
        shards = writers[(dom.name, "train")].close() + writers[(dom.name, "val")].close()
        spacing = _meta(dom, 0, shape, seed)["spacing"]
        update_index(out_dir, dom.name, dom.modality, shards=shards, spacing=spacing, preprocessing=_preprocessing(dom, spacing[0]),
                     cases=case_rows[dom.name], replace=overwrite, extra={"phantom": dataclasses.asdict(dom)})
        counts = {sp: sum(s["samples"] for s in shards if s["split"] == sp) for sp in ("train", "val")}
        summary["domains"][dom.name] = {"modality": dom.modality, **counts, "shards": [s["file"] for s in shards]}
    summary["seconds"] = round(time.perf_counter() - t0, 3)
    log.info("synthesised %d domains x %d cases of %s in %.2fs into %s", len(doms), cases, shape, summary["seconds"], out_dir)
    return summary
