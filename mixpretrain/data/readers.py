"""Read 3-D scans (NIfTI, NRRD, MHA/MHD, DICOM series, multi-frame DICOM files) into RAS-oriented
float32 arrays.

All parsing is done by nibabel (NIfTI) and SimpleITK/GDCM (NRRD, MHA/MHD, DICOM); pydicom reads
only the header fields that SimpleITK does not expose (PET dose, weight and timing for SUV; the
frame geometry of a multi-frame file, which GDCM gets wrong).

A :class:`Volume` holds ``array`` with axes (x, y, z) = (i, j, k) such that increasing an index
moves toward Right, Anterior, Superior (nibabel's "RAS+" canonical orientation), the 4x4
``affine`` from voxel index to RAS world millimetres, and ``spacing`` per array axis.

Bad input raises :class:`ReadError` naming the file and the reason (unreadable or truncated
file, 2-D image, 4-D image with several frames unless ``frames="first"``, vector image, DICOM
series with a gap where slices are missing, multi-frame DICOM with per-frame rescale values or
several stacks). A DICOM file that GDCM leaves out of every series of
its folder (truncated, unreadable, not an image) is discovered as a source of its own whose read
raises with the reason, so ingest records it as a skip instead of dropping it silently.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

SCAN_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")
DICOM_SUFFIXES = (".dcm", ".dicom", ".ima")
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
# A step between neighbouring DICOM slices larger than this many times the spacing of the slices
# around it (median of up to _GAP_WINDOW steps on each side; the larger side) is a gap: slices
# are missing, and the series is refused rather than interpolated over. One missing slice doubles
# the step; a change of slice spacing (e.g. 4 mm then 7 mm slices in a head CT) matches one side.
SLICE_GAP_FACTOR = 1.6
_GAP_WINDOW = 3


class ReadError(ValueError):
    """A scan cannot be used; the message names the file and the reason."""


@dataclass
class ScanSource:
    """One case to read: a scan file, or a DICOM series (folder + series UID)."""

    path: Path
    series_uid: str | None = None  # set for DICOM series
    # Set for a DICOM file that GDCM left out of every series of its folder: why (reading raises it).
    problem: str | None = None

    @property
    def is_dicom(self) -> bool:
        return self.series_uid is not None

    @property
    def left_out(self) -> bool:
        return self.problem is not None

    def __str__(self) -> str:
        return f"{self.path} [series {self.series_uid}]" if self.is_dicom else str(self.path)


@dataclass
class Volume:
    array: np.ndarray  # float32, (x, y, z), RAS
    affine: np.ndarray  # 4x4 voxel -> RAS mm
    spacing: tuple[float, float, float]
    meta: dict[str, Any] = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------
# discovery


def scan_suffix(path: Path) -> str | None:
    name = path.name.lower()
    return next((s for s in SCAN_SUFFIXES if name.endswith(s)), None)


def _is_dicom_file(path: Path) -> bool:
    if path.name.lower().endswith(DICOM_SUFFIXES):
        return True
    try:  # extension-less DICOM (common from PACS exports): "DICM" magic at byte 128
        with open(path, "rb") as f:
            f.seek(128)
            return f.read(4) == b"DICM"
    except OSError:
        return False


def _dicom_series(folder: Path) -> list[ScanSource]:
    """One source per series GDCM finds in ``folder``, then one per DICOM file it left out of all
    of them (truncated, unreadable, not an image), carrying the reason as ``problem``."""
    import SimpleITK as sitk

    ids = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder))
    used = {Path(f).name for uid in ids for f in sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), uid)}
    present = sorted(f for f in folder.iterdir() if f.is_file() and not scan_suffix(f) and _is_dicom_file(f))
    left_out = [ScanSource(f, problem=_left_out_reason(f)) for f in present if f.name not in used]
    return [ScanSource(folder, uid) for uid in ids] + left_out


def _left_out_reason(path: Path) -> str:
    """Why GDCM left a DICOM file out of its folder's series, as far as pydicom can tell."""
    import pydicom

    head = "left out of the DICOM series in its folder"
    size = path.stat().st_size
    if size == 0:
        return f"{head}: empty file"
    try:
        ds = pydicom.dcmread(str(path), force=True)
    except Exception as exc:  # pydicom raises many types for garbled files
        return f"{head}: unreadable ({type(exc).__name__}: {exc})"
    if "PixelData" not in ds:
        meta = getattr(ds, "file_meta", None)
        sop = ds.get("SOPClassUID") or (meta.get("MediaStorageSOPClassUID") if meta is not None else None)
        sop_name = getattr(sop, "name", str(sop)) if sop else ""
        if sop_name and "Image" not in sop_name:
            return f"{head}: not an image (no pixel data; {sop_name})"
        return f"{head}: truncated file ({size} bytes, ends before the pixel data)"
    try:
        syntax = ds.file_meta.TransferSyntaxUID
        expected = (int(ds.Rows) * int(ds.Columns) * int(ds.get("SamplesPerPixel", 1))
                    * int(ds.BitsAllocated) // 8 * int(ds.get("NumberOfFrames", 1) or 1))
        got = len(ds.PixelData)
    except Exception:  # incomplete header: no size to compare with
        syntax, expected, got = None, 0, 0
    if syntax is not None and not syntax.is_compressed and got < expected:
        return f"{head}: truncated file ({size} bytes, pixel data {got} of {expected} bytes)"
    return f"{head}: GDCM could not use it (damaged header or pixel data)"


def discover(paths: list[str | Path]) -> list[ScanSource]:
    """Scan files and DICOM series under ``paths`` (searched recursively), in a stable order.

    A folder that directly holds DICOM files yields one source per series in it. A path that
    does not exist raises FileNotFoundError; an explicit file with an unknown suffix raises
    ReadError (inside folders such files are ignored: folders hold READMEs, masks, ...).
    """
    found: list[ScanSource] = []
    for p in map(Path, paths):
        if not p.exists():
            raise FileNotFoundError(f"input {p} does not exist")
        if p.is_file():
            if scan_suffix(p):
                found.append(ScanSource(p))
            elif _is_dicom_file(p):
                found.extend(s for s in _dicom_series(p.parent) if s not in found)
            else:
                raise ReadError(f"{p}: unknown scan format (expected one of {', '.join(SCAN_SUFFIXES)} or DICOM)")
            continue
        for root, dirs, files in os.walk(p):
            dirs.sort()
            root_path = Path(root)
            has_dicom = False
            for name in sorted(files):
                f = root_path / name
                if scan_suffix(f):
                    found.append(ScanSource(f))
                elif not has_dicom and _is_dicom_file(f):
                    has_dicom = True
            if has_dicom:
                found.extend(_dicom_series(root_path))
    return found


# ---------------------------------------------------------------------------------------------
# reading


def _check_shape(path: Any, shape: tuple[int, ...], frames: str) -> tuple[int, ...]:
    """Return the spatial shape, or raise for 2-D / multi-frame inputs."""
    shape = tuple(int(s) for s in shape)
    # Trailing singleton dims (x, y, z, 1) are harmless; drop them.
    while len(shape) > 3 and shape[-1] == 1:
        shape = shape[:-1]
    if len(shape) < 3 or min(shape[:3]) < 2:
        raise ReadError(f"{path}: 2-D image (shape {list(shape)}); ingest needs 3-D volumes")
    if len(shape) > 4:
        raise ReadError(f"{path}: {len(shape)}-D image (shape {list(shape)}) is not supported")
    if len(shape) == 4 and frames != "first":
        raise ReadError(
            f"{path}: 4-D image with {shape[3]} frames (shape {list(shape)}); pass --frames first to take frame 0"
        )
    return shape


def _read_nifti(path: Path, frames: str) -> Volume:
    import nibabel as nib

    try:
        img = nib.load(str(path))
        shape = _check_shape(path, img.shape, frames)
        # dataobj applies scl_slope/inter; slice before reading so 4-D files load one frame only.
        # Frame 0 on the 4th axis and index 0 on any trailing singleton axes ((x, y, z, T, 1) too).
        data = img.dataobj[(slice(None),) * 3 + (0,) * (len(img.shape) - 3)] if len(shape) == 4 else img.dataobj
        array = np.asarray(data, dtype=np.float32).reshape(shape[:3])
    except ReadError:
        raise
    except Exception as exc:  # nibabel raises many types for truncated/garbled files
        raise ReadError(f"{path}: unreadable NIfTI ({type(exc).__name__}: {exc})") from exc
    meta = {"format": "nifti", "reader": "nibabel", "source_dtype": str(img.get_data_dtype())}
    if len(shape) == 4:
        meta["frames"] = {"count": shape[3], "used": 0}
    return Volume(array, img.affine.astype(np.float64), _spacing(img.affine), meta)


def _spacing(affine: np.ndarray) -> tuple[float, float, float]:
    return tuple(float(v) for v in np.linalg.norm(affine[:3, :3], axis=0))


def _sitk_to_volume(img: Any, path: Any, frames: str, meta: dict) -> Volume:
    import SimpleITK as sitk

    if img.GetNumberOfComponentsPerPixel() != 1:
        raise ReadError(f"{path}: vector image with {img.GetNumberOfComponentsPerPixel()} components per voxel")
    size = img.GetSize()
    _check_shape(path, size, frames)
    if img.GetDimension() == 4:  # _check_shape allowed it: a single frame or frames="first"
        meta["frames"] = {"count": size[3], "used": 0}
        img = sitk.Extract(img, [*size[:3], 0], [0, 0, 0, 0])
    array = sitk.GetArrayViewFromImage(img).transpose(2, 1, 0).astype(np.float32)  # (z,y,x) -> (x,y,z)
    direction = np.array(img.GetDirection(), dtype=np.float64).reshape(3, 3)
    affine_lps = np.eye(4)
    affine_lps[:3, :3] = direction * np.array(img.GetSpacing())
    affine_lps[:3, 3] = img.GetOrigin()
    meta.setdefault("source_dtype", img.GetPixelIDTypeAsString())
    return Volume(array, LPS_TO_RAS @ affine_lps, tuple(float(s) for s in img.GetSpacing()), meta)


def _read_itk_file(path: Path, frames: str) -> Volume:
    import SimpleITK as sitk

    try:
        img = sitk.ReadImage(str(path))
    except RuntimeError as exc:
        raise ReadError(f"{path}: unreadable ({str(exc).strip().splitlines()[-1]})") from exc
    fmt = scan_suffix(path).lstrip(".").replace("nhdr", "nrrd").replace("mhd", "mha")
    return _sitk_to_volume(img, path, frames, {"format": fmt, "reader": "SimpleITK"})


def _slice_positions(reader: Any, n: int) -> np.ndarray | None:
    try:
        return np.array([[float(v) for v in reader.GetMetaData(i, "0020|0032").split("\\")] for i in range(n)])
    except (RuntimeError, ValueError):
        return None


def _slice_gaps(steps: np.ndarray) -> dict[int, float]:
    """``{i: local spacing}`` for each step i over SLICE_GAP_FACTOR x the spacing around it.

    The local spacing is the median of up to _GAP_WINDOW steps before i and of those after it,
    whichever is larger (so a change of spacing, which matches one side, is not a gap). Gaps found
    are counted as the slices they stand for and the search repeats, so that gaps close together
    do not hide each other.
    """
    gaps: dict[int, float] = {}
    work = np.asarray(steps, dtype=np.float64).copy()
    while True:
        found = {}
        for i, step in enumerate(work):
            sides = (work[max(0, i - _GAP_WINDOW) : i], work[i + 1 : i + 1 + _GAP_WINDOW])
            local = max((float(np.median(w)) for w in sides if len(w)), default=0.0)
            if i not in gaps and local > 0 and step > SLICE_GAP_FACTOR * local:
                found[i] = local
        if not found:
            return dict(sorted(gaps.items()))
        for i, local in found.items():
            work[i] = steps[i] / max(1.0, round(steps[i] / local))
        gaps.update(found)


def _fix_slice_geometry(vol: Volume, positions: np.ndarray, meta: dict, files: list[str]) -> Volume:
    """Correct gantry tilt (slices shifted in-plane) and uneven slice steps of a DICOM series.

    ITK assumes slice k sits at origin + k * dz * normal. The true positions (0020,0032) may
    step along a direction that is not the slice normal (gantry tilt) and by uneven amounts
    (variable slice spacing). Each slice is shifted back in-plane by its offset along the
    column direction, then the stack is linearly resampled along the normal onto a uniform grid.
    A gap (missing slices: a step over SLICE_GAP_FACTOR x the spacing around it) raises
    ReadError instead: resampling would invent the missing anatomy.
    """
    from scipy import ndimage

    rot = (LPS_TO_RAS[:3, :3] @ vol.affine[:3, :3]) / np.array(vol.spacing)  # LPS unit axis vectors
    r_dir, c_dir, n_dir = rot[:, 0], rot[:, 1], rot[:, 2]
    d = positions - positions[0]
    along_r, along_c, along_n = d @ r_dir, d @ c_dir, d @ n_dir
    steps = np.diff(along_n)
    if np.any(steps <= 0):
        raise ReadError(f"{meta['path']}: DICOM slice positions are not strictly increasing along the normal")
    gaps = _slice_gaps(steps)
    if gaps:
        at = positions @ n_dir  # slice positions along the normal (LPS mm)
        shown = [
            f"between {Path(files[i]).name} and {Path(files[i + 1]).name} ({at[i]:.2f} to {at[i + 1]:.2f} mm "
            f"along the slice normal): {steps[i]:.2f} mm apart, expected about {local:.2f} mm"
            for i, local in list(gaps.items())[:3]
        ]
        more = f"; and {len(gaps) - 3} more" if len(gaps) > 3 else ""
        raise ReadError(
            f"{meta['path']}: gap in the DICOM series (missing slices?) {'; '.join(shown)}{more}; not interpolated "
            f"(a step over {SLICE_GAP_FACTOR}x the spacing of the slices around it is a gap)"
        )
    tilt = np.abs(along_c).max() > 0.01 * vol.spacing[1] or np.abs(along_r).max() > 0.01 * vol.spacing[0]
    uneven = (steps.max() - steps.min()) > 0.01 * np.median(steps)
    if not (tilt or uneven):
        return vol
    array = vol.array
    if tilt:
        meta["gantry_tilt_deg"] = float(np.degrees(np.arctan2(along_c[-1], along_n[-1])))
        shifted = np.empty_like(array)
        for k in range(array.shape[2]):  # shift slice k by (-along_r/sx, -along_c/sy) voxels
            shifts = (along_r[k] / vol.spacing[0], along_c[k] / vol.spacing[1])
            shifted[:, :, k] = ndimage.shift(array[:, :, k], shifts, order=1, mode="nearest")
        array = shifted
    dz = float(np.median(steps))
    n_out = int(round(along_n[-1] / dz)) + 1
    grid = np.arange(n_out) * dz
    if uneven or tilt:
        upper = np.clip(np.searchsorted(along_n, grid, side="right"), 1, len(along_n) - 1)
        lower = upper - 1
        w = np.clip((grid - along_n[lower]) / (along_n[upper] - along_n[lower]), 0.0, 1.0).astype(np.float32)
        array = array[:, :, lower] * (1 - w) + array[:, :, upper] * w
    meta["slice_steps_mm"] = {"min": float(steps.min()), "max": float(steps.max()), "resampled_to": dz}
    affine = vol.affine.copy()
    affine[:3, 2] = (LPS_TO_RAS[:3, :3] @ n_dir) * dz
    return Volume(np.ascontiguousarray(array, dtype=np.float32), affine, (vol.spacing[0], vol.spacing[1], dz), meta)


def _dicom_stored_type(reader: Any) -> str | None:
    """The first file's stored pixel type in SimpleITK's words ("16-bit signed integer") from
    BitsAllocated (0028,0100) and PixelRepresentation (0028,0103); None if either is missing."""
    if not (reader.HasMetaDataKey(0, "0028|0100") and reader.HasMetaDataKey(0, "0028|0103")):
        return None
    bits, rep = reader.GetMetaData(0, "0028|0100").strip(), reader.GetMetaData(0, "0028|0103").strip()
    return f"{bits}-bit {'signed' if rep == '1' else 'unsigned'} integer" if bits.isdigit() else None


def _read_dicom_series(src: ScanSource, frames: str) -> Volume:
    import SimpleITK as sitk

    files = sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(src.path), src.series_uid)
    if not files:
        raise ReadError(f"{src}: DICOM series has no files")
    if len(files) < 2:
        if _frame_count(files[0]) > 1:
            return _read_dicom_multiframe(Path(files[0]), frames)
        raise ReadError(f"{src}: 2-D image (a single DICOM file with one frame); ingest reads DICOM series of 2 or "
                        "more files, or one multi-frame file")
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(files)
    # Without it the whole series gets the pixel type the first file's rescale slope implies: an
    # integer type when that slope is whole (1.0 on an empty end slice of a PET series), which then
    # truncates or wraps every later slice's fractional-slope values (SUV wrong, no error).
    reader.SetOutputPixelType(sitk.sitkFloat32)
    reader.MetaDataDictionaryArrayUpdateOn()
    sitk.ProcessObject_SetGlobalWarningDisplay(False)  # tilt/uneven-gap warnings: handled below
    try:
        img = reader.Execute()
    except RuntimeError as exc:
        raise ReadError(f"{src}: unreadable DICOM series ({str(exc).strip().splitlines()[-1]})") from exc
    finally:
        sitk.ProcessObject_SetGlobalWarningDisplay(True)
    meta = {"format": "dicom", "reader": "SimpleITK", "files": len(files), "path": str(src)}
    meta["dicom_modality"] = reader.GetMetaData(0, "0008|0060").strip() if reader.HasMetaDataKey(0, "0008|0060") else None
    stored = _dicom_stored_type(reader)  # the series is read as float32 (above); record what the files hold
    if stored:
        meta["source_dtype"] = stored
    vol = _sitk_to_volume(img, src, frames, meta)
    positions = _slice_positions(reader, len(files))
    if positions is not None and len(positions) == vol.array.shape[2]:
        vol = _fix_slice_geometry(vol, positions, meta, files)
    vol.meta["first_file"] = files[0]
    return vol


