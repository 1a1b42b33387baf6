"""Per-modality preprocessing of a RAS volume: crop to foreground, intensity, resample.

Order and why:

1. refuse NaN/Inf voxels (a skip with the count; filling them would invent anatomy);
2. crop to the foreground bounding box (+ margin) on the source grid — cheapest place to drop air;
3. intensity, from statistics of the foreground voxels:
   - CT: clip to a HU window (default -1000..1000), scale to [0, 1] (so zero padding = air);
   - MRI: clip to the 0.5 / 99.5 percentiles of the foreground, then z-score with the
     foreground mean and standard deviation;
   - PET: SUV (body weight) when the DICOM headers carry dose, weight and timing, clipped at
     ``pet_suv_max``; otherwise divide by the foreground 99.5 percentile and clip at 0 (the
     metadata's ``intensity.method`` says which);
4. resample to the domain spacing (trilinear, with Gaussian anti-aliasing when downsampling, the
   same recipe as MONAI ``Resize(anti_aliasing=True)`` but several times faster on CPU) —
   after intensity clipping, so a metal streak cannot smear before it is clipped.

Orientation to RAS happens in :func:`mixpretrain.data.readers.read_volume`.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

import numpy as np

from .readers import ReadError, Volume, dicom_header

DEFAULT_SPACING = {"ct": (1.5, 1.5, 1.5), "mri": (1.5, 1.5, 1.5), "pet": (2.0, 2.0, 2.0)}


class PreprocessError(ReadError):
    """A volume cannot be preprocessed (NaN voxels, blank image, ...); names the file and reason."""


@dataclass
class PreprocessSettings:
    modality: str
    spacing: tuple[float, float, float] | None = None  # None: the modality's default
    ct_window: tuple[float, float] = (-1000.0, 1000.0)  # HU
    ct_foreground_hu: float = -500.0  # body vs air, for the crop
    mri_percentiles: tuple[float, float] = (0.5, 99.5)
    pet_percentile: float = 99.5
    pet_suv_max: float = 50.0
    foreground_fraction: float = 0.05  # MRI/PET: foreground above this fraction of the robust max
    crop_margin: int = 2  # voxels kept around the foreground box
    min_size: int = 2  # every output axis must keep at least this many voxels

    def __post_init__(self) -> None:
        if self.modality not in DEFAULT_SPACING:
            raise ValueError(f"unknown modality {self.modality!r}; expected one of {sorted(DEFAULT_SPACING)}")
        if self.spacing is None:
            self.spacing = DEFAULT_SPACING[self.modality]
        self.spacing = tuple(float(s) for s in self.spacing)
        if len(self.spacing) != 3 or min(self.spacing) <= 0:
            raise ValueError(f"spacing must be three positive numbers (mm), got {self.spacing}")
        if self.ct_window[0] >= self.ct_window[1]:
            raise ValueError(f"ct_window must be (low, high) with low < high, got {self.ct_window}")

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


# ---------------------------------------------------------------------------------------------
# foreground


def _foreground_mask(array: np.ndarray, s: PreprocessSettings) -> np.ndarray:
    if s.modality == "ct":
        return array > s.ct_foreground_hu
    lo = float(array.min())
    hi = float(np.percentile(array[:: 4, :: 4, :: 2], 99.5))  # subsampled: a threshold, not a statistic
    return array > lo + s.foreground_fraction * (hi - lo)


def crop_foreground(array: np.ndarray, mask: np.ndarray, margin: int) -> tuple[np.ndarray, np.ndarray, list]:
    """Crop ``array`` and ``mask`` to the mask's bounding box, grown by ``margin`` voxels.

    Same box as MONAI's ``generate_spatial_bounding_box`` (clipped to the image), in numpy:
    importing MONAI costs every ingest worker process several seconds for these few lines.
    """
    bounds = []
    for axis in range(3):
        hits = np.flatnonzero(mask.any(axis=tuple(a for a in range(3) if a != axis)))
        bounds.append([max(0, int(hits[0]) - margin), min(array.shape[axis], int(hits[-1]) + 1 + margin)])
    box = tuple(slice(a, b) for a, b in bounds)
    return array[box], mask[box], bounds


# ---------------------------------------------------------------------------------------------
# PET SUV


def _dicom_time(value: str) -> float:
    """DICOM TM "HHMMSS.frac" -> seconds since midnight."""
    value = str(value).strip()
    t = datetime.strptime(value.split(".")[0].ljust(6, "0"), "%H%M%S")
    frac = float("0." + value.split(".")[1]) if "." in value else 0.0
    return t.hour * 3600 + t.minute * 60 + t.second + frac


CLOCK_SKEW_S = 15 * 60  # series times up to this far before the injection time read as clock skew


def suv_factor(ds: Any) -> tuple[float | None, str]:
    """Body-weight SUV factor from a PET DICOM header: (factor, "") or (None, why not).

    SUV = activity [Bq/ml] * weight [g] / decayed injected dose [Bq]. With DecayCorrection
    START the images are corrected to the series start, so the dose is decayed from injection
    to series time; with ADMIN no decay is applied.
    """
    units = str(getattr(ds, "Units", "")).upper()
    if units == "GML":
        return 1.0, ""
    if units != "BQML":  # a missing Units is not evidence of Bq/ml: no SUV from a guess
        return None, f"Units {units or '(missing)'} (need BQML or GML)"
    weight = float(getattr(ds, "PatientWeight", 0) or 0)
    if weight <= 0:
        return None, "no PatientWeight"
    seq = getattr(ds, "RadiopharmaceuticalInformationSequence", None)
    if not seq:
        return None, "no RadiopharmaceuticalInformationSequence"
    info = seq[0]
    dose = float(getattr(info, "RadionuclideTotalDose", 0) or 0)
    half_life = float(getattr(info, "RadionuclideHalfLife", 0) or 0)
    if dose <= 0 or half_life <= 0:
        return None, "no RadionuclideTotalDose / RadionuclideHalfLife"
    correction = str(getattr(ds, "DecayCorrection", "START")).upper()
    delay = 0.0
    if correction != "ADMIN":
        start = getattr(info, "RadiopharmaceuticalStartTime", None)
        scan = getattr(ds, "SeriesTime", None) or getattr(ds, "AcquisitionTime", None)
        if not start or not scan:
            return None, "no RadiopharmaceuticalStartTime / SeriesTime"
        delay = _dicom_time(scan) - _dicom_time(start)
        if delay < -12 * 3600:  # the scan ran past midnight
            delay += 86400
        elif delay < -CLOCK_SKEW_S:  # a series hours before its injection: the header is wrong
            return None, f"SeriesTime {scan} is {-delay:.0f} s before RadiopharmaceuticalStartTime {start}"
        # A series a few minutes "before" injection is a dynamic scan started at injection on a
        # scanner whose clock differs from the injector's: no decay (a modulo once read it as a
        # 24 h delay, decaying the dose to nothing: SUV x 8800, clipped at 50 everywhere).
        delay = max(delay, 0.0)
    decayed = dose * math.exp(-math.log(2) * delay / half_life)
    return weight * 1000.0 / decayed, ""


# ---------------------------------------------------------------------------------------------
# intensity


def _intensity(array: np.ndarray, mask: np.ndarray, vol: Volume, s: PreprocessSettings) -> tuple[np.ndarray, dict]:
    if s.modality == "ct":
        lo, hi = s.ct_window
        out = (np.clip(array, lo, hi) - lo) / (hi - lo)
        return out, {"method": "ct_window", "window_hu": [lo, hi], "range": [0.0, 1.0]}
    fg = array[mask]
    if s.modality == "mri":
        p_lo, p_hi = np.percentile(fg, s.mri_percentiles)
        clipped_fg = np.clip(fg, p_lo, p_hi)
        mean, std = float(clipped_fg.mean()), float(clipped_fg.std())
        if std <= 0:
            raise PreprocessError(f"{vol.meta.get('path')}: constant foreground intensity, cannot z-score")
        out = (np.clip(array, p_lo, p_hi) - mean) / std
        return out, {"method": "mri_percentile_zscore", "percentiles": list(s.mri_percentiles),
                     "clip": [float(p_lo), float(p_hi)], "mean": mean, "std": std}
    factor, why = _pet_suv(vol)
    if factor is not None:
        out = np.clip(array * factor, 0.0, s.pet_suv_max)
        return out, {"method": "suv_bw", "suv_factor": factor, "clip": [0.0, s.pet_suv_max]}
    ref = float(np.percentile(fg, s.pet_percentile))
    if ref <= 0:
        raise PreprocessError(f"{vol.meta.get('path')}: PET foreground {s.pet_percentile} percentile is {ref} <= 0")
    out = np.clip(array / ref, 0.0, 1e3)  # 1e3 keeps float16 storage finite
    return out, {"method": "pet_percentile", "percentile": s.pet_percentile, "reference": ref,
                 "suv_unavailable": why}


def _checked_foreground(vol: Volume, settings: PreprocessSettings) -> np.ndarray:
    """Steps 1-2's checks: refuse NaN/Inf voxels and blank images; the foreground mask."""
    where = vol.meta.get("path", "volume")
    bad = int(vol.array.size - np.count_nonzero(np.isfinite(vol.array)))
    if bad:
        raise PreprocessError(f"{where}: {bad} NaN/Inf voxels")
    mask = _foreground_mask(vol.array, settings)
    if not mask.any():
        raise PreprocessError(f"{where}: no foreground voxels (blank image)")
    return mask


