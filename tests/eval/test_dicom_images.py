"""DICOM images in the downstream tasks: a series folder or one multi-frame file is read by ingest's
reader (the same geometry and SUV headers as the pretraining data), on real scans; a path that is
not one DICOM volume is refused with the reason."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from mixpretrain.data.readers import discover, read_volume
from mixpretrain.eval.common import load_volumes, read_image

CT_SERIES = "ct/dcmqa_ct_GE_head_tilt_dicom"  # gantry tilt and uneven steps: corrected as at ingest
MR_SERIES = "mri/niivue_VS-SEG-001_T1Gd_dicom"
SIZE = (16, 16, 16)


def _resized(array: np.ndarray) -> torch.Tensor:
    from monai.transforms import Resize

    return Resize(SIZE, mode="trilinear")(torch.from_numpy(array)[None]).as_tensor()


def test_series_folder_reads_as_ingest_reads_it(real_data_dir: Path) -> None:
    folder = real_data_dir / CT_SERIES
    vol = read_volume(discover([folder])[0])
    image, meta = read_image(folder, monai_reader=None)  # a DICOM path never reaches MONAI's reader
    np.testing.assert_array_equal(image.as_tensor()[0].numpy(), vol.array)
    np.testing.assert_allclose(image.affine.numpy(), vol.affine)
    assert meta["gantry_tilt_deg"] == pytest.approx(vol.meta["gantry_tilt_deg"])
    assert Path(meta["first_file"]).parent == folder  # PET would get its SUV headers from it
    (item,) = load_volumes([{"image": str(folder)}], SIZE)
    assert item["image"].shape == (1, *SIZE)
    np.testing.assert_allclose(item["image"].numpy(), _resized(vol.array).numpy(), rtol=1e-6, atol=1e-3)


def test_multiframe_file_reads_as_its_series(real_data_dir: Path, tmp_path: Path, multiframe_from) -> None:
    path = multiframe_from(real_data_dir / MR_SERIES, tmp_path / "mr", "MR")
    from_file, from_folder = load_volumes([{"image": str(path)}, {"image": str(real_data_dir / MR_SERIES)}], SIZE)
    np.testing.assert_allclose(from_file["image"].numpy(), from_folder["image"].numpy(), atol=1e-3)


def test_paths_that_are_not_one_dicom_volume_are_refused(real_data_dir: Path, tmp_path: Path) -> None:
    one_slice = real_data_dir / CT_SERIES / "01.dcm"
    with pytest.raises(ValueError, match=r"01.dcm: a single-frame DICOM file is one 2-D slice; give the folder of its series"):
        load_volumes([{"image": str(one_slice)}], SIZE)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match=r"empty: a folder without DICOM files"):
        load_volumes([{"image": str(empty)}], SIZE)
    mixed = tmp_path / "mixed"
    shutil.copytree(real_data_dir / CT_SERIES, mixed)
    for f in sorted((real_data_dir / MR_SERIES).iterdir())[:3]:
        shutil.copy(f, mixed / f"mr_{f.name}")
    with pytest.raises(ValueError, match=r"mixed: folder holds 2 DICOM series .*give each series its own folder"):
        load_volumes([{"image": str(mixed)}], SIZE)
    with pytest.raises(FileNotFoundError, match="image file .*nowhere does not exist"):
        load_volumes([{"image": str(tmp_path / "nowhere")}], SIZE)


def test_classify_reads_dicom_series_folders_next_to_nifti(real_data_dir: Path, tmp_path: Path) -> None:
    """`eval classify` on a CSV whose images are real DICOM series folders and NIfTI files."""
    from mixpretrain.eval.classify import ClassifyConfig, run_classification
    from mixpretrain.models import build_mae, save_encoder

    enc = save_encoder(build_mae("custom", img_size=SIZE[0], patch_size=8, width=32, depth=2, heads=2), tmp_path / "enc.pt",
                       extra_meta={"preprocessing": {"ct": {"modality": "ct", "spacing": [1.5, 1.5, 1.5]}}})
    rows = [(real_data_dir / CT_SERIES, 1, "train"), (real_data_dir / "ct/niivue_CT_AVM.nii.gz", 1, "train"),
            (real_data_dir / MR_SERIES, 0, "train"), (real_data_dir / "mri/totalseg_example_mr_sm.nii.gz", 0, "train"),
            (real_data_dir / "ct/totalseg_example_ct_sm.nii.gz", 1, "val"), (real_data_dir / "mri/niivue_chris_MRA.nii.gz", 0, "val")]
    csv_path = tmp_path / "images.csv"
    csv_path.write_text("image,label,split\n" + "".join(f"{p},{label},{split}\n" for p, label, split in rows))
    result = run_classification(enc, csv_path, ClassifyConfig(mode="probe", probe_steps=5, batch_size=2, intensity="zscore"))
    assert result["n_train"] == 4 and result["n_val"] == 2
    assert 0.0 <= result["probe"]["accuracy"] <= 1.0
    # Whole scans resized to 16 voxels reach the encoder at 7-15 mm voxels, not 1.5 mm: reported.
    assert min(result["scale"]["voxel_mm_median"]) > 5
    assert "more than 2x off the nearest pretraining spacing (ct: 1.5x1.5x1.5 mm)" in result["scale"]["note"]


@pytest.mark.parametrize("spacing", [None, "8"])
def test_segment_takes_a_dicom_series_folder_with_a_nifti_label(real_data_dir: Path, tmp_path: Path, spacing) -> None:
    """`eval segment`: DICOM series folders as images, NIfTI labels on the grid ingest's reader
    gives them (here: a body mask thresholded from the image itself)."""
    import json

    import nibabel as nib

    from mixpretrain.eval.segment import SegmentConfig, run_segmentation
    from mixpretrain.models import build_mae, save_encoder

    enc = save_encoder(build_mae("custom", img_size=SIZE[0], patch_size=8, width=32, depth=3, heads=2), tmp_path / "enc.pt")
    (tmp_path / "labelsTr").mkdir()
    training = []
    for i, series in enumerate((CT_SERIES, MR_SERIES)):
        vol = read_volume(discover([real_data_dir / series])[0])
        mask = (vol.array > np.percentile(vol.array, 60)).astype(np.uint8)
        nib.save(nib.Nifti1Image(mask, vol.affine), tmp_path / "labelsTr" / f"case_{i}.nii.gz")
        training.append({"image": str(real_data_dir / series), "label": f"labelsTr/case_{i}.nii.gz"})
    (tmp_path / "dataset.json").write_text(json.dumps({
        "name": "dicom", "labels": {"0": "background", "1": "body"}, "training": training[:1], "validation": training[1:]}))
    result = run_segmentation(enc, tmp_path, SegmentConfig(steps=1, batch_size=1, feature_size=8, spacing=spacing))
    assert result["n_train"] == 1 and result["n_val"] == 1
    if spacing:  # resampled to 8 mm: whole volumes of their own size, scored by sliding window
        assert result["spacing"] == [8.0, 8.0, 8.0] and result["scale"]["voxel_mm_median"] == [8.0, 8.0, 8.0]
    assert 0.0 <= result["pretrained"]["dice"]["body"] <= 1.0