def _frame_count(path: str | Path) -> int:
    """NumberOfFrames (0028,0008) of a DICOM file, 1 when absent or unreadable."""
    import pydicom

    try:
        ds = pydicom.dcmread(str(path), stop_before_pixels=True, specific_tags=["NumberOfFrames"])
        return int(ds.get("NumberOfFrames", 1) or 1)
    except Exception:  # garbled header: the series reader reports it
        return 1


def _frame_positions(ds: Any) -> np.ndarray | None:
    """Each frame's ImagePositionPatient from the per-frame functional groups of an enhanced
    multi-frame file ([F, 3], LPS mm), or None where a frame does not record one."""
    try:
        return np.array([[float(v) for v in g.PlanePositionSequence[0].ImagePositionPatient]
                         for g in ds.PerFrameFunctionalGroupsSequence], dtype=np.float64)
    except (AttributeError, IndexError, KeyError, TypeError, ValueError):
        return None


def _per_frame_rescale(ds: Any) -> set[tuple[float, float]]:
    """The distinct (slope, intercept) pairs of the per-frame functional groups (empty when the
    file has one rescale for all frames, in its shared group or at the top level)."""
    pairs = set()
    for g in getattr(ds, "PerFrameFunctionalGroupsSequence", []):
        if "PixelValueTransformationSequence" in g:
            t = g.PixelValueTransformationSequence[0]
            pairs.add((float(t.get("RescaleSlope", 1.0)), float(t.get("RescaleIntercept", 0.0))))
    return pairs


