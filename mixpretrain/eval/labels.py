"""Segmentation labels: reading them (a label file through MONAI, or a DICOM SEG object) and
putting them on their image's voxel grid.

A label must lie on its image's grid, judged by shape *and* affine (``grid_mismatch``); on another
grid it is an error naming both files, or with ``resample_labels`` it is resampled onto the image
grid by the two affines (``resample_label_to_image``, nearest neighbour), every class kept or an
error. A DICOM SEG is always placed on its image's grid that way: its frames are defined by their
positions in the image's frame of reference (a SEG usually stores only the frames that hold a
segment), and with a DICOM image its FrameOfReferenceUID must be the image's.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

log = logging.getLogger(__name__)

SEG_SOP_CLASS_UID = "1.2.840.10008.5.1.4.1.1.66.4"  # Segmentation Storage
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])  # DICOM patient coordinates (LPS) to RAS


# Image and label grids agree when every corner voxel's centre lands on the same point within this
# fraction of the image's smallest voxel: float32 NIfTI headers and DICOM converters differ by
# ~1e-4 mm, while a label shifted by a voxel, or rotated enough to move an edge voxel, is another grid.
GRID_TOL_VOXELS = 0.1


def _affine(t: Any) -> np.ndarray:
    return np.asarray(getattr(t, "affine", np.eye(4)), dtype=np.float64)


def _corners(shape: Sequence[int]) -> np.ndarray:
    """The 8 corner voxel indices of a grid, homogeneous (4, 8)."""
    axes = [(0, n - 1) for n in shape]
    idx = np.array(np.meshgrid(*axes, indexing="ij")).reshape(3, -1)
    return np.vstack([idx, np.ones((1, idx.shape[1]))])


def grid_mismatch(image: Any, label: Any) -> str | None:
    """None when the label is on the image's voxel grid (shape, and every corner voxel within
    ``GRID_TOL_VOXELS`` of the image's smallest voxel); else what differs, in words. Why: labels
    drawn on another grid (a cropped ROI, a coarser export, the original grid of a DICOM series whose
    gantry tilt the reader corrected) can have the image's shape by chance; a check of shape alone
    would train on misaligned masks without a word."""
    ishape, lshape = tuple(image.shape[1:]), tuple(label.shape[1:])
    ia, la = _affine(image), _affine(label)
    ispacing, lspacing = np.linalg.norm(ia[:3, :3], axis=0), np.linalg.norm(la[:3, :3], axis=0)
    if ishape != lshape:
        return f"shape {ishape} vs {lshape}"
    offset = float(np.linalg.norm((ia @ _corners(ishape) - la @ _corners(ishape))[:3], axis=0).max())
    if offset <= GRID_TOL_VOXELS * float(ispacing.min()):
        return None
    parts = [f"the same shape {ishape}, but corner voxels up to {offset:.3g} mm apart"]
    if not np.allclose(ispacing, lspacing, rtol=1e-3):
        parts.append(f"spacing {_mm(ispacing)} vs {_mm(lspacing)} mm")
    if not np.allclose(ia[:3, 3], la[:3, 3], atol=GRID_TOL_VOXELS * float(ispacing.min())):
        parts.append(f"origin {_mm(ia[:3, 3])} vs {_mm(la[:3, 3])} mm")
    return "; ".join(parts)


def _mm(v: np.ndarray) -> str:
    return "x".join(f"{float(x):.4g}" for x in v)


def _class_volumes(label: Any) -> dict[int, float]:
    """Physical volume (mm^3) of every foreground class of a channel-first label."""
    voxel = abs(float(np.linalg.det(_affine(label)[:3, :3])))
    values, counts = torch.unique(torch.as_tensor(label).round().long(), return_counts=True)
    return {int(v): float(c) * voxel for v, c in zip(values.tolist(), counts.tolist(), strict=True) if v != 0}


def resample_label_to_image(label: Any, image: Any, label_path: str | Path, image_path: str | Path) -> tuple[Any, dict[str, Any]]:
    """The label resampled (nearest neighbour, MONAI ``ResampleToMatch``) onto its image's grid by
    the two affines, and a report of each class's physical volume before and after. A class that
    the resample loses entirely (it lies outside the image's field of view, or is smaller than the
    image's voxels) is an error naming both files: it would otherwise vanish from training and scoring."""
    from monai import transforms as mt

    before = _class_volumes(label)
    out = mt.ResampleToMatch(mode="nearest", padding_mode="zeros")(label, img_dst=image)
    after = _class_volumes(out)
    lost = sorted(set(before) - set(after))
    if lost:
        raise ValueError(f"label {label_path}: class(es) {lost} fall outside its image {image_path}'s voxel grid once "
                         "resampled onto it (the two files' affines place them elsewhere, or the class is smaller "
                         "than the image's voxels); check that the label belongs to this image")
    kept = {c: round(after.get(c, 0.0) / v, 4) for c, v in before.items()}
    return out, {"label": str(label_path), "volume_kept": kept}


def sop_class_uid(path: str | Path) -> str | None:
    """The SOPClassUID of a DICOM file (header only), or None for a folder or a non-DICOM file:
    how a DICOM SEG or an RTSTRUCT label is told from a label image."""
    import pydicom

    path = Path(path)
    if not path.is_file():
        return None
    try:
        ds = pydicom.dcmread(str(path), stop_before_pixels=True, specific_tags=["SOPClassUID"])
    except Exception:  # not DICOM at all (NIfTI, NRRD, ...): pydicom raises several types
        return None
    return str(ds.get("SOPClassUID", "")) or None


def is_dicom_seg(path: str | Path) -> bool:
    return sop_class_uid(path) == SEG_SOP_CLASS_UID


def read_dicom_seg(path: str | Path) -> tuple[Any, dict[str, Any]]:
    """(channel-first RAS MetaTensor label map, info) of one DICOM SEG file, by highdicom.

    Voxel value = segment number (so segment k is class k of ``dataset.json``); its grid spans the
    frames the SEG stores. ``info``: the segments' numbers and labels, and the SEG's
    FrameOfReferenceUID. BINARY and LABELMAP SEGs are read; refused with the reason: a FRACTIONAL SEG (probabilities, not a label
    map), overlapping segments (a label map holds one class per voxel), frames that do not form one
    regularly spaced volume."""
    import highdicom as hd
    from monai import transforms as mt
    from monai.data import MetaTensor

    try:
        seg = hd.seg.segread(str(path))
    except Exception as exc:  # highdicom / pydicom raise several types for malformed objects
        raise ValueError(f"label {path}: unreadable DICOM SEG ({type(exc).__name__}: {exc})") from exc
    if seg.segmentation_type == hd.seg.SegmentationTypeValues.FRACTIONAL:
        raise ValueError(f"label {path}: a FRACTIONAL DICOM SEG holds per-voxel fractions, not classes; segment "
                         "needs a BINARY or LABELMAP SEG")
    segments = {int(d.segment_number): str(d.segment_label) for d in seg.SegmentSequence}
    try:
        volume = seg.get_volume(combine_segments=True, relabel=False, dtype=np.uint8 if max(segments) < 256 else np.uint16)
    except Exception as exc:
        if "overlap" in str(exc).lower():
            raise ValueError(f"label {path}: DICOM SEG cannot be read as a label map: segments overlap, and a label "
                             "map holds one class per voxel") from exc
        if "regularly-spaced" not in str(exc):
            raise ValueError(f"label {path}: DICOM SEG cannot be read as a label map ({exc})") from exc
        # A gantry-tilted or unevenly stepped source series: its frames are placed one by one.
        log.info("label %s: DICOM SEG frames do not form one regular volume (%s); placing them by position", path, exc)
        return seg_frames(seg, path), {"segments": segments, "frame_of_reference_uid": str(seg.FrameOfReferenceUID)}
    affine = LPS_TO_RAS @ np.asarray(volume.affine, dtype=np.float64)
    label = MetaTensor(torch.from_numpy(np.ascontiguousarray(volume.array))[None], affine=torch.as_tensor(affine),
                       meta={"filename_or_obj": str(path)})
    label = mt.Orientation(axcodes="RAS", labels=None)(label)  # the image's axis order, so a full SEG matches exactly
    return label, {"segments": segments, "frame_of_reference_uid": str(seg.FrameOfReferenceUID)}


@dataclass
class SegFrames:
    """A DICOM SEG's frames as stored, for a SEG whose frames do not form one regularly spaced
    volume (drawn on a gantry-tilted or unevenly stepped series): placed onto the image grid frame
    by frame by ``place_frames``."""

    path: str
    pixels: np.ndarray  # (frames, rows, cols): 0/1 per frame's segment (BINARY), or segment numbers (LABELMAP)
    segment: np.ndarray  # (frames,): the frame's segment number; 0 for LABELMAP (its pixels are the numbers)
    position: np.ndarray  # (frames, 3): ImagePositionPatient, LPS mm
    row_dir: np.ndarray  # direction of increasing column index (ImageOrientationPatient[:3])
    col_dir: np.ndarray  # direction of increasing row index (ImageOrientationPatient[3:])
    spacing: tuple[float, float]  # PixelSpacing: between rows, between columns (mm)

    def class_map(self) -> np.ndarray:
        """(frames, rows, cols) class values: the frame's segment number where a BINARY frame is set,
        the pixels themselves for a LABELMAP."""
        return np.where(self.pixels > 0, self.segment[:, None, None], 0) if self.segment.any() else self.pixels

    def values(self) -> np.ndarray:
        """The class values the frames hold (for the label value check)."""
        return np.unique(self.class_map())


def _group(seg: Any, frame: int, name: str) -> Any:
    """A functional group's first item for one frame: per-frame if the SEG has it there, else shared."""
    for groups in (getattr(seg, "PerFrameFunctionalGroupsSequence", [])[frame:frame + 1],
                   getattr(seg, "SharedFunctionalGroupsSequence", [])[:1]):
        for group in groups:
            if name in group:
                return group[name].value[0]
    raise ValueError(f"DICOM SEG frame {frame} has no {name}")


def seg_frames(seg: Any, path: str | Path) -> SegFrames:
    """The frames of a SEG with their positions (``SegFrames``), read from its functional groups."""
    labelmap = str(seg.SegmentationType) == "LABELMAP"
    n = int(seg.NumberOfFrames)
    pixels = np.asarray(seg.pixel_array).reshape(n, int(seg.Rows), int(seg.Columns))
    orientations = {tuple(np.round(np.asarray(_group(seg, f, "PlaneOrientationSequence").ImageOrientationPatient,
                                              dtype=np.float64), 4)) for f in range(n)}
    if len(orientations) != 1:
        raise ValueError(f"label {path}: DICOM SEG frames have {len(orientations)} different orientations; one is needed")
    cosines = np.asarray(next(iter(orientations)), dtype=np.float64)
    spacing = tuple(float(v) for v in _group(seg, 0, "PixelMeasuresSequence").PixelSpacing)
    return SegFrames(
        path=str(path), pixels=pixels,
        segment=np.array([0 if labelmap else int(_group(seg, f, "SegmentIdentificationSequence").ReferencedSegmentNumber)
                          for f in range(n)]),
        position=np.array([[float(v) for v in _group(seg, f, "PlanePositionSequence").ImagePositionPatient]
                           for f in range(n)]),
        row_dir=cosines[:3], col_dir=cosines[3:], spacing=(spacing[0], spacing[1]))


def source_planes(meta: dict[str, Any] | None, normal: np.ndarray, seg_path: str | Path) -> np.ndarray:
    """Sorted positions along ``normal`` (mm) of every slice of the DICOM series the image was read
    from: the planes a SEG of that series was drawn on, including those it stores no frame for."""
    import pydicom
    import SimpleITK as sitk

    first = (meta or {}).get("first_file")
    if not first or int((meta or {}).get("files", 0)) < 2:
        raise ValueError(f"label {seg_path}: its frames do not form one regular volume (a gantry-tilted or unevenly "
                         "stepped series); such a SEG is placed by the slice positions of its DICOM series, so its image "
                         "must be that series' folder")
    uid = str(pydicom.dcmread(first, stop_before_pixels=True).SeriesInstanceUID)
    files = sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(Path(first).parent), uid)
    positions = [pydicom.dcmread(f, stop_before_pixels=True, specific_tags=["ImagePositionPatient"]).ImagePositionPatient
                 for f in files]
    return np.unique(np.round(np.asarray(positions, dtype=np.float64) @ normal, 3))


