"""Downstream evaluation: phantom tasks, classification, segmentation, bad inputs, CLI."""

from __future__ import annotations

import csv
import json
import math
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from mixpretrain.cli import main as cli_main
from mixpretrain.eval import commands, phantom_tasks
from mixpretrain.eval.classify import ClassifyConfig, read_classification_csv, run_classification
from mixpretrain.eval.phantom_tasks import write_phantom_tasks
from mixpretrain.eval.segment import SegmentConfig, _ratio, dice_per_class, read_decathlon, run_segmentation
from mixpretrain.models import build_mae, save_encoder

SIZE = 16


@pytest.fixture(scope="module")
def tasks(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("tasks")
    write_phantom_tasks(out, cases=8, size=SIZE, seed=3)
    return out


@pytest.fixture(scope="module")
def encoder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    model = build_mae("custom", img_size=SIZE, patch_size=8, width=32, depth=3, heads=2)
    return save_encoder(model, tmp_path_factory.mktemp("enc") / "encoder.pt")


def _copy(tasks: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "copy"
    shutil.copytree(tasks, dst)
    return dst


def test_phantom_tasks_layout_and_determinism(tasks: Path, tmp_path: Path) -> None:
    spec = json.loads((tasks / "dataset.json").read_text())
    assert spec["labels"]["4"] == "lesion" and spec["numTraining"] + spec["numValidation"] == 8
    rows = list(csv.DictReader((tasks / "classification.csv").open()))
    assert {r["label"] for r in rows} == {"0", "1"}
    for split in ("train", "val"):  # both classes in both splits
        assert {r["label"] for r in rows if r["split"] == split} == {"0", "1"}
    for r in rows:  # the classification label says whether the mask holds a lesion
        label = np.asarray(nib.load(tasks / r["image"].replace("imagesTr", "labelsTr")).dataobj)
        assert (label == 4).any() == (r["label"] == "1")
        assert (label == 1).any()  # liver always present
    again = write_phantom_tasks(tmp_path / "again", cases=8, size=SIZE, seed=3)
    a = np.asarray(nib.load(tasks / "imagesTr/case_0005.nii.gz").dataobj)
    b = np.asarray(nib.load(Path(again["out_dir"]) / "imagesTr/case_0005.nii.gz").dataobj)
    np.testing.assert_array_equal(a, b)
    with pytest.raises(FileExistsError, match="overwrite"):
        write_phantom_tasks(tmp_path / "again", cases=8, size=SIZE, seed=3)


def _lesion_stats(root: Path) -> tuple[int, list[float]]:
    """(lesion voxels over all cases, liver-minus-lesion mean intensity per lesion case)."""
    voxels, gaps = 0, []
    for lab_path in sorted((root / "labelsTr").iterdir()):
        lab = np.asarray(nib.load(lab_path).dataobj)
        img = np.asarray(nib.load(root / "imagesTr" / lab_path.name).dataobj)
        voxels += int((lab == 4).sum())
        if (lab == 4).any() and (lab == 1).any():  # a big lesion can swallow a 16^3 liver
            gaps.append(float(img[lab == 1].mean() - img[lab == 4].mean()))
    return voxels, gaps


def test_phantom_lesion_size_and_contrast_options(tmp_path: Path) -> None:
    write_phantom_tasks(tmp_path / "base", cases=4, size=SIZE, seed=3, lesion_radius=(0.25, 0.25))
    strong = write_phantom_tasks(tmp_path / "strong", cases=4, size=SIZE, seed=3, lesion_radius=(0.25, 0.25),
                                 lesion_contrast=3.0)
    big = write_phantom_tasks(tmp_path / "big", cases=4, size=SIZE, seed=3, lesion_radius=(0.45, 0.45))
    assert strong["lesion_contrast"] == 3.0 and big["lesion_radius"] == [0.45, 0.45]
    (n_base, gap_base), (n_strong, gap_strong) = _lesion_stats(tmp_path / "base"), _lesion_stats(tmp_path / "strong")
    assert n_strong == n_base > 0  # contrast changes the image only, not the labels
    # CT lesion 15 HU in a 60 HU liver; x3: -75 HU, i.e. 90 HU (0.18 of the window) darker, less after blur.
    assert gap_base
    for g1, g3 in zip(gap_base, gap_strong, strict=True):
        assert g3 > g1 + 0.05 and g3 > 0
    assert _lesion_stats(tmp_path / "big")[0] > n_base
    for bad in ({"lesion_radius": (0.2, 0.1)}, {"lesion_radius": (0.0, 0.1)}, {"lesion_contrast": 0.0}):
        with pytest.raises(ValueError, match="lesion_"):
            write_phantom_tasks(tmp_path / "bad", cases=4, size=SIZE, **bad)
    assert commands.LESION_RADIUS == phantom_tasks.LESION_RADIUS  # CLI default = library default
    assert commands.VAL_FRACTION == phantom_tasks.VAL_FRACTION


def test_phantom_tasks_val_fraction(tmp_path):
    half = write_phantom_tasks(tmp_path / "half", cases=8, size=SIZE, seed=1, val_fraction=0.5)
    assert half["val_cases"] == 4
    dataset = json.loads((tmp_path / "half" / "dataset.json").read_text())
    assert len(dataset["training"]) == 4 and len(dataset["validation"]) == 4
    assert write_phantom_tasks(tmp_path / "most", cases=6, size=SIZE, val_fraction=0.99)["val_cases"] == 4  # 2 kept for training
    with pytest.raises(ValueError, match="val_fraction"):
        write_phantom_tasks(tmp_path / "bad", cases=4, size=SIZE, val_fraction=1.0)


class _LabelEcho(torch.nn.Module):
    """'Predicts' the label stored in the input's channel 0 (one-hot logits)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 10.0 * torch.nn.functional.one_hot(x[:, 0].long(), 3).permute(0, 4, 1, 2, 3).float()


def test_dice_per_class_counts_cases_and_false_positives() -> None:
    truth = torch.zeros(3, 1, 4, 4, 4, dtype=torch.long)
    truth[:, 0, :2] = 1  # class 1 in every case
    truth[0, 0, 3, :2, :2] = 2  # class 2 (the "lesion") in case 0 only
    pred = truth.clone().float()
    pred[1, 0, 3, 0, 0] = 2  # a false-positive class-2 voxel in case 1
    out = dice_per_class(_LabelEcho(), pred, truth, 3, batch_size=2, device=torch.device("cpu"))
    assert out["dice"] == [1.0, 1.0]  # class 2: over case 0 only; case 1's false positive is not in Dice
    assert out["cases"] == [3, 1] and out["false_positive_cases"] == [0, 1]


def test_ratio_edge_cases() -> None:
    assert _ratio(0.5, 0.25) == 2.0 and _ratio(0.5, 0.0) == math.inf
    assert math.isnan(_ratio(0.0, 0.0)) and math.isnan(_ratio(float("nan"), 0.3))


def test_classify_probe_and_finetune_report_metrics(tasks: Path, encoder: Path) -> None:
    cfg = ClassifyConfig(probe_steps=50, finetune_steps=3, batch_size=4)
    result = run_classification(encoder, tasks / "classification.csv", cfg)
    assert result["n_train"] == 6 and result["n_val"] == 2 and result["img_size"] == [SIZE] * 3
    for mode in ("probe", "finetune"):
        assert 0.0 <= result[mode]["accuracy"] <= 1.0
        assert 0.0 <= result[mode]["auc"] <= 1.0  # both classes in val: AUC defined


def test_segment_reports_dice_per_class_pretrained_and_scratch(tasks: Path, encoder: Path) -> None:
    cfg = SegmentConfig(steps=3, batch_size=2, feature_size=8)
    result = run_segmentation(encoder, tasks, cfg, compare_scratch=True)
    for init in ("pretrained", "scratch"):
        dice = result[init]["dice"]
        assert list(dice) == ["liver", "spleen", "kidney", "lesion"]
        assert all(math.isnan(v) or 0.0 <= v <= 1.0 for v in dice.values())
        assert math.isfinite(result[init]["final_train_loss"])
        assert set(result[init]["dice_cases"]) == set(dice) == set(result[init]["false_positive_cases"])
        assert result[init]["dice_cases"]["liver"] == result["n_val"]
    assert "mean_dice_ratio_pretrained_vs_scratch" in result
    assert list(result["dice_ratio_pretrained_vs_scratch"]) == list(dice)
    assert "include_background': False" in result["loss"]


def test_patch_size_mismatch_is_a_clear_error(tasks: Path, encoder: Path) -> None:
    with pytest.raises(ValueError, match=r"exported with patch size \[8, 8, 8\].*\[16, 16, 16\] was requested"):
        run_segmentation(encoder, tasks, SegmentConfig(steps=1, patch_size=16))
    with pytest.raises(ValueError, match="patch size"):
        run_classification(encoder, tasks / "classification.csv", ClassifyConfig(patch_size=4))


def test_missing_labels_are_clear_errors(tasks: Path, encoder: Path, tmp_path: Path) -> None:
    data = _copy(tasks, tmp_path)
    lines = (data / "classification.csv").read_text().splitlines()
    lines[2] = lines[2].split(",")[0] + ",,train"
    (data / "classification.csv").write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match="line 3: missing label"):
        read_classification_csv(data / "classification.csv")
    (data / "nolabelcol.csv").write_text("image,split\nimagesTr/case_0000.nii.gz,train\n")
    with pytest.raises(ValueError, match=r"missing column\(s\) \['label'\]"):
        read_classification_csv(data / "nolabelcol.csv")

    spec = json.loads((data / "dataset.json").read_text())
    del spec["training"][0]["label"]
    (data / "dataset.json").write_text(json.dumps(spec))
    with pytest.raises(ValueError, match=r"training\[0\].*has no 'label'"):
        read_decathlon(data)
    spec = json.loads((tasks / "dataset.json").read_text())
    (data / "dataset.json").write_text(json.dumps(spec))
    (data / "labelsTr/case_0001.nii.gz").unlink()  # case 1 is in training
    with pytest.raises(FileNotFoundError, match="label file .*case_0001.nii.gz does not exist"):
        run_segmentation(encoder, data, SegmentConfig(steps=1))


def test_missing_dataset_json_keys(tasks: Path, tmp_path: Path) -> None:
    data = _copy(tasks, tmp_path)
    spec = json.loads((data / "dataset.json").read_text())
    del spec["labels"]
    (data / "dataset.json").write_text(json.dumps(spec))
    with pytest.raises(ValueError, match=r"missing key\(s\) \['labels'\]"):
        read_decathlon(data)


def test_image_label_shape_mismatch(tasks: Path, encoder: Path, tmp_path: Path) -> None:
    data = _copy(tasks, tmp_path)
    target = data / "labelsTr/case_0001.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((SIZE, SIZE, SIZE - 2), np.uint8), np.eye(4)), str(target))
    with pytest.raises(ValueError, match=r"case_0001.nii.gz and its label .* different voxel grids \(shape \(16, 16, 16\) vs \(16, 16, 14\)\)"):
        run_segmentation(encoder, data, SegmentConfig(steps=1))


def test_cli_synth_tasks_and_errors(tmp_path: Path, encoder: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "cli_tasks"
    assert cli_main(["eval", "synth-tasks", "--out", str(out), "--cases", "4", "--size", "16"]) == 0
    assert (out / "dataset.json").is_file() and (out / "classification.csv").is_file()
    assert cli_main(["eval", "synth-tasks", "--out", str(out), "--cases", "4", "--size", "16"]) == 2
    assert "overwrite" in capsys.readouterr().err
    code = cli_main(["eval", "segment", "--encoder", str(encoder), "--data", str(out), "--patch-size", "16"])
    assert code == 2 and "patch size" in capsys.readouterr().err


def test_segment_class_in_no_validation_case_is_nan_and_left_out_of_the_mean(tasks: Path, encoder: Path,
                                                                             tmp_path: Path) -> None:
    data = _copy(tasks, tmp_path)
    spec = json.loads((data / "dataset.json").read_text())
    cases = spec["training"] + spec["validation"]
    lesion_free = {r["image"] for r in csv.DictReader((tasks / "classification.csv").open()) if r["label"] == "0"}
    spec["validation"] = [c for c in cases if c["image"].removeprefix("./") in lesion_free][:2]
    spec["training"] = [c for c in cases if c not in spec["validation"]]
    (data / "dataset.json").write_text(json.dumps(spec))
    result = run_segmentation(encoder, data, SegmentConfig(steps=1, batch_size=2, feature_size=8))
    r = result["pretrained"]
    assert r["dice_cases"]["lesion"] == 0 and math.isnan(r["dice"]["lesion"])  # was 0.0
    assert r["mean_dice"] == pytest.approx(np.mean([r["dice"][c] for c in ("liver", "spleen", "kidney")]))
    assert result["notes"] == ["lesion: no validation case has it (Dice undefined, left out of mean_dice)"]


def test_segment_label_values_are_checked_as_read(tasks: Path, encoder: Path, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture) -> None:
    data = _copy(tasks, tmp_path)
    target = data / "labelsTr/case_0001.nii.gz"  # a training case
    original = nib.load(target)
    for value, message in ((-1, "value(s) -1 outside the allowed class numbers 0..4"),
                           (2.6, "non-integer value(s) 2.6; labels must be whole class numbers 0..4")):
        label = np.asarray(original.dataobj).astype(np.float32)
        label[0, 0, 0] = value
        nib.save(nib.Nifti1Image(label, original.affine), str(target))
        code = cli_main(["eval", "segment", "--encoder", str(encoder), "--data", str(data), "--steps", "1"])
        err = capsys.readouterr().err
        assert code == 2 and f"label {target}: 1 voxel(s) hold {message}" in err  # was a RuntimeError / rounded


def test_segment_validation_class_missing_from_training_is_an_error(tasks: Path, encoder: Path, tmp_path: Path) -> None:
    data = _copy(tasks, tmp_path)
    spec = json.loads((data / "dataset.json").read_text())
    spec["labels"]["5"] = "cyst"
    (data / "dataset.json").write_text(json.dumps(spec))
    target = data / spec["validation"][0]["label"]
    label = np.asarray(nib.load(target).dataobj).copy()
    label[0, 0, 0] = 5
    nib.save(nib.Nifti1Image(label, nib.load(target).affine), str(target))
    with pytest.raises(ValueError, match=r"class\(es\) 5 \(cyst\) in the validation split but in no training case"):
        run_segmentation(encoder, data, SegmentConfig(steps=1))


def test_classify_scratch_finetune_init_does_not_depend_on_mode(tasks: Path, encoder: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """The fine-tune encoder is built right after seeding: --mode both and --mode finetune start from
    the same scratch init (before, the probe's use of the RNG changed it), which is the probe's too."""
    from mixpretrain.eval import classify

    seen: dict[str, list[torch.Tensor]] = {}

    def spy(name: str, fn):  # noqa: ANN202
        def wrapped(encoder, *args, **kwargs):  # noqa: ANN001, ANN202
            seen.setdefault(name, []).append(torch.cat([p.detach().flatten().clone() for p in encoder.parameters()]))
            return fn(encoder, *args, **kwargs)
        return wrapped

    monkeypatch.setattr(classify, "finetune", spy("finetune", classify.finetune))
    monkeypatch.setattr(classify, "linear_probe", spy("probe", classify.linear_probe))
    csv_path = tasks / "classification.csv"
    for mode in ("both", "finetune"):
        run_classification(encoder, csv_path, ClassifyConfig(mode=mode, scratch=True, probe_steps=1, finetune_steps=1))
    both, alone = seen["finetune"]
    assert torch.equal(both, alone) and torch.equal(both, seen["probe"][0])