def _read_dicom_multiframe(path: Path, frames: str) -> Volume:
    """One DICOM file holding a whole volume (enhanced CT/MR/PET, legacy-converted enhanced): GDCM
    reads the pixels and the frame orientation; the slice step comes from the per-frame positions,
    which GDCM does not use (it reported 1 mm for a 4.2 mm CT), and then gets the same tilt, uneven
    step and gap handling as a series of files."""
    import pydicom
    import SimpleITK as sitk

    ds = pydicom.dcmread(str(path), stop_before_pixels=True)
    if len(_per_frame_rescale(ds)) > 1:
        # GDCM applies one rescale to every frame; per-frame values would come out wrong, silently.
        raise ReadError(f"{path}: multi-frame DICOM whose frames carry different rescale slopes/intercepts "
                        f"({len(_per_frame_rescale(ds))} distinct pairs); not supported: convert it to a series of "
                        "files or to NIfTI (e.g. dcm2niix)")
    positions = _frame_positions(ds)
    if positions is None:
        # Without a position per frame the frames may not be slices at all (a cine loop, an
        # angiography run, NM projections), and a volume's slice step cannot be checked: refused.
        raise ReadError(f"{path}: multi-frame DICOM ({int(ds.NumberOfFrames)} frames) without a position per frame "
                        "(PerFrameFunctionalGroupsSequence / PlanePositionSequence): its frames cannot be placed as "
                        "the slices of a volume (a cine loop or projections?); convert it to NIfTI if it is one")
    stacks = len(positions) - len(np.unique(np.round(positions, 3), axis=0))
    if stacks:
        raise ReadError(f"{path}: multi-frame DICOM with {stacks} of its {len(positions)} frames at a position "
                        "another frame already has: several stacks in one file (time points, echoes, b-values?); "
                        "ingest reads one 3-D stack per file")
    sitk.ProcessObject_SetGlobalWarningDisplay(False)
    try:
        img = sitk.ReadImage(str(path), sitk.sitkFloat32)  # float: the rescaled values may be fractional
    except RuntimeError as exc:
        raise ReadError(f"{path}: unreadable multi-frame DICOM ({str(exc).strip().splitlines()[-1]})") from exc
    finally:
        sitk.ProcessObject_SetGlobalWarningDisplay(True)
    meta = {"format": "dicom", "reader": "SimpleITK", "files": 1, "frames_in_file": int(ds.NumberOfFrames),
            "path": str(path), "dicom_modality": str(ds.get("Modality", "")).strip() or None}
    bits, rep = ds.get("BitsAllocated"), ds.get("PixelRepresentation")
    if bits is not None and rep is not None:
        meta["source_dtype"] = f"{int(bits)}-bit {'signed' if int(rep) == 1 else 'unsigned'} integer"
    vol = _sitk_to_volume(img, path, frames, meta)
    if len(positions) != vol.array.shape[2]:
        raise ReadError(f"{path}: multi-frame DICOM with {len(positions)} frame positions but {vol.array.shape[2]} "
                        "slices as read")
    vol = _fix_slice_geometry(_with_frame_geometry(vol, ds, path, positions), positions, meta,
                              [f"frame {i + 1}" for i in range(len(positions))])
    vol.meta["first_file"] = str(path)
    return vol


