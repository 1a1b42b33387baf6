"""DICOM SEG labels (eval segment): a SEG written by highdicom on the real MR series is read as a
label map (voxel value = segment number) and placed on its image's grid, whether the image is the
series folder or a NIfTI of it; frames the SEG leaves out are background. A SEG of another frame of
reference, overlapping segments or a FRACTIONAL SEG are refused with the reason."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest

from mixpretrain.data.readers import read_dicom_path
from mixpretrain.eval.common import load_volumes, read_image
from mixpretrain.eval.labels import (
    SegFrames,
    is_dicom_seg,
    place_frames,
    place_label,
    read_dicom_seg,
    seg_frames,
    source_planes,
)

MR_SERIES = "mri/niivue_VS-SEG-001_T1Gd_dicom"  # axial, 512 x 512 x 120 at 0.41 x 0.41 x 1.5 mm
CT_SERIES = "ct/dcmqa_ct_GE_head_tilt_dicom"
SIZE = (16, 16, 16)
SLABS = {1: (-60.0, -20.0), 2: (-40.0, -30.0)}  # z (mm) ranges each segment is drawn in


def _z(ds: pydicom.Dataset) -> float:
    return float(ds.ImagePositionPatient[2])


def _segment_masks(frames: np.ndarray, z: np.ndarray, thresholds: tuple[float, float]) -> dict[int, np.ndarray]:
    """Segment 1: bright voxels (> the upper threshold) in its slab; segment 2: the band between
    the thresholds in its slab. Disjoint, and defined by intensity and z only, so the same rule
    gives the expected map on any grid of the same voxels."""
    lo, hi = thresholds
    in_slab = {k: ((z >= a) & (z < b)).reshape(-1, *([1] * (frames.ndim - 1))) for k, (a, b) in SLABS.items()}
    return {1: (frames > hi) & in_slab[1], 2: (frames > lo) & (frames <= hi) & in_slab[2]}


@pytest.fixture(scope="module")
def mr_sources(real_data_dir: Path) -> list[pydicom.Dataset]:
    return sorted((pydicom.dcmread(str(f)) for f in (real_data_dir / MR_SERIES).iterdir()), key=_z)


@pytest.fixture(scope="module")
def thresholds(mr_sources) -> tuple[float, float]:
    values = np.stack([d.pixel_array for d in mr_sources]).astype(np.float32)
    return float(np.percentile(values, 95)), float(np.percentile(values, 99))


def _write_seg(sources: list[pydicom.Dataset], masks: dict[int, np.ndarray], out: Path, omit_empty: bool = True,
               seg_type: str = "BINARY") -> Path:
    import highdicom as hd
    from pydicom.sr.codedict import codes

    names = {1: "bright", 2: "band"}
    descriptions = [hd.seg.SegmentDescription(
        segment_number=k, segment_label=names[k], segmented_property_category=codes.SCT.Tissue,
        segmented_property_type=codes.SCT.Tissue, algorithm_type=hd.seg.SegmentAlgorithmTypeValues.MANUAL)
        for k in sorted(masks)]
    pixels = np.stack([masks[k] for k in sorted(masks)], axis=-1).astype(np.uint8)
    kwargs = {"max_fractional_value": 1} if seg_type == "FRACTIONAL" else {}
    seg = hd.seg.Segmentation(
        source_images=sources, pixel_array=pixels, segmentation_type=getattr(hd.seg.SegmentationTypeValues, seg_type),
        segment_descriptions=descriptions, series_instance_uid=hd.UID(), series_number=100, sop_instance_uid=hd.UID(),
        instance_number=1, manufacturer="mixpretrain tests", manufacturer_model_name="tests", software_versions="0",
        device_serial_number="0", omit_empty_frames=omit_empty, **kwargs)
    seg.save_as(str(out))
    return out


def _expected_on(vol_array: np.ndarray, affine: np.ndarray, thresholds: tuple[float, float]) -> np.ndarray:
    """The segment rule applied to a RAS volume: its voxels' z from the affine (RAS z = LPS z)."""
    z = affine[2, 2] * np.arange(vol_array.shape[2]) + affine[2, 3]
    masks = _segment_masks(np.moveaxis(vol_array, 2, 0), z, thresholds)
    out = np.zeros(vol_array.shape, np.uint8)
    for k, m in masks.items():
        out[np.moveaxis(m, 0, 2)] = k
    return out


