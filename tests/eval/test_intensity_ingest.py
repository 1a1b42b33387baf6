"""``--intensity ingest``: task images get the intensity recipe the encoder export records for a
pretraining domain, computed by ingest's own code, on real scans; and its errors."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from mixpretrain.cli import main as cli_main
from mixpretrain.data.preprocess import PreprocessSettings, normalise_intensity, preprocess
from mixpretrain.data.readers import read_volume
from mixpretrain.eval.classify import ClassifyConfig, run_classification
from mixpretrain.eval.common import load_volumes, resolve_intensity
from mixpretrain.eval.phantom_tasks import write_phantom_tasks
from mixpretrain.models import build_mae, save_encoder

SIZE = 16


def _recipe(modality: str, **kw) -> dict:
    return {"modality": modality, **PreprocessSettings(modality, **kw).to_dict()}


def _encoder(path: Path, preprocessing: dict | None) -> Path:
    model = build_mae("custom", img_size=SIZE, patch_size=8, width=32, depth=2, heads=2)
    return save_encoder(model, path, extra_meta={"preprocessing": preprocessing} if preprocessing is not None else None)


@pytest.mark.parametrize("name", ["mri/vrd_stroke_T1.nii.gz", "pet/juspace_FDOPA_f18.nii", "ct/totalseg_example_ct_sm.nii.gz"])
def test_normalise_intensity_matches_ingest_statistics(real_data_dir: Path, name: str) -> None:
    """On the whole (uncropped) volume, the statistics are those ingest takes after its crop:
    the crop keeps every foreground voxel."""
    vol = read_volume(real_data_dir / name)
    settings = PreprocessSettings(name.split("/")[0])
    _, ingest_meta = preprocess(vol, settings)
    out, info = normalise_intensity(vol, settings)
    assert out.shape == vol.array.shape and np.isfinite(out).all()
    assert info.keys() == ingest_meta["intensity"].keys()
    for key, value in ingest_meta["intensity"].items():
        assert info[key] == (pytest.approx(value, rel=1e-6) if not isinstance(value, str) else value), key


def test_load_volumes_with_a_ct_recipe_gives_the_ingest_window(real_data_dir: Path) -> None:
    path = real_data_dir / "ct" / "totalseg_example_ct_sm.nii.gz"
    items = [{"image": str(path)}]
    shape = list(read_volume(path).array.shape)  # no resize: the values themselves are compared
    (ingest,) = load_volumes(items, shape, {"domain": "ct", **_recipe("ct")})
    (phantom_window,) = load_volumes(items, shape, "ct")
    (raw,) = load_volumes(items, shape, "none")
    img, hu = ingest["image"], raw["image"]
    assert 0.0 <= float(img.min()) and float(img.max()) <= 1.0 and float(hu.min()) < -1000 < 1000 < float(hu.max())
    torch.testing.assert_close(img, (hu.clamp(-1000, 1000) + 1000) / 2000, atol=1e-6, rtol=0)
    assert not torch.allclose(img, phantom_window["image"])  # the phantom window, -200..300, is another


def test_load_volumes_with_an_mri_recipe_z_scores_the_foreground(real_data_dir: Path) -> None:
    path = real_data_dir / "mri" / "vrd_stroke_T1.nii.gz"
    vol = read_volume(path)
    settings = PreprocessSettings("mri")
    direct, info = normalise_intensity(vol, settings)
    (loaded,) = load_volumes([{"image": str(path)}], list(vol.array.shape), {"domain": "mri", **_recipe("mri")})
    # Same voxels (MONAI's RAS read vs ingest's), same recipe: the same values.
    np.testing.assert_allclose(np.sort(loaded["image"].numpy().ravel()), np.sort(direct.ravel()), atol=1e-4)
    assert info["method"] == "mri_percentile_zscore"


def test_resolve_intensity_errors(tmp_path: Path) -> None:
    two = {"ct": _recipe("ct"), "mri": _recipe("mri")}
    with pytest.raises(ValueError, match=r"2 domains \(ct, mri\).*needs --domain"):
        resolve_intensity("ingest", None, {"preprocessing": two}, "enc.pt")
    with pytest.raises(ValueError, match=r"--domain 'pet'.*not pretrained on it; its domains are ct, mri"):
        resolve_intensity("ingest", "pet", {"preprocessing": two}, "enc.pt")
    with pytest.raises(ValueError, match="records no preprocessing per domain"):
        resolve_intensity("ingest", None, {}, "enc.pt")
    with pytest.raises(ValueError, match="applies to --intensity ingest .and segment.s --spacing export. only"):
        resolve_intensity("ct", "ct", {"preprocessing": two}, "enc.pt")
    assert resolve_intensity("ingest", "mri", {"preprocessing": two}, "enc.pt")["ct_window"] == [-1000.0, 1000.0]
    assert resolve_intensity("ingest", None, {"preprocessing": {"ct": two["ct"]}}, "enc.pt")["domain"] == "ct"


def test_blank_image_is_refused_by_name(tmp_path: Path) -> None:
    path = tmp_path / "blank.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 8), np.float32), np.eye(4)), path)
    with pytest.raises(ValueError, match=r"blank\.nii\.gz: no foreground voxels"):
        load_volumes([{"image": str(path)}], [SIZE] * 3, {"domain": "mri", **_recipe("mri")})


def test_classify_cli_with_ingest_intensity(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """End to end: a phantom task and an encoder whose export records the phantom recipe (images
    are synthesised normalised, so it changes nothing), and one recording a real MRI recipe."""
    tasks = tmp_path / "tasks"
    write_phantom_tasks(tasks, cases=8, size=SIZE, seed=3, domain="mri")
    phantom = {"mri": {"modality": "mri", "spacing": [1.5] * 3, "phantom": True, "intensity": {"method": "mri_percentile_zscore"}}}
    enc = _encoder(tmp_path / "phantom.pt", phantom)
    cfg = dict(mode="probe", probe_steps=5, device="cpu")
    none = run_classification(enc, tasks / "classification.csv", ClassifyConfig(**cfg))
    ingest = run_classification(enc, tasks / "classification.csv", ClassifyConfig(intensity="ingest", **cfg))
    assert ingest["probe"]["accuracy"] == none["probe"]["accuracy"] and ingest["intensity"]["domain"] == "mri"

    real = _encoder(tmp_path / "real.pt", {"ct": _recipe("ct"), "mri": _recipe("mri")})
    out = tmp_path / "result.json"
    rc = cli_main(["eval", "classify", "--encoder", str(real), "--data", str(tasks / "classification.csv"),
                   "--mode", "probe", "--probe-steps", "5", "--device", "cpu", "--intensity", "ingest",
                   "--domain", "mri", "--out", str(out)])
    assert rc == 0
    assert json.loads(out.read_text())["intensity"]["mri_percentiles"] == [0.5, 99.5]
    rc = cli_main(["eval", "classify", "--encoder", str(real), "--data", str(tasks / "classification.csv"),
                   "--mode", "probe", "--device", "cpu", "--intensity", "ingest"])
    assert rc == 2 and "needs --domain NAME" in capsys.readouterr().err


def test_a_recipe_keeps_the_image_geometry(real_data_dir: Path) -> None:
    """The recipe's output keeps the image's affine: the scale report and --spacing resampling
    read it (a plain tensor would read as 1 mm voxels)."""
    path = real_data_dir / "ct" / "totalseg_example_ct_sm.nii.gz"
    vol = read_volume(path)
    extent = np.array(vol.spacing) * np.array(vol.array.shape)
    (resized,) = load_volumes([{"image": str(path)}], [SIZE] * 3, {"domain": "ct", **_recipe("ct")})
    np.testing.assert_allclose(resized["voxel_mm"], extent / SIZE, rtol=1e-3)
    (resampled,) = load_volumes([{"image": str(path)}], [SIZE] * 3, {"domain": "ct", **_recipe("ct")}, spacing=(6.0, 6.0, 6.0))
    assert abs(resampled["image"].shape[1] - extent[0] / 6.0) <= 1.5