def _frame_pixel_spacing(ds: Any, path: Path) -> tuple[float, float] | None:
    """(x, y) pixel spacing in mm from the shared functional group, else from the per-frame groups
    (which must agree); None where neither records it. GDCM reads only the shared group's: a
    legacy-converted CT with the spacing per frame came out at 1 mm instead of 0.49 mm."""
    groups = list(getattr(ds, "SharedFunctionalGroupsSequence", []))
    shared = [g.PixelMeasuresSequence[0].PixelSpacing for g in groups
              if "PixelMeasuresSequence" in g and "PixelSpacing" in g.PixelMeasuresSequence[0]]
    found = shared or [g.PixelMeasuresSequence[0].PixelSpacing for g in getattr(ds, "PerFrameFunctionalGroupsSequence", [])
                       if "PixelMeasuresSequence" in g and "PixelSpacing" in g.PixelMeasuresSequence[0]]
    if not found:
        return None
    pairs = {(round(float(row), 6), round(float(col), 6)) for row, col in found}
    if len(pairs) > 1:
        raise ReadError(f"{path}: multi-frame DICOM whose frames have different pixel spacings {sorted(pairs)[:3]}")
    row, col = (float(v) for v in found[0])  # DICOM PixelSpacing: [between rows (y), between columns (x)]
    return col, row


