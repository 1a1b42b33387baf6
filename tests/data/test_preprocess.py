"""Per-modality preprocessing: crop, intensity, resampling geometry, SUV, bad volumes."""

from __future__ import annotations

import math

import numpy as np
import pytest
from pydicom.dataset import Dataset

from mixpretrain.data.preprocess import PreprocessError, PreprocessSettings, preprocess, resample, suv_factor
from mixpretrain.data.readers import Volume, discover, read_volume


def _phantom(background: float, body: float, shape=(40, 36, 30), spacing=(1.0, 1.0, 1.0), noise=0.0) -> Volume:
    rng = np.random.default_rng(0)
    a = np.full(shape, background, np.float32)
    a[10:30, 8:28, 5:25] = body + noise * rng.standard_normal((20, 20, 20))
    affine = np.diag([*spacing, 1.0])
    return Volume(a, affine, spacing, {"path": "phantom", "format": "nifti"})


def _world_centre(array_shape, affine) -> np.ndarray:
    return (affine @ np.append((np.array(array_shape) - 1) / 2.0, 1.0))[:3]


def test_ct_window_crop_and_resample():
    vol = _phantom(-1000.0, 40.0, spacing=(0.75, 0.75, 2.0))
    vol.array[15, 15, 10] = 3000.0  # metal: clipped by the window
    out, meta = preprocess(vol, PreprocessSettings("ct", spacing=(1.5, 1.5, 1.5)))
    assert meta["intensity"]["method"] == "ct_window" and meta["orientation"] == "RAS"
    assert out.min() >= 0.0 and out.max() <= 1.0
    assert meta["crop_box"] == [[8, 32], [6, 30], [3, 27]]  # body box + 2 voxel margin
    # 24 x 24 x 24 voxels at (0.75, 0.75, 2.0) -> (12, 12, 32) at 1.5 mm
    assert out.shape == (12, 12, 32)
    np.testing.assert_allclose(meta["spacing"], [1.5, 1.5, 1.5])
    # Resampling keeps the world position of the volume's centre.
    box_affine = vol.affine.copy()
    box_affine[:3, 3] = vol.affine[:3, :3] @ [8, 6, 3]
    np.testing.assert_allclose(_world_centre(out.shape, np.array(meta["affine"])),
                               _world_centre((24, 24, 24), box_affine), atol=1e-4)
    # Water body -> (40 + 1000) / 2000 in the middle of the crop.
    assert out[6, 6, 16] == pytest.approx(0.52, abs=0.01)


def test_mri_percentile_clip_then_zscore():
    vol = _phantom(0.0, 300.0, noise=40.0)
    out, meta = preprocess(vol, PreprocessSettings("mri", spacing=(1.0, 1.0, 1.0)))
    info = meta["intensity"]
    assert info["method"] == "mri_percentile_zscore" and info["percentiles"] == [0.5, 99.5]
    lo, hi = info["clip"]
    assert 150 < lo < 250 and 350 < hi < 450
    body = out[4:-4, 4:-4, 4:-4]
    assert abs(float(body.mean())) < 0.1 and 0.9 < float(body.std()) < 1.1
    assert out.max() <= (hi - info["mean"]) / info["std"] + 1e-5


def test_pet_without_dicom_headers_uses_percentile_and_says_so():
    vol = _phantom(0.0, 5.0, noise=1.0)
    out, meta = preprocess(vol, PreprocessSettings("pet", spacing=(1.0, 1.0, 1.0)))
    info = meta["intensity"]
    assert info["method"] == "pet_percentile" and "no DICOM" in info["suv_unavailable"]
    assert out.min() >= 0.0 and 0.5 < np.percentile(out[out > 0.05], 50) < 1.0


def _pet_header(**over) -> Dataset:
    ds = Dataset()
    ds.Units = "BQML"
    ds.PatientWeight = 70.0
    ds.DecayCorrection = "START"
    ds.SeriesTime = "101500.000000"
    info = Dataset()
    info.RadionuclideTotalDose = 370e6
    info.RadionuclideHalfLife = 6586.2
    info.RadiopharmaceuticalStartTime = "091500.00"
    ds.RadiopharmaceuticalInformationSequence = [info]
    for k, v in over.items():
        setattr(ds, k, v)
    return ds


def test_suv_factor_from_headers():
    factor, why = suv_factor(_pet_header())
    decayed = 370e6 * math.exp(-math.log(2) * 3600 / 6586.2)
    assert why == "" and factor == pytest.approx(70_000 / decayed)
    assert suv_factor(_pet_header(DecayCorrection="ADMIN"))[0] == pytest.approx(70_000 / 370e6)
    assert suv_factor(_pet_header(Units="GML")) == (1.0, "")
    assert suv_factor(_pet_header(PatientWeight=0))[1] == "no PatientWeight"
    assert "Units CNTS" in suv_factor(_pet_header(Units="CNTS"))[1]
    no_units = _pet_header()
    del no_units.Units
    assert suv_factor(no_units) == (None, "Units (missing) (need BQML or GML)")
    no_seq = _pet_header()
    del no_seq.RadiopharmaceuticalInformationSequence
    assert suv_factor(no_seq)[0] is None


@pytest.mark.parametrize(
    ("value", "modality", "match"),
    [(np.nan, "mri", "NaN/Inf"), (np.inf, "ct", "NaN/Inf"), (-1000.0, "ct", "no foreground")],
)
def test_bad_volumes_raise(value, modality, match):
    vol = _phantom(-1000.0, -1000.0)
    vol.array[3, 3, 3] = value
    with pytest.raises(PreprocessError, match=match):
        preprocess(vol, PreprocessSettings(modality))


