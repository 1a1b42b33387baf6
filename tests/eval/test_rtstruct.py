"""RTSTRUCT labels (eval segment): contours written with pydicom on the real MR series' slices are
rasterised on the image grid; ROIs matched to dataset.json's classes by name, the higher class wins
where ROIs overlap, unnamed ROIs left out; another frame of reference or no matching ROI is refused."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from mixpretrain.data.readers import read_dicom_path
from mixpretrain.eval.common import load_volumes, read_image
from mixpretrain.eval.rtstruct import RTSTRUCT_SOP_CLASS_UID, is_rtstruct, rasterise, read_rtstruct

MR_SERIES = "mri/niivue_VS-SEG-001_T1Gd_dicom"
CT_SERIES = "ct/dcmqa_ct_GE_head_tilt_dicom"
CENTRE, RADII = (-20.3, 5.1), {"Brain": 40.3, "Tumour": 10.7, "Couch": 60.2}  # mm; off the voxel grid
SLICES = slice(50, 70)  # source slices (sorted by z) the circles are drawn on


def _circle(r: float, z: float, n: int = 180) -> list[float]:
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    pts = np.column_stack([CENTRE[0] + r * np.cos(t), CENTRE[1] + r * np.sin(t), np.full(n, z)])
    return [float(v) for v in pts.ravel()]


def _write(path: Path, for_uid: str, zs: list[float]) -> Path:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = RTSTRUCT_SOP_CLASS_UID
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID, ds.SOPInstanceUID, ds.Modality = RTSTRUCT_SOP_CLASS_UID, ds.file_meta.MediaStorageSOPInstanceUID, "RTSTRUCT"
    ds.StructureSetROISequence, ds.ROIContourSequence = [], []
    for number, (name, r) in enumerate(RADII.items(), start=1):
        roi = Dataset()
        roi.ROINumber, roi.ROIName, roi.ReferencedFrameOfReferenceUID = number, name, for_uid
        ds.StructureSetROISequence.append(roi)
        item = Dataset()
        item.ReferencedROINumber, item.ContourSequence = number, []
        for z in zs:
            c = Dataset()
            c.ContourGeometricType, c.ContourData = "CLOSED_PLANAR", _circle(r, z)
            c.NumberOfContourPoints = len(c.ContourData) // 3
            item.ContourSequence.append(c)
        ds.ROIContourSequence.append(item)
    ds.save_as(str(path), enforce_file_format=True)
    return path


@pytest.fixture(scope="module")
def series(real_data_dir: Path) -> tuple[Path, str, list[float]]:
    files = [pydicom.dcmread(str(f), stop_before_pixels=True) for f in (real_data_dir / MR_SERIES).iterdir()]
    zs = sorted(float(d.ImagePositionPatient[2]) for d in files)
    return real_data_dir / MR_SERIES, str(files[0].FrameOfReferenceUID), zs[SLICES]


def test_contours_rasterised_on_the_series_grid(series, tmp_path: Path) -> None:
    folder, for_uid, zs = series
    rt = _write(tmp_path / "rt.dcm", for_uid, zs)
    assert is_rtstruct(rt) and not is_rtstruct(next(folder.iterdir()))
    image, meta = read_image(folder, None)
    label, report = rasterise(read_rtstruct(rt), image, {0: "background", 1: "brain", 2: "tumour"}, folder)
    assert report["rois"] == {"Brain": 1, "Tumour": 2, "Couch": None}
    # expected: voxel centres inside each circle (LPS x, y = -RAS x, -RAS y) on the drawn slices
    vol = read_dicom_path(folder)
    shape = vol.array.shape
    idx = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), axis=-1).reshape(-1, 3)
    ras = (vol.affine @ np.column_stack([idx, np.ones(len(idx))]).T)[:3].T
    lps_xy = -ras[:, :2]
    on_slice = np.isin(np.round(ras[:, 2], 2), np.round(zs, 2))
    d = np.hypot(lps_xy[:, 0] - CENTRE[0], lps_xy[:, 1] - CENTRE[1])
    expected = np.where(on_slice & (d < RADII["Tumour"]), 2, np.where(on_slice & (d < RADII["Brain"]), 1, 0))
    got = label.as_tensor()[0].numpy().reshape(-1)
    assert (expected == 2).sum() > 1000
    assert (got != expected).mean() < 1e-4  # polygon (180 points) vs true circle: only boundary voxels may differ
    assert report["overlap_voxels"] == int((got == 2).sum())  # the tumour lies inside the brain


def test_rtstruct_through_load_volumes_and_its_refusals(series, real_data_dir: Path, tmp_path: Path) -> None:
    folder, for_uid, zs = series
    rt = _write(tmp_path / "rt.dcm", for_uid, zs)
    item = {"image": str(folder), "label": str(rt)}
    (vol,) = load_volumes([item], (16, 16, 16), with_label=True, classes={0: "background", 1: "Brain", 2: "tumour"})
    assert vol["label_resampled"]["was"] == "RTSTRUCT contours rasterised on the image grid"
    with pytest.raises(ValueError, match=r"rt.dcm: no RTSTRUCT ROI is named like a class of dataset.json"):
        load_volumes([item], (16, 16, 16), with_label=True, classes={0: "background", 1: "liver"})
    with pytest.raises(ValueError, match=r"rt.dcm: RTSTRUCT of frame of reference .* the RTSTRUCT was not drawn on this image"):
        load_volumes([{"image": str(real_data_dir / CT_SERIES), "label": str(rt)}], (16, 16, 16), with_label=True,
                     classes={0: "background", 1: "brain"})