def _frame_orientation(ds: Any) -> np.ndarray | None:
    """The (row, column) direction cosines [2, 3] (LPS) shared by every frame, from the shared or
    the first per-frame PlaneOrientationSequence, or the top level; None where none records it."""
    groups = [*getattr(ds, "SharedFunctionalGroupsSequence", [])[:1], *getattr(ds, "PerFrameFunctionalGroupsSequence", [])[:1]]
    for g in groups:
        if "PlaneOrientationSequence" in g:
            return np.reshape([float(v) for v in g.PlaneOrientationSequence[0].ImageOrientationPatient], (2, 3))
    return np.reshape([float(v) for v in ds.ImageOrientationPatient], (2, 3)) if "ImageOrientationPatient" in ds else None


def _with_frame_geometry(vol: Volume, ds: Any, path: Path, positions: np.ndarray) -> Volume:
    """``vol`` (pixels in frame order) with its geometry rebuilt from the file's own tags: the frame
    orientation, pixel spacing and positions (the slice axis runs from frame 1 toward the last
    frame, the step being the median between frame positions). GDCM's geometry is not used: it
    read a legacy-converted CT's 0.49 mm pixels as 1 mm, and fell back to 1 mm everywhere once the
    frame steps were uneven."""
    orientation = _frame_orientation(ds)
    if orientation is None:
        return vol
    r_dir, c_dir = orientation
    normal = np.cross(r_dir, c_dir)
    along = (positions - positions[0]) @ normal
    if np.median(np.diff(along)) < 0:  # frames stored from head to feet (or right to left...)
        normal = -normal
    dz = float(np.median(np.abs(np.diff(along))))
    sx, sy = _frame_pixel_spacing(ds, path) or vol.spacing[:2]
    affine_lps = np.eye(4)
    affine_lps[:3, :3] = np.column_stack([r_dir * sx, c_dir * sy, normal * (dz if dz > 0 else vol.spacing[2])])
    affine_lps[:3, 3] = positions[0]
    return Volume(vol.array, LPS_TO_RAS @ affine_lps, (float(sx), float(sy), float(np.linalg.norm(affine_lps[:3, 2]))),
                  vol.meta)