@pytest.fixture(scope="module")
def sparse_seg(mr_sources, thresholds, tmp_path_factory: pytest.TempPathFactory) -> Path:
    frames = np.stack([d.pixel_array for d in mr_sources]).astype(np.float32)
    masks = _segment_masks(frames, np.array([_z(d) for d in mr_sources]), thresholds)
    return _write_seg(mr_sources, masks, tmp_path_factory.mktemp("seg") / "sparse.dcm")


def test_sparse_seg_lands_on_the_series_voxels(real_data_dir: Path, sparse_seg: Path, thresholds) -> None:
    folder = real_data_dir / MR_SERIES
    assert is_dicom_seg(sparse_seg) and not is_dicom_seg(next(folder.iterdir()))
    label, info = read_dicom_seg(sparse_seg)
    assert info["segments"] == {1: "bright", 2: "band"}
    assert label.shape[1:] != (512, 512, 120)  # only the frames that hold a segment
    image, meta = read_image(folder, None)
    placed, report = place_label(image, label, folder, sparse_seg, resample=False, seg_info=info, image_meta=meta)
    vol = read_dicom_path(folder)
    expected = _expected_on(vol.array, vol.affine, thresholds)
    assert (expected == 1).sum() > 1000 and (expected == 2).sum() > 1000
    np.testing.assert_array_equal(placed.as_tensor()[0].numpy().astype(np.uint8), expected)
    assert report["was"].startswith("DICOM SEG, shape (512, 512, 120) vs")
    assert report["volume_kept"] == {1: 1.0, 2: 1.0} and report["segments"] == {1: "bright", 2: "band"}
    (item,) = load_volumes([{"image": str(folder), "label": str(sparse_seg)}], SIZE, with_label=True, classes=3)
    assert item["label"].shape == (1, *SIZE) and set(item["label"].unique().tolist()) == {0, 1, 2}


def test_full_seg_matches_without_a_resample_and_a_nifti_image_takes_it(
        real_data_dir: Path, mr_sources, thresholds, tmp_path: Path) -> None:
    folder = real_data_dir / MR_SERIES
    frames = np.stack([d.pixel_array for d in mr_sources]).astype(np.float32)
    masks = _segment_masks(frames, np.array([_z(d) for d in mr_sources]), thresholds)
    full = _write_seg(mr_sources, masks, tmp_path / "full.dcm", omit_empty=False)
    label, info = read_dicom_seg(full)
    image, meta = read_image(folder, None)
    placed, report = place_label(image, label, folder, full, resample=False, seg_info=info, image_meta=meta)
    assert report is None  # every frame stored: already the image's grid
    vol = read_dicom_path(folder)
    np.testing.assert_array_equal(placed.as_tensor()[0].numpy().astype(np.uint8),
                                  _expected_on(vol.array, vol.affine, thresholds))
    # the same series saved as NIfTI: no frame of reference to compare, placed by geometry alone
    nifti = tmp_path / "mr.nii.gz"
    nib.save(nib.Nifti1Image(vol.array, vol.affine), str(nifti))
    from monai import transforms as mt

    nimage = mt.Compose([mt.LoadImage(image_only=True, ensure_channel_first=True), mt.Orientation(axcodes="RAS")])(str(nifti))
    placed, _ = place_label(nimage, label, nifti, full, resample=False, seg_info=info, image_meta=None)
    np.testing.assert_array_equal(placed.as_tensor()[0].numpy().astype(np.uint8),
                                  _expected_on(vol.array, vol.affine, thresholds))


def test_seg_of_another_frame_of_reference_is_refused(real_data_dir: Path, sparse_seg: Path) -> None:
    with pytest.raises(ValueError, match=r"sparse.dcm: DICOM SEG of frame of reference .*, but its image "
                                         r".*dcmqa_ct_GE_head_tilt_dicom is in .*: the DICOM SEG was not drawn on this image"):
        load_volumes([{"image": str(real_data_dir / CT_SERIES), "label": str(sparse_seg)}], SIZE, with_label=True,
                     classes=3)


