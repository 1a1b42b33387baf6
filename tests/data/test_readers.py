"""Readers on real scans (NIfTI .nii/.nii.gz, NRRD, DICOM series) and on bad files."""

from __future__ import annotations

import gzip
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from mixpretrain.data.readers import ReadError, ScanSource, discover, read_volume


def _ras_codes(affine: np.ndarray) -> str:
    return "".join(nib.aff2axcodes(affine))


def _value_at_world(vol, ras_point: np.ndarray) -> float:
    ijk = np.round(np.linalg.inv(vol.affine) @ np.append(ras_point, 1.0))[:3].astype(int)
    return float(vol.array[tuple(ijk)])


@pytest.mark.parametrize(
    ("rel", "source_orientation", "shape_sorted", "spacing_sorted"),
    [
        ("mri/totalseg_example_mr_sm.nii.gz", "LPS", (20, 91, 117), (3.0, 3.0, 3.0)),
        ("pet/juspace_FDOPA_f18.nii", "LAS", (61, 61, 73), (3.0, 3.0, 3.0)),
    ],
)
def test_nifti_real_reoriented_to_ras(real_data_dir, rel, source_orientation, shape_sorted, spacing_sorted):
    path = real_data_dir / rel
    vol = read_volume(path)
    assert vol.meta["source_orientation"] == source_orientation and vol.meta["format"] == "nifti"
    assert _ras_codes(vol.affine) == "RAS" and vol.array.dtype == np.float32
    assert tuple(sorted(vol.array.shape)) == shape_sorted
    assert tuple(sorted(round(s, 4) for s in vol.spacing)) == spacing_sorted
    # Same voxels as nibabel's own canonical reorientation, same world geometry.
    canon = nib.as_closest_canonical(nib.load(str(path)))
    np.testing.assert_array_equal(vol.array, np.asarray(canon.dataobj, dtype=np.float32))
    np.testing.assert_allclose(vol.affine, canon.affine, atol=1e-4)


def test_nrrd_real_world_points_agree_with_simpleitk(real_data_dir):
    path = real_data_dir / "mri/pyradiomics_breast1_image.nrrd"
    vol = read_volume(path)
    img = sitk.ReadImage(str(path))
    assert vol.meta["format"] == "nrrd" and _ras_codes(vol.affine) == "RAS"
    assert sorted(vol.array.shape) == sorted(img.GetSize())
    ref = sitk.GetArrayFromImage(img)  # (z, y, x)
    for idx in [(0, 0, 0), (44, 119, 20), (10, 50, 7)]:
        lps = np.array(img.TransformIndexToPhysicalPoint(idx))
        ras = lps * [-1, -1, 1]
        assert _value_at_world(vol, ras) == float(ref[idx[2], idx[1], idx[0]])


def test_dicom_series_gantry_tilt_and_uneven_gaps_corrected(real_data_dir):
    folder = real_data_dir / "ct/dcmqa_ct_GE_head_tilt_dicom"
    sources = discover([folder])
    assert len(sources) == 1 and sources[0].is_dicom
    vol = read_volume(sources[0])
    meta = vol.meta
    assert meta["format"] == "dicom" and meta["dicom_modality"] == "CT" and meta["files"] == 28
    assert abs(abs(meta["gantry_tilt_deg"]) - 18.5) < 0.5  # the header's GantryDetectorTilt is 18.5
    steps = meta["slice_steps_mm"]
    assert steps["min"] < 2 and steps["max"] > 6  # uneven gaps, resampled to a uniform grid
    assert _ras_codes(vol.affine) == "RAS"
    assert vol.array.shape[:2] == (512, 512) and vol.array.shape[2] > 28
    assert vol.spacing[0] == pytest.approx(0.48828, abs=1e-4) and vol.spacing[2] == pytest.approx(steps["resampled_to"])
    assert -1500 <= vol.array.min() < -900 and 1000 < vol.array.max() <= 2121  # HU