def read_volume(src: ScanSource | str | Path, frames: str = "error") -> Volume:
    """Read one scan and reorient it to RAS. ``frames``: "error" (4-D input raises) or "first"."""
    if not isinstance(src, ScanSource):
        src = ScanSource(Path(src))
    if frames not in ("error", "first"):
        raise ValueError(f"frames must be 'error' or 'first', got {frames!r}")
    if src.left_out:
        raise ReadError(f"{src.path}: {src.problem}")
    if src.is_dicom:
        vol = _read_dicom_series(src, frames)
    else:
        if not src.path.is_file():
            raise ReadError(f"{src.path}: not a file")
        if src.path.stat().st_size == 0:
            raise ReadError(f"{src.path}: empty file")
        suffix = scan_suffix(src.path)
        if suffix in (".nii", ".nii.gz"):
            vol = _read_nifti(src.path, frames)
        elif suffix:
            vol = _read_itk_file(src.path, frames)
        else:
            raise ReadError(f"{src.path}: unknown scan format")
    return _finish(vol, str(src))


def _finish(vol: Volume, name: str) -> Volume:
    """The source's shape, orientation and spacing recorded in ``meta``, then the array in RAS."""
    import nibabel as nib

    if vol.array.size == 0:
        raise ReadError(f"{name}: image has no voxels")
    vol.meta["path"] = name
    vol.meta["source_shape"] = list(vol.array.shape)
    vol.meta["source_orientation"] = "".join(nib.aff2axcodes(vol.affine))
    vol.meta["source_spacing"] = list(vol.spacing)
    return to_ras(vol)


