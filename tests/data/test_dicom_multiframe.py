"""Single-file multi-frame DICOM volumes (enhanced CT/MR/PET): made from the real series by
highdicom's legacy conversion, they read to the same array and geometry as the series of files
they came from; files that cannot be read correctly are refused with the reason."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest

from mixpretrain.data.readers import ReadError, discover, read_volume

CT_SERIES = "ct/dcmqa_ct_GE_head_tilt_dicom"  # 28 slices: gantry tilt, uneven steps; pixel spacing per frame once converted
MR_SERIES = "mri/niivue_VS-SEG-001_T1Gd_dicom"  # 120 slices, regular


@pytest.fixture(scope="module")
def converted(real_data_dir, tmp_path_factory, multiframe_from) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("multiframe")
    return {"CT": multiframe_from(real_data_dir / CT_SERIES, root / "ct", "CT"),
            "MR": multiframe_from(real_data_dir / MR_SERIES, root / "mr", "MR")}


@pytest.mark.parametrize(("modality", "series"), [("MR", MR_SERIES), ("CT", CT_SERIES)])
def test_multiframe_reads_as_its_series(converted, real_data_dir, modality, series):
    (src,) = discover([converted[modality].parent])
    frames = read_volume(src)
    files = read_volume(discover([real_data_dir / series])[0])
    assert frames.array.shape == files.array.shape
    # Equal to float rounding: the tilted CT is resampled from geometry computed in another order
    # (0.01 HU at most, on values of -1500..2100).
    np.testing.assert_allclose(frames.array, files.array, atol=0.05)
    np.testing.assert_allclose(frames.affine, files.affine, atol=1e-4)  # mm
    assert frames.spacing == pytest.approx(files.spacing)
    assert frames.meta["files"] == 1 and frames.meta["frames_in_file"] > 1
    assert frames.meta["dicom_modality"] == modality
    # The tilted CT: its pixel spacing is recorded per frame (GDCM alone read 1 mm), its tilt and
    # uneven steps are corrected as for the series.
    assert frames.meta.get("gantry_tilt_deg", 0.0) == pytest.approx(files.meta.get("gantry_tilt_deg", 0.0), abs=1e-4)
    assert (frames.meta.get("slice_steps_mm") or {}) == pytest.approx(files.meta.get("slice_steps_mm") or {}, abs=1e-4)


def _edited(path: Path, out: Path, edit) -> Path:
    import pydicom

    ds = pydicom.dcmread(path)
    edit(ds)
    out.mkdir()
    ds.save_as(out / "volume.dcm")
    return out


def test_per_frame_rescale_is_refused(converted, tmp_path):
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    def per_frame_slopes(ds):
        for i, g in enumerate(ds.PerFrameFunctionalGroupsSequence):
            t = Dataset()
            t.RescaleSlope, t.RescaleIntercept, t.RescaleType = 1.0 + 0.1 * (i % 2), -1024.0, "HU"
            g.PixelValueTransformationSequence = Sequence([t])
        del ds.SharedFunctionalGroupsSequence[0].PixelValueTransformationSequence

    (src,) = discover([_edited(converted["CT"], tmp_path / "pet", per_frame_slopes)])
    with pytest.raises(ReadError, match=r"volume.*different rescale slopes/intercepts \(2 distinct pairs\)"):
        read_volume(src)


def test_several_stacks_in_one_file_are_refused(converted, tmp_path):
    def repeat_positions(ds):  # frames 61-120 at the positions of frames 1-60: two stacks
        groups = ds.PerFrameFunctionalGroupsSequence
        for i in range(60, 120):
            groups[i].PlanePositionSequence[0].ImagePositionPatient = list(
                groups[i - 60].PlanePositionSequence[0].ImagePositionPatient)

    (src,) = discover([_edited(converted["MR"], tmp_path / "dyn", repeat_positions)])
    with pytest.raises(ReadError, match="60 of its 120 frames at a position another frame already has"):
        read_volume(src)


def test_missing_frames_are_a_gap(converted, tmp_path):
    """A frame position 3 slices further on than its neighbours' step: refused as a gap, named by frame."""
    def gap(ds):
        groups = ds.PerFrameFunctionalGroupsSequence
        normal = np.cross(*np.reshape([float(v) for v in ds.SharedFunctionalGroupsSequence[0]
                                       .PlaneOrientationSequence[0].ImageOrientationPatient], (2, 3)))
        step = np.subtract(*[np.array(groups[i].PlanePositionSequence[0].ImagePositionPatient, float) for i in (1, 0)])
        assert abs(abs(step @ normal) - 1.5) < 1e-3
        for i in range(80, 120):  # frames 81-120 move on by 3 more slices
            p = np.array(groups[i].PlanePositionSequence[0].ImagePositionPatient, float) + 3 * step
            groups[i].PlanePositionSequence[0].ImagePositionPatient = [f"{v:.6f}" for v in p]

    (src,) = discover([_edited(converted["MR"], tmp_path / "gap", gap)])
    with pytest.raises(ReadError, match="gap in the DICOM series.*between frame 80 and frame 81"):
        read_volume(src)