def test_seg_segment_numbers_are_the_classes(real_data_dir: Path, sparse_seg: Path) -> None:
    with pytest.raises(ValueError, match=r"sparse.dcm: .* voxel\(s\) hold value\(s\) 2 outside the allowed"):
        load_volumes([{"image": str(real_data_dir / MR_SERIES), "label": str(sparse_seg)}], SIZE, with_label=True,
                     classes=2)


def test_overlapping_and_fractional_segs_are_refused(mr_sources, thresholds, tmp_path: Path) -> None:
    sources = mr_sources[40:60]
    frames = np.stack([d.pixel_array for d in sources]).astype(np.float32)
    bright = frames > thresholds[1]
    overlap = _write_seg(sources, {1: bright, 2: bright}, tmp_path / "overlap.dcm")
    with pytest.raises(ValueError, match=r"overlap.dcm: DICOM SEG cannot be read as a label map: segments overlap"):
        read_dicom_seg(overlap)
    fractional = _write_seg(sources, {1: bright}, tmp_path / "fractional.dcm", seg_type="FRACTIONAL")
    with pytest.raises(ValueError, match=r"fractional.dcm: a FRACTIONAL DICOM SEG holds per-voxel fractions"):
        read_dicom_seg(fractional)


def test_frame_placement_matches_highdicoms_volume(real_data_dir: Path, sparse_seg: Path, thresholds) -> None:
    """The frame-by-frame placement (used where the frames are not one regular volume) gives, on the
    regular MR series, exactly what highdicom's volume + the affine resample give."""
    import highdicom as hd

    folder = real_data_dir / MR_SERIES
    frames = seg_frames(hd.seg.segread(str(sparse_seg)), sparse_seg)
    image, meta = read_image(folder, None)
    placed = place_frames(frames, image, source_planes(meta, np.cross(frames.row_dir, frames.col_dir), sparse_seg))
    vol = read_dicom_path(folder)
    np.testing.assert_array_equal(placed.as_tensor()[0].numpy(), _expected_on(vol.array, vol.affine, thresholds))


def test_seg_of_a_tilted_series_is_placed_frame_by_frame(real_data_dir: Path, tmp_path: Path) -> None:
    """The real CT series has an 18.5 degree gantry tilt and 4 / 7 mm steps: its SEG's frames are
    not one regular volume (highdicom refuses it as a volume), so they are placed by the series'
    slice positions onto the reader's tilt-corrected grid."""
    folder = real_data_dir / CT_SERIES
    sources = sorted((pydicom.dcmread(str(f)) for f in folder.iterdir()), key=_z)
    for ds in sources:  # anonymised headers: highdicom copies these patient attributes
        ds.PatientBirthDate, ds.PatientSex = ds.get("PatientBirthDate", ""), ds.get("PatientSex", "")
    hu = np.stack([d.pixel_array * float(d.RescaleSlope) + float(d.RescaleIntercept) for d in sources])
    seg = _write_seg(sources, {1: hu > 300}, tmp_path / "bone.dcm")  # bone
    assert isinstance(read_dicom_seg(seg)[0], SegFrames)
    (item,) = load_volumes([{"image": str(folder), "label": str(seg)}], SIZE, with_label=True, classes=2)
    report = item["label_resampled"]
    assert report["was"] == "DICOM SEG, frames placed by position (not one regular volume)"
    assert report["volume_kept"][1] == pytest.approx(1.0, abs=0.01)
    image, meta = read_image(folder, None)
    placed, _ = place_label(image, read_dicom_seg(seg)[0], folder, seg, resample=False,
                            seg_info=read_dicom_seg(seg)[1], image_meta=meta)
    truth = read_dicom_path(folder).array > 300  # thresholded after the reader's interpolation across the tilt
    got = placed.as_tensor()[0].numpy() > 0
    assert 2.0 * (got & truth).sum() / (got.sum() + truth.sum()) > 0.9
    nifti = tmp_path / "ct.nii.gz"  # the corrected volume as NIfTI: the series' slice positions are gone
    vol = read_dicom_path(folder)
    nib.save(nib.Nifti1Image(vol.array, vol.affine), str(nifti))
    with pytest.raises(ValueError, match=r"bone.dcm: its frames do not form one regular volume .* its image must be "
                                         r"that series' folder"):
        load_volumes([{"image": str(nifti), "label": str(seg)}], SIZE, with_label=True, classes=2)
