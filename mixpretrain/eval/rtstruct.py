"""RTSTRUCT labels for ``eval segment``: the closed planar contours of a DICOM RT Structure Set,
rasterised onto the image's voxel grid.

ROIs are matched to the classes of ``dataset.json`` by name (case, spaces, ``_`` and ``-``
ignored); ROIs no class names are left out and listed in the report. A voxel is inside a contour
when its centre is (matplotlib ``Path.contains_points``); several contours of one ROI on one slice
combine by the even-odd rule (a contour inside another is a hole). Where ROIs of different classes
overlap (a tumour inside its organ), the higher class number wins, and the overlap is counted.
Contours must lie on the image's slices (within a quarter voxel): they are drawn on the source
images' slices, which are the image's when the image is that series.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .labels import LPS_TO_RAS, sop_class_uid

log = logging.getLogger(__name__)

RTSTRUCT_SOP_CLASS_UID = "1.2.840.10008.5.1.4.1.1.481.3"  # RT Structure Set Storage
PLANE_TOL_VOXELS = 0.25  # a contour's plane may sit this far from an image slice centre


@dataclass
class Contours:
    """The closed planar contours of one RT Structure Set, per ROI name, in patient (LPS) mm."""

    path: str
    frame_of_reference_uid: str | None
    rois: dict[str, list[np.ndarray]]  # ROI name -> contours, each (points, 3)


def _key(name: str) -> str:
    return re.sub(r"[\s_\-]+", " ", name.strip().lower())


def is_rtstruct(path: str | Path) -> bool:
    return sop_class_uid(path) == RTSTRUCT_SOP_CLASS_UID


def read_rtstruct(path: str | Path) -> Contours:
    """The ROIs' closed planar contours (points and lines are left out, counted in the log)."""
    import pydicom

    try:
        ds = pydicom.dcmread(str(path))
    except Exception as exc:
        raise ValueError(f"label {path}: unreadable RTSTRUCT ({type(exc).__name__}: {exc})") from exc
    names = {int(r.ROINumber): str(r.ROIName) for r in getattr(ds, "StructureSetROISequence", [])}
    refs = {str(r.ReferencedFrameOfReferenceUID) for r in getattr(ds, "StructureSetROISequence", [])
            if "ReferencedFrameOfReferenceUID" in r}
    if len(refs) > 1:
        raise ValueError(f"label {path}: RTSTRUCT ROIs in {len(refs)} frames of reference; one image has one")
    rois: dict[str, list[np.ndarray]] = {}
    skipped = 0
    for roi in getattr(ds, "ROIContourSequence", []):
        name = names.get(int(roi.ReferencedROINumber), f"ROI {int(roi.ReferencedROINumber)}")
        for contour in getattr(roi, "ContourSequence", []):
            if str(contour.get("ContourGeometricType", "CLOSED_PLANAR")) != "CLOSED_PLANAR":
                skipped += 1
                continue
            points = np.asarray(contour.ContourData, dtype=np.float64).reshape(-1, 3)
            if len(points) >= 3:
                rois.setdefault(name, []).append(points)
    if skipped:
        log.info("label %s: %d contour(s) that are not CLOSED_PLANAR (points, lines) left out", path, skipped)
    if not rois:
        raise ValueError(f"label {path}: RTSTRUCT holds no closed planar contour")
    return Contours(str(path), next(iter(refs)) if refs else None, rois)


def _fill(contours: list[np.ndarray], to_index: np.ndarray, shape: tuple[int, ...], path: str, roi: str) -> np.ndarray:
    """Boolean mask of one ROI on the image grid: each contour filled on its slice, even-odd."""
    from matplotlib.path import Path as Polygon

    mask = np.zeros(shape, dtype=bool)
    for points in contours:
        idx = (to_index @ np.column_stack([points, np.ones(len(points))]).T)[:3].T
        axis = int(np.argmin(np.ptp(idx, axis=0)))
        k = float(idx[:, axis].mean())
        if np.ptp(idx[:, axis]) > 2 * PLANE_TOL_VOXELS or abs(k - round(k)) > PLANE_TOL_VOXELS:
            raise ValueError(f"label {path}: a contour of ROI {roi!r} does not lie on one of its image's slices "
                             f"(index {k:.2f} on axis {axis}); contours are rasterised on the slices they were drawn on, "
                             "so the image must be their series on its own grid")
        k = round(k)
        if not 0 <= k < shape[axis]:
            continue  # outside the image: counted when the class ends up empty
        a, b = [d for d in range(3) if d != axis]
        lo = np.maximum(np.floor(idx[:, [a, b]].min(0)), 0).astype(int)
        hi = np.minimum(np.ceil(idx[:, [a, b]].max(0)), [shape[a] - 1, shape[b] - 1]).astype(int)
        if np.any(hi < lo):
            continue
        ga, gb = np.meshgrid(np.arange(lo[0], hi[0] + 1), np.arange(lo[1], hi[1] + 1), indexing="ij")
        inside = Polygon(idx[:, [a, b]]).contains_points(np.column_stack([ga.ravel(), gb.ravel()])).reshape(ga.shape)
        region = [slice(None)] * 3
        region[axis], region[a], region[b] = k, slice(lo[0], hi[0] + 1), slice(lo[1], hi[1] + 1)
        mask[tuple(region)] ^= inside  # even-odd: a contour inside another cuts a hole
    return mask


def rasterise(contours: Contours, image: Any, classes: dict[int, str], image_path: str | Path) -> tuple[Any, dict[str, Any]]:
    """(label map on the image grid, report) of an RT Structure Set; see the module docstring."""
    from monai.data import MetaTensor

    by_name = {_key(name): c for c, name in classes.items() if c != 0}
    matched = {roi: by_name.get(_key(roi)) for roi in contours.rois}
    if not any(c is not None for c in matched.values()):
        raise ValueError(f"label {contours.path}: no RTSTRUCT ROI is named like a class of dataset.json (ROIs "
                         f"{sorted(contours.rois)}; classes {[classes[c] for c in sorted(by_name.values())]})")
    affine = np.asarray(image.affine, dtype=np.float64)
    to_index = np.linalg.inv(LPS_TO_RAS @ affine)
    shape = tuple(image.shape[1:])
    out = np.zeros(shape, dtype=np.int32)
    overlap = 0
    for roi, c in sorted(((r, c) for r, c in matched.items() if c is not None), key=lambda rc: rc[1]):
        mask = _fill(contours.rois[roi], to_index, shape, contours.path, roi)
        if not mask.any():
            raise ValueError(f"label {contours.path}: ROI {roi!r} (class {c}) covers no voxel centre of its image "
                             f"{image_path}; check that the RTSTRUCT belongs to this image")
        overlap += int((mask & (out > 0) & (out != c)).sum())
        out[mask] = c  # in class order: the higher class wins where ROIs overlap
    ignored = sorted(r for r, c in matched.items() if c is None)
    if ignored:
        log.info("label %s: RTSTRUCT ROI(s) %s name no class of dataset.json; left out", contours.path, ignored)
    report = {"label": contours.path, "was": "RTSTRUCT contours rasterised on the image grid", "volume_kept": {},
              "rois": {r: c for r, c in matched.items()}, "overlap_voxels": overlap}
    label = MetaTensor(torch.from_numpy(out)[None], affine=torch.as_tensor(affine), meta={"filename_or_obj": contours.path})
    return label, report