def is_dicom_path(path: str | Path) -> bool:
    """A folder (read as a DICOM series folder) or a DICOM file: what ``read_dicom_path`` takes."""
    path = Path(path)
    return path.is_dir() or (path.is_file() and not scan_suffix(path) and _is_dicom_file(path))


def read_dicom_path(path: str | Path, frames: str = "error") -> Volume:
    """One DICOM volume named by one path, for tools that take an image per path (``eval``): a
    folder that holds exactly one DICOM series, or one multi-frame DICOM file. Read as ingest reads
    it (tilt, uneven steps, gaps, multi-frame geometry, SUV headers in ``meta``), in RAS."""
    path = Path(path)
    if path.is_dir():
        if not any(f.is_file() and not scan_suffix(f) and _is_dicom_file(f) for f in path.iterdir()):
            raise ReadError(f"{path}: a folder without DICOM files; an image path is a scan file, a DICOM series "
                            "folder or a multi-frame DICOM file")
        sources = _dicom_series(path)
        series = [s for s in sources if not s.left_out]
        left_out = [s for s in sources if s.left_out]
        for s in left_out:  # counted and logged: the series is read without them
            log.warning("%s: %s", s.path, s.problem)
        if not series:
            why = f" ({len(left_out)} DICOM file(s), none usable: {left_out[0].problem})" if left_out else ""
            raise ReadError(f"{path}: folder holds no DICOM series{why}; an image path is a scan file, a DICOM "
                            "series folder or a multi-frame DICOM file")
        if len(series) > 1:
            raise ReadError(f"{path}: folder holds {len(series)} DICOM series (UIDs {', '.join(str(s.series_uid) for s in series)}); "
                            "give each series its own folder")
        return read_volume(series[0], frames)
    if not path.is_file():
        raise ReadError(f"{path}: does not exist")
    import pydicom

    try:
        frames_in_file = int(pydicom.dcmread(str(path), stop_before_pixels=True).get("NumberOfFrames", 1) or 1)
    except Exception as exc:  # pydicom raises many types for garbled files
        raise ReadError(f"{path}: unreadable DICOM file ({type(exc).__name__}: {exc})") from exc
    if frames_in_file < 2:
        raise ReadError(f"{path}: a single-frame DICOM file is one 2-D slice; give the folder of its series "
                        f"({path.parent}) instead")
    return _finish(_read_dicom_multiframe(path, frames), str(path))


