"""Labels on another voxel grid than their image (eval segment): refused by default, naming both
files and what differs, even when the shapes agree; with ``resample_labels`` resampled onto the
image grid by the two affines (nearest neighbour), every class kept or an error. Real scans: a
NIfTI MR and the tilted CT DICOM series (whose corrected grid is the reader's, not the files')."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from mixpretrain.data.readers import read_dicom_path
from mixpretrain.eval.common import load_volumes, read_image
from mixpretrain.eval.labels import grid_mismatch, resample_label_to_image
from mixpretrain.eval.phantom_tasks import write_phantom_tasks
from mixpretrain.eval.segment import SegmentConfig, run_segmentation
from mixpretrain.models import build_mae, save_encoder

MR = "mri/spm12_single_subj_T1.nii"  # 91 x 109 x 91 at 2 mm
CT_SERIES = "ct/dcmqa_ct_GE_head_tilt_dicom"
SIZE = (16, 16, 16)


@pytest.fixture(scope="module")
def mr(real_data_dir: Path) -> tuple[nib.Nifti1Image, np.ndarray]:
    """The real MR and a head mask thresholded from it (a label on the image's own grid)."""
    image = nib.load(real_data_dir / MR)
    data = np.asarray(image.dataobj, dtype=np.float32)
    return image, (data > np.percentile(data, 60)).astype(np.uint8)


def _reader():
    from monai import transforms as mt

    return mt.Compose([mt.LoadImage(image_only=True, ensure_channel_first=True), mt.Orientation(axcodes="RAS", labels=None)])


def _save(array: np.ndarray, affine: np.ndarray, path: Path) -> Path:
    nib.save(nib.Nifti1Image(array.astype(np.uint8), affine), str(path))
    return path


def _shifted(affine: np.ndarray, mm: float) -> np.ndarray:
    out = affine.copy()
    out[:3, 3] += mm
    return out


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * float((a & b).sum()) / float(a.sum() + b.sum())


def test_same_grid_and_a_rounding_offset_pass(real_data_dir: Path, mr, tmp_path: Path) -> None:
    image_nii, mask = mr
    reader = _reader()
    image = reader(str(real_data_dir / MR))
    assert grid_mismatch(image, reader(str(_save(mask, image_nii.affine, tmp_path / "same.nii.gz")))) is None
    # 0.01 mm (0.005 voxel): what float32 headers and converters differ by, not another grid
    near = _save(mask, _shifted(image_nii.affine, 0.01), tmp_path / "near.nii.gz")
    assert grid_mismatch(image, reader(str(near))) is None


def test_same_shape_on_another_grid_is_refused(real_data_dir: Path, mr, tmp_path: Path) -> None:
    """A label one voxel off with the image's shape used to pass the shape check unnoticed."""
    image_nii, mask = mr
    label = _save(mask, _shifted(image_nii.affine, 2.0), tmp_path / "shifted.nii.gz")
    item = {"image": str(real_data_dir / MR), "label": str(label)}
    with pytest.raises(ValueError, match=r"spm12_single_subj_T1.nii and its label .*shifted.nii.gz are on different "
                                         r"voxel grids \(the same shape \(91, 109, 91\), but corner voxels up to 3.46 mm "
                                         r"apart; origin .*\); --resample-labels"):
        load_volumes([item], SIZE, with_label=True, classes=2)
    coarse = image_nii.affine @ np.diag([2.0, 2.0, 2.0, 1.0])  # the same shape at 4 mm
    item["label"] = str(_save(mask, coarse, tmp_path / "coarse_same_shape.nii.gz"))
    with pytest.raises(ValueError, match=r"spacing 2x2x2 vs 4x4x4 mm"):
        load_volumes([item], SIZE, with_label=True, classes=2)


def test_cropped_roi_label_is_placed_exactly(real_data_dir: Path, mr, tmp_path: Path) -> None:
    image_nii, mask = mr
    box = (slice(20, 70), slice(30, 80), slice(25, 65))
    roi_affine = image_nii.affine.copy()
    roi_affine[:3, 3] = (image_nii.affine @ np.array([20, 30, 25, 1.0]))[:3]
    label_path = _save(mask[box], roi_affine, tmp_path / "roi.nii.gz")
    reader = _reader()
    image, label = reader(str(real_data_dir / MR)), reader(str(label_path))
    assert grid_mismatch(image, label) == "shape (91, 109, 91) vs (50, 50, 40)"
    out, report = resample_label_to_image(label, image, label_path, real_data_dir / MR)
    expected = np.zeros_like(mask)
    expected[box] = mask[box]
    expected = reader(str(_save(expected, image_nii.affine, tmp_path / "expected.nii.gz")))  # in RAS, as read
    np.testing.assert_array_equal(out.as_tensor()[0].round().numpy(), expected.as_tensor()[0].numpy())
    assert report["volume_kept"] == {1: 1.0}
    (item,) = load_volumes([{"image": str(real_data_dir / MR), "label": str(label_path)}], SIZE, with_label=True,
                           classes=2, resample_labels=True)
    assert item["label"].shape == (1, *SIZE) and item["label_resampled"]["was"].startswith("shape")


def test_coarser_label_is_upsampled(real_data_dir: Path, mr, tmp_path: Path) -> None:
    image_nii, mask = mr
    # every second voxel at 4 mm: voxel 0 keeps its centre, so the affine only scales
    label_path = _save(mask[::2, ::2, ::2], image_nii.affine @ np.diag([2.0, 2.0, 2.0, 1.0]), tmp_path / "coarse.nii.gz")
    reader = _reader()
    image = reader(str(real_data_dir / MR))
    out, report = resample_label_to_image(reader(str(label_path)), image, label_path, real_data_dir / MR)
    truth = reader(str(_save(mask, image_nii.affine, tmp_path / "truth.nii.gz"))).as_tensor()[0].numpy()
    assert _dice(out.as_tensor()[0].numpy() > 0.5, truth > 0.5) > 0.9
    assert report["volume_kept"][1] == pytest.approx(1.0, abs=0.05)


def test_label_outside_the_image_is_refused_even_when_resampling(real_data_dir: Path, mr, tmp_path: Path) -> None:
    image_nii, mask = mr
    far = _save(mask, _shifted(image_nii.affine, 1000.0), tmp_path / "far.nii.gz")
    with pytest.raises(ValueError, match=r"far.nii.gz: class\(es\) \[1\] fall outside its image .*single_subj_T1.nii's "
                                         r"voxel grid once resampled onto it"):
        load_volumes([{"image": str(real_data_dir / MR), "label": str(far)}], SIZE, with_label=True, classes=2,
                     resample_labels=True)


def test_dicom_series_with_nifti_labels(real_data_dir: Path, tmp_path: Path) -> None:
    """A label written on the reader's (tilt-corrected, RAS) grid of the real CT series matches it;
    the same label at half the resolution is resampled onto it."""
    folder = real_data_dir / CT_SERIES
    vol = read_dicom_path(folder)
    mask = (vol.array > 300).astype(np.uint8)  # bone
    image, _ = read_image(folder, None)
    same = _save(mask, vol.affine, tmp_path / "bone.nii.gz")
    assert grid_mismatch(image, _reader()(str(same))) is None
    half = _save(mask[::2, ::2, :], vol.affine @ np.diag([2.0, 2.0, 1.0, 1.0]), tmp_path / "bone_half.nii.gz")
    (item,) = load_volumes([{"image": str(folder), "label": str(half)}], SIZE, with_label=True, classes=2,
                           resample_labels=True)
    out, _ = resample_label_to_image(_reader()(str(half)), image, half, folder)
    assert _dice(out.as_tensor()[0].numpy() > 0.5, mask > 0) > 0.8
    assert item["label_resampled"]["volume_kept"][1] == pytest.approx(1.0, abs=0.1)


def test_segment_reports_resampled_labels(tmp_path: Path) -> None:
    tasks = tmp_path / "tasks"
    write_phantom_tasks(tasks, cases=8, size=SIZE[0], seed=3)
    target = tasks / "labelsTr/case_0001.nii.gz"
    label = nib.load(target)
    data = np.asarray(label.dataobj)
    nz = np.argwhere(data > 0)
    lo, hi = np.maximum(nz.min(0) - 1, 0), nz.max(0) + 2  # the labelled voxels' box, one voxel of margin
    roi_affine = label.affine.copy()
    roi_affine[:3, 3] = (label.affine @ np.array([*lo, 1.0]))[:3]
    _save(data[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]], roi_affine, target)  # stored as a cropped box
    encoder = save_encoder(build_mae("custom", img_size=SIZE[0], patch_size=8, width=32, depth=3, heads=2),
                           tmp_path / "encoder.pt")
    with pytest.raises(ValueError, match=r"case_0001.nii.gz and its label .*case_0001.nii.gz are on different voxel grids"):
        run_segmentation(encoder, tasks, SegmentConfig(steps=1))
    result = run_segmentation(encoder, tasks, SegmentConfig(steps=1, resample_labels=True))
    (entry,) = result["labels_resampled"]
    assert entry["label"] == str(target)
    assert entry["was"] == f"shape (16, 16, 16) vs {tuple(int(v) for v in hi - lo)}"
    assert entry["volume_kept"] == {int(c): 1.0 for c in np.unique(data) if c}  # placed back voxel for voxel
    assert any("1 of 8 labels were on another voxel grid" in n for n in result["notes"])
    assert np.isfinite(result["pretrained"]["final_train_loss"])