def test_mha_written_by_itk_reads_back_in_ras(tmp_path):
    arr = np.arange(4 * 5 * 6, dtype=np.int16).reshape(6, 5, 4)  # (z, y, x)
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing((0.5, 1.0, 2.0))
    img.SetOrigin((10.0, -5.0, 3.0))
    path = tmp_path / "case.mha"
    sitk.WriteImage(img, str(path))
    vol = read_volume(path)
    assert vol.meta["format"] == "mha" and vol.meta["source_orientation"] == "LPS"
    assert vol.array.shape == (4, 5, 6) and vol.spacing == (0.5, 1.0, 2.0)
    lps = np.array(img.TransformIndexToPhysicalPoint((3, 1, 2)))
    assert _value_at_world(vol, lps * [-1, -1, 1]) == arr[2, 1, 3]


def test_discover_finds_files_and_dicom_series(real_data_dir):
    found = discover([real_data_dir / "ct"])
    names = sorted(s.path.name for s in found)
    assert len(found) == 6 and "dcmqa_ct_GE_head_tilt_dicom" in names
    assert sum(s.is_dicom for s in found) == 1
    with pytest.raises(FileNotFoundError):
        discover([real_data_dir / "nope"])


def _nifti(path: Path, data: np.ndarray) -> Path:
    nib.save(nib.Nifti1Image(data, np.diag([2.0, 2.0, 2.0, 1.0])), str(path))
    return path