def to_ras(vol: Volume) -> Volume:
    """Flip/permute axes so the array is in nibabel's RAS+ canonical orientation (no resampling)."""
    import nibabel.orientations as nio

    ornt = nio.io_orientation(vol.affine)
    if np.array_equal(ornt, [[0, 1], [1, 1], [2, 1]]):
        return vol
    array = nio.apply_orientation(vol.array, ornt)
    affine = vol.affine @ nio.inv_ornt_aff(ornt, vol.array.shape)
    return Volume(np.ascontiguousarray(array), affine, _spacing(affine), vol.meta)


def dicom_header(path: str | Path) -> Any:
    """pydicom dataset of one file, without pixel data (for SUV fields). In a multi-frame file the
    attributes a legacy conversion moved into the shared group's "unassigned converted attributes"
    (highdicom's legacy-converted PET keeps Units, DecayCorrection and the radiopharmaceutical
    there) are lifted to the top level where it has none of its own."""
    import pydicom

    ds = pydicom.dcmread(str(path), stop_before_pixels=True)
    for group in getattr(ds, "SharedFunctionalGroupsSequence", [])[:1]:
        for item in getattr(group, "UnassignedSharedConvertedAttributesSequence", [])[:1]:
            for elem in item:
                if elem.tag not in ds:
                    ds[elem.tag] = elem
    return ds