def normalise_intensity(vol: Volume, settings: PreprocessSettings) -> tuple[np.ndarray, dict]:
    """Step 3 alone (no crop, no resampling): the intensity recipe of ``settings`` on the whole
    volume, with its statistics taken over the foreground as ingest takes them. Downstream
    evaluation uses it to give task images exactly the intensities the encoder was pretrained on."""
    out, info = _intensity(vol.array, _checked_foreground(vol, settings), vol, settings)
    return np.asarray(out, dtype=np.float32), info


def _pet_suv(vol: Volume) -> tuple[float | None, str]:
    first = vol.meta.get("first_file")
    if vol.meta.get("format") != "dicom" or not first:
        return None, f"{vol.meta.get('format')} file carries no DICOM dose/weight/timing"
    return suv_factor(dicom_header(first))


# ---------------------------------------------------------------------------------------------
# resampling


def resample(array: np.ndarray, affine: np.ndarray, spacing: tuple, target: tuple) -> tuple[np.ndarray, np.ndarray, list]:
    """Resample to ``target`` spacing (mm); returns (array, affine, actual spacing).

    The output size is round(n * spacing / target); the actual spacing is n * spacing / size
    (within half a voxel of the target over the extent) and is what the metadata records.
    """
    import torch
    import torch.nn.functional as F
    from scipy import ndimage

    shape = np.array(array.shape)
    size = np.maximum(1, np.round(shape * np.array(spacing) / np.array(target))).astype(int)
    if np.array_equal(size, shape):
        return array, affine, [float(s) for s in spacing]
    zoom = shape / size
    # Anti-aliasing before downsampling, as MONAI Resize(anti_aliasing=True) does (sigma =
    # (zoom - 1) / 2), but with scipy's separable filter: several times faster than MONAI's on CPU.
    sigma = np.maximum(0.0, (zoom - 1.0) / 2.0)
    if sigma.max() > 0:
        array = ndimage.gaussian_filter(array, sigma, mode="nearest", truncate=3.0)
    with torch.no_grad():
        t = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))[None, None]
        out = F.interpolate(t, size=tuple(int(v) for v in size), mode="trilinear", align_corners=False)[0, 0]
    out = out.numpy()
    zoom = shape / size
    new_affine = affine.copy()
    new_affine[:3, :3] = affine[:3, :3] * zoom
    # Voxel 0 of the new grid is centred at old index 0.5 * zoom - 0.5 (align_corners=False).
    new_affine[:3, 3] = (affine @ np.append(0.5 * zoom - 0.5, 1.0))[:3]
    return np.asarray(out, dtype=np.float32), new_affine, [float(v) for v in np.array(spacing) * zoom]