def _plane_extents(planes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(lower, upper) bound along the normal of each plane's slab: halfway to its neighbours, and at
    the ends as far out as the adjacent step."""
    gaps = np.diff(planes)
    mids = planes[:-1] + gaps / 2
    lower = np.concatenate([[planes[0] - gaps[0] / 2], mids])
    upper = np.concatenate([mids, [planes[-1] + gaps[-1] / 2]])
    return lower, upper


def place_frames(frames: SegFrames, image: Any, planes: np.ndarray) -> Any:
    """Each image voxel takes the value of the nearest SEG pixel in the source slice whose slab
    (halfway to its neighbours, ``planes``) holds it, or 0 when the SEG stores no frame for that slice
    (and segment) or the voxel lies outside the frame. Per segment, so overlapping segments are
    found. Frames are planes in patient space, so this places a SEG of a tilted series where the
    reader's tilt-corrected image has those voxels."""
    from monai.data import MetaTensor

    if len(planes) < 2:
        raise ValueError(f"label {frames.path}: its series has {len(planes)} slice position; cannot place its frames")
    normal = np.cross(frames.row_dir, frames.col_dir)
    along = frames.position @ normal
    plane_of = np.searchsorted(planes, np.round(along, 3))
    plane_of = np.clip(plane_of, 0, len(planes) - 1)
    if np.abs(planes[plane_of] - along).max() > 0.01:
        raise ValueError(f"label {frames.path}: DICOM SEG frames lie off the slices of its image's series")
    lower, upper = _plane_extents(planes)
    shape = tuple(image.shape[1:])
    to_lps = LPS_TO_RAS @ np.asarray(image.affine, dtype=np.float64)
    out = np.zeros(shape, dtype=np.int32)
    ij = np.stack(np.meshgrid(np.arange(shape[0]), np.arange(shape[1]), indexing="ij"), axis=-1).reshape(-1, 2)
    numbers = [0] if not frames.segment.any() else [int(k) for k in np.unique(frames.segment)]
    # frame_at[number][plane]: the SEG frame that segment has on that slice, -1 where it stores none
    frame_at = {}
    for number in numbers:
        index = np.full(len(planes), -1)
        members = np.flatnonzero(frames.segment == number)
        index[plane_of[members]] = members
        frame_at[number] = index
    for k in range(shape[2]):  # one image slice at a time: a 512 x 512 slice is 262k points
        world = (to_lps @ np.column_stack([ij, np.full(len(ij), k), np.ones(len(ij))]).T)[:3].T
        s = world @ normal
        slab = np.clip(np.searchsorted(upper, s), 0, len(planes) - 1)
        in_series = (s >= lower[0]) & (s <= upper[-1])
        plane = out[:, :, k].reshape(-1)
        for number in numbers:
            frame = frame_at[number][slab]
            have = in_series & (frame >= 0)
            d = world - frames.position[np.maximum(frame, 0)]
            row = np.rint(d @ frames.col_dir / frames.spacing[0]).astype(np.int64)
            col = np.rint(d @ frames.row_dir / frames.spacing[1]).astype(np.int64)
            inside = have & (row >= 0) & (row < frames.pixels.shape[1]) & (col >= 0) & (col < frames.pixels.shape[2])
            values = np.zeros(len(s), dtype=np.int32)
            values[inside] = frames.pixels[frame[inside], row[inside], col[inside]]
            if number:
                values = np.where(values > 0, number, 0)
            if np.any((values > 0) & (plane > 0)):
                raise ValueError(f"label {frames.path}: DICOM SEG cannot be read as a label map: segments overlap, "
                                 "and a label map holds one class per voxel")
            plane = np.where(values > 0, values, plane)
        out[:, :, k] = plane.reshape(shape[:2])
    return MetaTensor(torch.from_numpy(out)[None], affine=torch.as_tensor(np.asarray(image.affine, dtype=np.float64)),
                      meta={"filename_or_obj": frames.path})


def _frames_volumes(frames: SegFrames, planes: np.ndarray) -> dict[int, float]:
    """Physical volume (mm^3) per class of a SEG's frames: pixels x pixel area x their slice's slab."""
    lower, upper = _plane_extents(planes)
    along = frames.position @ np.cross(frames.row_dir, frames.col_dir)
    slab = (upper - lower)[np.clip(np.searchsorted(planes, np.round(along, 3)), 0, len(planes) - 1)]
    values = frames.class_map()
    volumes: dict[int, float] = {}
    for f in range(len(values)):
        found, counts = np.unique(values[f], return_counts=True)
        for v, c in zip(found.tolist(), counts.tolist(), strict=True):
            if v:
                volumes[int(v)] = volumes.get(int(v), 0.0) + c * frames.spacing[0] * frames.spacing[1] * float(slab[f])
    return volumes


def image_frame_of_reference(meta: dict[str, Any] | None) -> str | None:
    """The FrameOfReferenceUID of a DICOM image (from the first file ingest's reader read), else None."""
    first = (meta or {}).get("first_file")
    if not first:
        return None
    from mixpretrain.data.readers import dicom_header

    uid = dicom_header(first).get("FrameOfReferenceUID")
    return str(uid) if uid else None


def read_label(label_path: str | Path, image: Any, image_path: str | Path, image_meta: dict[str, Any] | None,
               monai_reader: Any, classes: dict[int, str] | None, resample: bool) -> tuple[Any, dict[str, Any] | None]:
    """One case's label on its image's grid, and a report when it was not there as given (None
    otherwise). A DICOM SEG or an RTSTRUCT is recognised by its header; any other label is read
    like an image. Label values are checked against ``classes`` before any placement."""
    from .common import check_label_values, read_image
    from .rtstruct import RTSTRUCT_SOP_CLASS_UID, rasterise, read_rtstruct

    sop = sop_class_uid(label_path)
    if sop == RTSTRUCT_SOP_CLASS_UID:
        if classes is None:
            raise ValueError(f"label {label_path}: an RTSTRUCT needs class names to match its ROIs to")
        contours = read_rtstruct(label_path)
        _check_frame_of_reference(contours.frame_of_reference_uid, image_meta, label_path, image_path, "RTSTRUCT")
        label, report = rasterise(contours, image, classes, image_path)
        log.info("label %s: RTSTRUCT rasterised on the grid of %s (ROI -> class %s; %d voxels in several ROIs)",
                 label_path, image_path, report["rois"], report["overlap_voxels"])
        return label, report
    seg_info = None
    if sop == SEG_SOP_CLASS_UID:
        label, seg_info = read_dicom_seg(label_path)
    else:
        label, _ = read_image(label_path, monai_reader)
    if classes is not None:
        check_label_values(label.values() if isinstance(label, SegFrames) else label, label_path, len(classes))
    return place_label(image, label, image_path, label_path, resample, seg_info, image_meta)


def _check_frame_of_reference(uid: str | None, image_meta: dict[str, Any] | None, label_path: str | Path,
                              image_path: str | Path, kind: str) -> None:
    image_for = image_frame_of_reference(image_meta)
    if uid and image_for and image_for != uid:
        raise ValueError(f"label {label_path}: {kind} of frame of reference {uid}, but its image {image_path} is in "
                         f"{image_for}: the {kind} was not drawn on this image")


def place_label(image: Any, label: Any, image_path: str | Path, label_path: str | Path, resample: bool,
                seg_info: dict[str, Any] | None = None, image_meta: dict[str, Any] | None = None) -> tuple[Any, dict[str, Any] | None]:
    """The label on its image's grid, and a report when it had to be resampled (None otherwise).

    A label on another grid is an error unless ``resample``; a DICOM SEG (``seg_info``) is always
    placed, after its FrameOfReferenceUID is checked against a DICOM image's."""
    if seg_info is not None:
        _check_frame_of_reference(seg_info["frame_of_reference_uid"], image_meta, label_path, image_path, "DICOM SEG")
    if isinstance(label, SegFrames):
        planes = source_planes(image_meta, np.cross(label.row_dir, label.col_dir), label_path)
        before = _frames_volumes(label, planes)
        placed = place_frames(label, image, planes)
        after = _class_volumes(placed)
        lost = sorted(set(before) - set(after))
        if lost:
            raise ValueError(f"label {label_path}: class(es) {lost} fall outside its image {image_path}'s voxel grid "
                             "once its frames are placed on it; check that the SEG belongs to this image")
        report = {"label": str(label_path), "was": "DICOM SEG, frames placed by position (not one regular volume)",
                  "volume_kept": {c: round(after.get(c, 0.0) / v, 4) for c, v in before.items()},
                  "segments": seg_info["segments"] if seg_info else {}}
        log.info("label %s: SEG frames placed on the grid of %s; class volume kept: %s", label_path, image_path,
                 report["volume_kept"])
        return placed, report
    mismatch = grid_mismatch(image, label)
    if mismatch is None:
        return label, None
    if seg_info is None and not resample:
        raise ValueError(f"image {image_path} and its label {label_path} are on different voxel grids ({mismatch}); "
                         "--resample-labels resamples labels onto their images' grids (nearest neighbour)")
    label, report = resample_label_to_image(label, image, label_path, image_path)
    report["was"] = f"DICOM SEG, {mismatch}" if seg_info is not None else mismatch
    if seg_info is not None:
        report["segments"] = seg_info["segments"]
    log.info("label %s resampled onto the grid of %s (%s); class volume kept: %s", label_path, image_path,
             report["was"], report["volume_kept"])
    return label, report