def test_bad_files_raise_read_error_naming_the_file(tmp_path, real_data_dir):
    good = (real_data_dir / "mri/totalseg_example_mr_sm.nii.gz").read_bytes()
    truncated = tmp_path / "truncated.nii.gz"
    truncated.write_bytes(good[: len(good) // 3])
    garbled = tmp_path / "garbled.nii.gz"
    garbled.write_bytes(gzip.compress(b"not a nifti header" * 30))
    empty = tmp_path / "empty.nii"
    empty.write_bytes(b"")
    flat = _nifti(tmp_path / "flat.nii.gz", np.zeros((32, 32), np.float32))
    one_slice = _nifti(tmp_path / "slice.nii.gz", np.zeros((32, 32, 1), np.float32))
    cases = [(truncated, "unreadable"), (garbled, "unreadable"), (empty, "empty file"),
             (flat, "2-D image"), (one_slice, "2-D image")]
    for path, reason in cases:
        with pytest.raises(ReadError, match=reason) as exc:
            read_volume(path)
        assert str(path) in str(exc.value)
    bad_nrrd = tmp_path / "bad.nrrd"
    bad_nrrd.write_text("NRRD0004\ntype: float\ndimension: 3\nsizes: 4 4 4\nencoding: raw\n\n")
    with pytest.raises(ReadError, match="bad.nrrd: unreadable"):
        read_volume(bad_nrrd)


def test_4d_is_an_error_unless_first_frame_is_asked(tmp_path):
    data = np.stack([np.full((8, 8, 8), float(t), np.float32) for t in range(3)], axis=-1)
    path = _nifti(tmp_path / "dyn.nii.gz", data)
    with pytest.raises(ReadError, match="4-D image with 3 frames"):
        read_volume(path)
    vol = read_volume(path, frames="first")
    assert vol.array.shape == (8, 8, 8) and vol.array.max() == 0.0
    assert vol.meta["frames"] == {"count": 3, "used": 0}
    single = _nifti(tmp_path / "single.nii.gz", data[..., :1])  # (x, y, z, 1) is just 3-D
    assert read_volume(single).array.shape == (8, 8, 8)
    five = _nifti(tmp_path / "five.nii.gz", (data + 1.0)[..., None])  # (x, y, z, T, 1): frame 0 on axis 3
    vol = read_volume(five, frames="first")
    assert vol.array.shape == (8, 8, 8) and vol.array.max() == 1.0


def test_dicom_single_file_is_2d(tmp_path, real_data_dir):
    one = tmp_path / "one"
    one.mkdir()
    (one / "01.dcm").write_bytes((real_data_dir / "ct/dcmqa_ct_GE_head_tilt_dicom/01.dcm").read_bytes())
    (src,) = discover([one])
    with pytest.raises(ReadError, match="2-D image"):
        read_volume(src)
    assert isinstance(src, ScanSource)


def _tilted_series(folder: Path, template: Path, tilt_deg: float, steps: list[float]) -> tuple[np.ndarray, float]:
    """A DICOM series whose slices step along world z while the slice plane is tilted about x
    (as on a tilted CT gantry), holding a ball of radius 10 mm at LPS (64, 60, 0)."""
    import pydicom
    from pydicom.uid import generate_uid

    folder.mkdir()
    t = np.radians(tilt_deg)
    r_dir, c_dir = np.array([1.0, 0, 0]), np.array([0, np.cos(t), -np.sin(t)])
    centre, radius, n = np.array([64.0, 60.0, 0.0]), 10.0, 64
    uid = generate_uid()
    z = np.concatenate([[0.0], np.cumsum(steps)]) + 2.0  # covers z in [-20, 20] at y = 60
    jj, ii = np.mgrid[0:n, 0:n]  # rows (j) along c_dir, columns (i) along r_dir
    for k, zk in enumerate(z):
        ds = pydicom.dcmread(template)
        origin = np.array([0.0, 0.0, zk])
        world = origin + ii[..., None] * 2.0 * r_dir + jj[..., None] * 2.0 * c_dir
        ball = np.linalg.norm(world - centre, axis=-1) < radius
        ds.Rows = ds.Columns = n
        ds.PixelSpacing = [2.0, 2.0]
        ds.ImageOrientationPatient = [*r_dir, *c_dir]
        ds.ImagePositionPatient = list(origin)
        ds.RescaleSlope, ds.RescaleIntercept = 1, 0
        ds.SeriesInstanceUID, ds.SOPInstanceUID, ds.InstanceNumber = uid, generate_uid(), k + 1
        ds.PixelData = np.where(ball, 1000, 0).astype(np.int16).tobytes()
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.save_as(folder / f"{k:02d}.dcm")
    return centre, radius


def test_tilt_correction_puts_anatomy_at_its_world_position(tmp_path, real_data_dir):
    template = real_data_dir / "ct/dcmqa_ct_GE_head_tilt_dicom/01.dcm"
    steps = [4.0, 4.0, 2.0, 6.0, 4.0, 4.0, 4.0, 3.0, 5.0, 4.0]  # uneven gaps too
    centre, radius = _tilted_series(tmp_path / "tilted", template, 20.0, steps)
    (src,) = discover([tmp_path / "tilted"])
    vol = read_volume(src)
    assert abs(vol.meta["gantry_tilt_deg"]) == pytest.approx(20.0, abs=0.5)
    centre_ras = centre * [-1, -1, 1]
    # Inside the ball along world z (where an uncorrected shear would displace it) and outside it.
    for dz in (-6.0, 0.0, 6.0):
        assert _value_at_world(vol, centre_ras + [0, 0, dz]) > 500, dz
    for offset in ([0, 0, 15.0], [0, 15.0, 0], [15.0, 0, 0], [0, 0, -15.0]):
        assert _value_at_world(vol, centre_ras + offset) < 200, offset


def test_4d_and_vector_mha_through_simpleitk(tmp_path):
    dyn = sitk.GetImageFromArray(np.random.default_rng(0).random((3, 5, 6, 7)).astype(np.float32), isVector=False)
    sitk.WriteImage(dyn, str(tmp_path / "dyn.mha"))
    with pytest.raises(ReadError, match="4-D image with 3 frames"):
        read_volume(tmp_path / "dyn.mha")
    vol = read_volume(tmp_path / "dyn.mha", frames="first")
    assert vol.array.shape == (7, 6, 5) and vol.meta["frames"] == {"count": 3, "used": 0}
    rgb = sitk.GetImageFromArray(np.zeros((5, 6, 7, 3), np.float32), isVector=True)
    sitk.WriteImage(rgb, str(tmp_path / "rgb.mha"))
    with pytest.raises(ReadError, match="vector image with 3 components"):
        read_volume(tmp_path / "rgb.mha")