# ---------------------------------------------------------------------------------------------


def preprocess(vol: Volume, settings: PreprocessSettings) -> tuple[np.ndarray, dict]:
    """Preprocessed float32 volume (x, y, z in RAS) and the metadata that records every step."""
    where = vol.meta.get("path", "volume")
    array, mask, box = crop_foreground(vol.array, _checked_foreground(vol, settings), settings.crop_margin)
    affine = vol.affine.copy()
    affine[:3, 3] = (vol.affine @ np.array([box[0][0], box[1][0], box[2][0], 1.0]))[:3]
    array, intensity = _intensity(array, mask, vol, settings)
    array, affine, spacing = resample(array.astype(np.float32, copy=False), affine, vol.spacing, settings.spacing)
    if min(array.shape) < settings.min_size:
        raise PreprocessError(f"{where}: only {list(array.shape)} voxels left after crop and resampling")
    meta = {
        "source": {k: v for k, v in vol.meta.items() if k != "first_file"},
        "orientation": "RAS",
        "axes": "xyz",
        "spacing": spacing,
        "target_spacing": list(settings.spacing),
        "affine": np.round(affine, 6).tolist(),
        "crop_box": box,
        "intensity": intensity,
        "value_range": [float(array.min()), float(array.max())],
    }
    return array, meta
