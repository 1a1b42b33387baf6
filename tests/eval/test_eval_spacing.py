"""`eval segment|classify --spacing`: volumes resampled to a spacing keep their own sizes; segment takes
crops of the encoder size and scores whole volumes by sliding window, classify pads them to one size."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from mixpretrain.cli import main as cli_main
from mixpretrain.eval.common import load_volumes, resolve_spacing
from mixpretrain.eval.phantom_tasks import write_phantom_tasks
from mixpretrain.eval.segment import SegmentConfig, read_decathlon, run_segmentation
from mixpretrain.models import build_mae, save_encoder

ENC_SIZE = 16


@pytest.fixture(scope="module")
def tasks(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("tasks")
    write_phantom_tasks(out, cases=6, size=32, seed=1)  # 32 voxels at 10 mm
    return out


@pytest.fixture(scope="module")
def encoder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 16-voxel encoder whose export records a 20 mm pretraining spacing for one domain."""
    model = build_mae("custom", img_size=ENC_SIZE, patch_size=8, width=32, depth=3, heads=2)
    return save_encoder(model, tmp_path_factory.mktemp("enc") / "encoder.pt",
                        extra_meta={"preprocessing": {"ct": {"modality": "ct", "spacing": [20.0, 20.0, 20.0]}}})


def test_volumes_keep_their_size_at_the_spacing(tasks: Path) -> None:
    train, val, _ = read_decathlon(tasks)
    (fine,) = load_volumes(train[:1], [ENC_SIZE] * 3, with_label=True, classes=5, spacing=(5.0, 5.0, 5.0))
    # MONAI keeps the span of the voxel centres: (32 - 1) x 10 / 5 + 1 = 63 voxels
    assert fine["image"].shape == (1, 63, 63, 63) and fine["label"].shape == (1, 63, 63, 63)
    assert fine["voxel_mm"] == [5.0, 5.0, 5.0]
    (coarse,) = load_volumes(train[:1], [ENC_SIZE] * 3, with_label=True, classes=5, spacing=(40.0, 40.0, 40.0))
    assert coarse["image"].shape == (1, ENC_SIZE, ENC_SIZE, ENC_SIZE)  # 8 voxels at 40 mm, padded to one crop
    # nearest neighbour keeps labels whole classes of the task
    assert set(np.unique(fine["label"].numpy())) <= set(range(5))


def test_segment_by_crops_and_sliding_window(tasks: Path, encoder: Path) -> None:
    cfg = SegmentConfig(steps=2, batch_size=2, feature_size=8, spacing="export")
    result = run_segmentation(encoder, tasks, cfg, compare_scratch=True)
    assert result["spacing"] == [20.0, 20.0, 20.0] and result["img_size"] == [ENC_SIZE] * 3
    assert result["scale"]["voxel_mm_median"] == [20.0, 20.0, 20.0] and "note" not in result["scale"]
    for init in ("pretrained", "scratch"):
        dice = result[init]["dice"]
        assert list(dice) == ["liver", "spleen", "kidney", "lesion"]
        assert all(math.isnan(v) or 0.0 <= v <= 1.0 for v in dice.values())
        assert result[init]["dice_cases"]["liver"] == result["n_val"]  # every val volume scored whole


def test_resize_mode_is_unchanged_and_notes_the_scale(tasks: Path, encoder: Path) -> None:
    result = run_segmentation(encoder, tasks, SegmentConfig(steps=1, batch_size=2, feature_size=8))
    assert result["spacing"] is None
    # 32 voxels of 10 mm resized to 16: 20 mm, the recorded pretraining spacing: no note
    assert result["scale"]["voxel_mm_median"] == [20.0, 20.0, 20.0] and "note" not in result["scale"]


def test_spacing_values_and_errors(encoder: Path) -> None:
    assert resolve_spacing(None, None, {}, "e") is None and resolve_spacing("none", None, {}, "e") is None
    assert resolve_spacing("1.5", None, {}, "e") == (1.5, 1.5, 1.5)
    assert resolve_spacing("0.8,0.8,2.5", None, {}, "e") == (0.8, 0.8, 2.5)
    for bad in ("0", "1,2", "a,b,c", "-1,1,1"):
        with pytest.raises(ValueError, match=rf"--spacing '{bad}': expected none, export, or 1 or 3 positive numbers"):
            resolve_spacing(bad, None, {}, "e")
    with pytest.raises(ValueError, match="--spacing export: encoder old.pt records no pretraining spacing"):
        resolve_spacing("export", None, {"preprocessing": {}}, "old.pt")
    two = {"preprocessing": {"ct": {"spacing": [1, 1, 1]}, "mri": {"spacing": [2, 2, 2]}}}
    with pytest.raises(ValueError, match=r"pretrained on 2 domains \(ct, mri\); pass --domain NAME"):
        resolve_spacing("export", None, two, "e.pt")
    assert resolve_spacing("export", "mri", two, "e.pt") == (2.0, 2.0, 2.0)


def test_cli_spacing(tasks: Path, encoder: Path, capsys: pytest.CaptureFixture) -> None:
    code = cli_main(["eval", "segment", "--encoder", str(encoder), "--data", str(tasks), "--steps", "1",
                     "--spacing", "export", "--domain", "ct", "--feature-size", "8"])
    out = capsys.readouterr().out
    assert code == 0 and ", at 20x20x20 mm by crops" in out
    code = cli_main(["eval", "segment", "--encoder", str(encoder), "--data", str(tasks), "--steps", "1",
                     "--spacing", "1,2"])
    assert code == 2 and "--spacing '1,2'" in capsys.readouterr().err


def test_classify_at_the_pretraining_spacing(tasks: Path, encoder: Path, capsys: pytest.CaptureFixture) -> None:
    """classify --spacing: whole volumes at the spacing, padded to one size on the patch grid, the
    encoder's position grid rebuilt for it."""
    from mixpretrain.eval.classify import ClassifyConfig, run_classification

    result = run_classification(encoder, tasks / "classification.csv",
                                ClassifyConfig(mode="both", probe_steps=3, finetune_steps=1, batch_size=2, spacing="5"))
    # 32 voxels of 10 mm at 5 mm: 63 voxels, rounded up to the 8-voxel patch grid
    assert result["spacing"] == [5.0, 5.0, 5.0] and result["img_size"] == [64, 64, 64]
    assert 0.0 <= result["probe"]["accuracy"] <= 1.0 and 0.0 <= result["finetune"]["accuracy"] <= 1.0
    assert "more than 2x off the nearest pretraining spacing (ct: 20x20x20 mm)" in result["scale"]["note"]
    code = cli_main(["eval", "classify", "--encoder", str(encoder), "--data", str(tasks / "classification.csv"),
                     "--mode", "probe", "--probe-steps", "2", "--spacing", "export"])
    out = capsys.readouterr().out
    assert code == 0 and ", at 20x20x20 mm, 16x16x16 voxels" in out