def test_legacy_converted_pet_gets_suv_from_its_converted_attributes(real_data_dir, tmp_path):
    """highdicom's legacy-converted PET keeps Units, DecayCorrection and the radiopharmaceutical in
    the shared group's unassigned converted attributes: SUV still comes from them, as for the series
    of files (three real CT slices re-labelled PT, with dose/weight/timing headers)."""
    import math

    import pydicom
    from highdicom.legacy import LegacyConvertedEnhancedPETImage
    from pydicom.dataset import Dataset
    from pydicom.uid import generate_uid

    from mixpretrain.data.preprocess import PreprocessSettings, preprocess

    slices = []
    for i in (1, 2, 3):
        ds = pydicom.dcmread(real_data_dir / CT_SERIES / f"{i:02d}.dcm")
        ds.Modality, ds.SOPClassUID = "PT", "1.2.840.10008.5.1.4.1.1.128"  # PET Image Storage
        ds.Units, ds.PatientWeight, ds.DecayCorrection, ds.SeriesTime = "BQML", 70.0, "START", "101500.000000"
        info = Dataset()
        info.RadionuclideTotalDose, info.RadionuclideHalfLife, info.RadiopharmaceuticalStartTime = 370e6, 6586.2, "091500.00"
        ds.RadiopharmaceuticalInformationSequence = [info]
        slices.append(ds)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mf = LegacyConvertedEnhancedPETImage(slices, series_instance_uid=generate_uid(), series_number=9,
                                             sop_instance_uid=generate_uid(), instance_number=1)
    assert "Units" not in mf  # moved into the converted attributes
    (tmp_path / "pet").mkdir()
    mf.save_as(tmp_path / "pet" / "volume.dcm")
    vol = read_volume(discover([tmp_path / "pet"])[0])
    assert vol.meta["dicom_modality"] == "PT" and vol.meta["frames_in_file"] == 3
    vol.array = np.clip(vol.array, 0, None)  # HU standing in for activity: keep it non-negative
    _, meta = preprocess(vol, PreprocessSettings("pet", spacing=(4.0, 4.0, 4.0)))
    decayed = 370e6 * math.exp(-math.log(2) * 3600 / 6586.2)
    assert meta["intensity"]["method"] == "suv_bw"
    assert meta["intensity"]["suv_factor"] == pytest.approx(70_000 / decayed)


def test_frames_without_positions_are_refused(converted, tmp_path):
    """Frames that record no position may not be slices at all (a cine loop, projections)."""
    def drop_positions(ds):
        for g in ds.PerFrameFunctionalGroupsSequence:
            del g.PlanePositionSequence

    (src,) = discover([_edited(converted["MR"], tmp_path / "cine", drop_positions)])
    with pytest.raises(ReadError, match=r"volume.dcm: multi-frame DICOM \(120 frames\) without a position per frame"):
        read_volume(src)