def test_constant_mri_foreground_cannot_be_zscored():
    with pytest.raises(PreprocessError, match="constant"):
        preprocess(_phantom(0.0, 100.0), PreprocessSettings("mri"))


def test_settings_validation():
    with pytest.raises(ValueError, match="unknown modality"):
        PreprocessSettings("xray")
    with pytest.raises(ValueError, match="spacing"):
        PreprocessSettings("ct", spacing=(1.0, 0.0, 1.0))
    assert PreprocessSettings("pet").spacing == (2.0, 2.0, 2.0)


def test_resample_identity_when_spacing_matches():
    a = np.random.default_rng(0).random((5, 6, 7), dtype=np.float32)
    out, aff, sp = resample(a, np.eye(4), (1.0, 1.0, 1.0), (1.0, 1.0, 1.0))
    assert out is a and sp == [1.0, 1.0, 1.0]


def test_real_ct_preprocessed(real_data_dir):
    vol = read_volume(real_data_dir / "ct/totalseg_example_ct_sm.nii.gz")
    out, meta = preprocess(vol, PreprocessSettings("ct"))
    assert out.dtype == np.float32 and 0.0 <= out.min() and out.max() <= 1.0
    np.testing.assert_allclose(meta["spacing"], [1.5, 1.5, 1.5], atol=0.01)
    # 3 mm source -> 1.5 mm: about twice as many voxels along each axis (after the body crop).
    assert all(o <= 2 * s + 1 for o, s in zip(out.shape, vol.array.shape, strict=True))
    assert meta["source"]["format"] == "nifti" and meta["value_range"][1] <= 1.0


def test_pet_dicom_series_with_dose_headers_is_converted_to_suv(tmp_path, real_data_dir):
    """A small PET DICOM series (real CT slices re-labelled PT, with dose/weight/timing headers)."""
    import pydicom
    from pydicom.uid import generate_uid

    series = tmp_path / "pet_series"
    series.mkdir()
    uid = generate_uid()
    for i in (1, 2, 3):
        ds = pydicom.dcmread(real_data_dir / f"ct/dcmqa_ct_GE_head_tilt_dicom/{i:02d}.dcm")
        ds.Modality, ds.SeriesInstanceUID = "PT", uid
        for elem in _pet_header():
            ds[elem.tag] = elem
        ds.save_as(series / f"{i:02d}.dcm")
    (source,) = discover([series])
    vol = read_volume(source)
    assert vol.meta["dicom_modality"] == "PT"
    vol.array = np.clip(vol.array, 0, None)  # HU values standing in for activity: keep them non-negative
    out, meta = preprocess(vol, PreprocessSettings("pet", spacing=(4.0, 4.0, 4.0)))
    info = meta["intensity"]
    decayed = 370e6 * math.exp(-math.log(2) * 3600 / 6586.2)
    assert info["method"] == "suv_bw" and info["suv_factor"] == pytest.approx(70_000 / decayed)
    assert out.min() >= 0 and out.max() <= 50.0


def test_suv_delay_clock_skew_midnight_and_wrong_headers():
    """A series a minute "before" injection is clock skew (no decay; a modulo once made it a 24 h
    delay: SUV x 8800); past midnight wraps; hours before injection is refused with the reason."""
    skew, why = suv_factor(_pet_header(SeriesTime="091400"))
    assert why == "" and skew == pytest.approx(70_000 / 370e6)
    info = Dataset()
    info.RadionuclideTotalDose, info.RadionuclideHalfLife, info.RadiopharmaceuticalStartTime = 370e6, 6586.2, "235000"
    factor, _ = suv_factor(_pet_header(SeriesTime="000500", RadiopharmaceuticalInformationSequence=[info]))
    assert factor == pytest.approx(70_000 / (370e6 * math.exp(-math.log(2) * 900 / 6586.2)))
    factor, why = suv_factor(_pet_header(SeriesTime="051500"))
    assert factor is None and "14400 s before RadiopharmaceuticalStartTime" in why


def test_dicom_series_with_a_rescale_slope_per_slice_keeps_every_value(tmp_path, real_data_dir):
    """PET series carry one RescaleSlope per slice; with a whole first slope SimpleITK read the series
    as integers and truncated the other slices' fractional values (SUV wrong, no error)."""
    import pydicom
    from pydicom.uid import generate_uid

    src = sorted((real_data_dir / "mri/niivue_VS-SEG-001_T1Gd_dicom").iterdir())[:3]
    series, uid, expected = tmp_path / "slopes", generate_uid(), []
    series.mkdir()
    for i, (path, slope) in enumerate(zip(src, (1.0, 0.37, 2.5), strict=True)):
        ds = pydicom.dcmread(path)
        ds.SeriesInstanceUID, ds.RescaleSlope, ds.RescaleIntercept = uid, slope, 0
        ds.save_as(series / f"{i:02d}.dcm")
        expected.append(ds.pixel_array.astype(np.float64).ravel() * slope)
    (source,) = discover([series])
    vol = read_volume(source)
    # Orientation-free: the same multiset of voxel values (three evenly spaced slices: no resampling).
    np.testing.assert_allclose(np.sort(vol.array.ravel()), np.sort(np.concatenate(expected)), rtol=1e-6)
    assert vol.meta["source_dtype"].endswith("integer")
