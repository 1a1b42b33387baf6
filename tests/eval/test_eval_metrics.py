"""Downstream metrics and input checks on their own (no model is trained): Dice of a class no
held-out case has, classification metrics of non-finite probabilities, the linear probe's
standardisation with one training row, label values of segmentation volumes (checked as read,
before the resize), CSV labels and splits, and images in both splits."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from mixpretrain.eval.classify import (
    ClassifyConfig,
    classification_metrics,
    linear_probe,
    read_classification_csv,
    run_classification,
)
from mixpretrain.eval.common import check_label_values, load_volumes
from mixpretrain.eval.segment import dice_per_class, read_decathlon
from mixpretrain.eval.splits import check_disjoint, check_train_has_classes

CPU = torch.device("cpu")


class _LabelEcho(torch.nn.Module):
    """'Predicts' the label stored in the input's channel 0 (one-hot logits over ``k`` classes)."""

    def __init__(self, k: int) -> None:
        super().__init__()
        self.k = k

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.one_hot(x[:, 0].long(), self.k).permute(0, 4, 1, 2, 3).float()


def test_dice_of_a_class_no_case_has_is_nan_and_the_others_are_unchanged() -> None:
    truth = torch.zeros(3, 1, 4, 4, 4, dtype=torch.long)
    truth[:, 0, :2] = 1  # class 1 in every case; class 2 in none
    pred = truth.clone().float()
    pred[0, 0, 0] = 0  # case 0: 16 of its 32 class-1 voxels missed -> Dice 2*16/(16+32)
    pred[1, 0, 3, 0, 0] = 2  # a class-2 voxel predicted where no case has class 2
    out = dice_per_class(_LabelEcho(3), pred, truth, 3, batch_size=2, device=CPU)
    assert out["dice"][0] == pytest.approx((2 * 16 / 48 + 1 + 1) / 3)
    assert math.isnan(out["dice"][1])  # MONAI's mean_batch gives 0.0 here
    assert out["cases"] == [3, 0] and out["false_positive_cases"] == [0, 1]
    empty = dice_per_class(_LabelEcho(3), torch.zeros(2, 1, 4, 4, 4), torch.zeros(2, 1, 4, 4, 4, dtype=torch.long),
                           3, batch_size=2, device=CPU)
    assert all(math.isnan(d) for d in empty["dice"]) and empty["cases"] == [0, 0]


def test_non_finite_probabilities_give_nan_metrics_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    nan = float("nan")
    for labels in ([0, 1], [1, 0], [0, 1, 0, 1], [1, 1, 0, 0]):  # were AUC 1.0 / 0.0 / 0.75 / 0.0, accuracy 0.5
        with caplog.at_level(logging.WARNING):
            out = classification_metrics(torch.full((len(labels), 2), nan), torch.tensor(labels), 2)
        assert math.isnan(out["accuracy"]) and math.isnan(out["auc"])
        assert f"{len(labels)} of {len(labels)} val rows have non-finite class probabilities" in out["note"]
        assert "accuracy and AUC undefined" in caplog.text
    one_bad = torch.tensor([[0.9, 0.1], [0.2, 0.8], [nan, nan]])
    assert math.isnan(classification_metrics(one_bad, torch.tensor([0, 1, 1]), 2)["auc"])
    inf = torch.tensor([[0.9, 0.1], [0.0, float("inf")]])
    assert math.isnan(classification_metrics(inf, torch.tensor([0, 1]), 2)["accuracy"])
    good = classification_metrics(torch.tensor([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]]), torch.tensor([0, 1, 1]), 2)
    assert good == {"accuracy": pytest.approx(2 / 3), "auc": 1.0}  # finite probabilities: no note


class _Flatten(torch.nn.Module):
    def forward_pooled(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1)


def test_linear_probe_standardisation_never_makes_nan() -> None:
    """One training row: its std is NaN (unbiased); features are then centred, not scaled."""
    data = {"x_train": torch.tensor([[1.0, 2.0, 3.0]]), "y_train": torch.tensor([0]),
            "x_val": torch.tensor([[1.0, 2.0, 3.5], [0.0, 0.0, 0.0]]), "y_val": torch.tensor([0, 1])}
    out = linear_probe(_Flatten(), data, 2, ClassifyConfig(probe_steps=5), CPU)
    assert "note" not in out and math.isfinite(out["accuracy"]) and math.isfinite(out["auc"])


def test_label_values_are_whole_class_numbers_in_range() -> None:
    ok = torch.tensor([[0.0, 1.0], [4.0, 2.0]])
    check_label_values(ok, "ok.nii.gz", 5)
    check_label_values(ok.long(), "ok.nii.gz", 5)
    cases = [
        (torch.tensor([0.0, -1.0, 2.0]), r"neg.nii.gz: 1 voxel\(s\) hold value\(s\) -1 outside the allowed class numbers 0..4"),
        (torch.tensor([0, 7, 9, 9]), r"3 voxel\(s\) hold value\(s\) 7, 9 outside the allowed class numbers 0..4"),
        (torch.tensor([0.0, 2.6, 2.6]), r"2 voxel\(s\) hold non-integer value\(s\) 2.6; labels must be whole class numbers 0..4"),
        (torch.tensor([1.0, float("nan"), float("nan")]), r"2 voxel\(s\) hold non-integer value\(s\) nan;"),
        (torch.arange(-7.0, 0.0), r"hold value\(s\) -7, -6, -5, -4, -3, ... \(7 distinct\) outside"),
    ]
    for values, message in cases:
        with pytest.raises(ValueError, match=message):
            check_label_values(values, "neg.nii.gz", 5)
    with pytest.raises(ValueError, match=r"dataset.json 'labels' has 5 classes"):
        check_label_values(torch.tensor([5]), "x", 5)


def _nifti(path: Path, array: np.ndarray) -> str:
    nib.save(nib.Nifti1Image(array, np.eye(4)), str(path))
    return str(path)


def test_a_bad_label_voxel_is_found_before_the_resize(tmp_path: Path) -> None:
    """A nearest-neighbour downsample 8^3 -> 4^3 keeps the even voxels: a 9 at (1, 1, 1) vanished."""
    image = _nifti(tmp_path / "img.nii.gz", np.zeros((8, 8, 8), np.float32))
    label = np.zeros((8, 8, 8), np.uint8)
    label[1, 1, 1] = 9
    item = {"image": image, "label": _nifti(tmp_path / "lab.nii.gz", label)}
    out = load_volumes([item], [4, 4, 4], with_label=True)  # unchecked: the 9 is gone
    assert int(out[0]["label"].max()) == 0
    with pytest.raises(ValueError, match=r"lab.nii.gz: 1 voxel\(s\) hold value\(s\) 9 outside the allowed class numbers 0..4"):
        load_volumes([item], [4, 4, 4], with_label=True, classes=5)
    label[1, 1, 1] = 3
    item["label"] = _nifti(tmp_path / "lab.nii.gz", label)
    assert int(load_volumes([item], [8, 8, 8], with_label=True, classes=5)[0]["label"].max()) == 3


def _csv(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "c.csv"
    path.write_text("image,label,split\n" + body)
    return path


def test_csv_labels_must_be_whole_numbers(tmp_path: Path) -> None:
    rows = "a.nii.gz,0,train\nb.nii.gz,{},train\nc.nii.gz,0,val\nd.nii.gz,1,val\n"
    train, _ = read_classification_csv(_csv(tmp_path, rows.format("1.0")))
    assert [it["label"] for it in train] == [0, 1]
    for bad in ("1.5", "-1", "nan", "inf", "one"):
        with pytest.raises(ValueError, match=rf"c.csv line 3: label '{bad}' is not an integer class \(0, 1, ..., K-1\)"):
            read_classification_csv(_csv(tmp_path, rows.format(bad)))


def test_csv_splits(tmp_path: Path) -> None:
    base = "a.nii.gz,0,train\nb.nii.gz,1,train\nc.nii.gz,0,val\n"
    train, val = read_classification_csv(_csv(tmp_path, base + "d.nii.gz,1,Validation\n"))
    assert len(train) == 2 and len(val) == 2
    with pytest.raises(ValueError, match=r"line 5: split 'test' is not train or val \(a test split is not read"):
        read_classification_csv(_csv(tmp_path, base + "d.nii.gz,1,test\n"))
    with pytest.raises(ValueError, match=r"1 image\(s\) in both the training and the val split: .*a.nii.gz"):
        read_classification_csv(_csv(tmp_path, base + "./x/../a.nii.gz,0,val\n"))  # same file, other spelling
    with pytest.raises(ValueError, match="need at least 2 train rows .*got 1"):
        read_classification_csv(_csv(tmp_path, "a.nii.gz,0,train\nc.nii.gz,0,val\nd.nii.gz,1,val\n"))


def test_held_out_classes_must_be_in_training() -> None:
    check_train_has_classes({0, 1, 2}, {0, 2}, "src")
    with pytest.raises(ValueError, match=r"src: class\(es\) 1 in the val split but in no training case"):
        check_train_has_classes({0}, {0, 1}, "src")
    with pytest.raises(ValueError, match=r"class\(es\) 4 \(lesion\) in the validation split"):
        check_train_has_classes({0, 1}, {0, 1, 4}, "src", {4: "lesion"}, "validation")
    check_disjoint([{"image": "/a"}], [{"image": "/b"}], "src")


def test_decathlon_case_in_both_splits_is_an_error(tmp_path: Path) -> None:
    cases = [{"image": f"./imagesTr/c{i}.nii.gz", "label": f"./labelsTr/c{i}.nii.gz"} for i in range(4)]
    spec = {"labels": {"0": "background", "1": "x"}, "training": cases[:3], "validation": cases[2:]}
    (tmp_path / "dataset.json").write_text(json.dumps(spec))
    with pytest.raises(ValueError, match=r"1 image\(s\) in both the training and the validation split: .*c2.nii.gz"):
        read_decathlon(tmp_path)
    spec["training"] = cases[:3] + [cases[0]]  # no validation key: every 4th training case is held out
    del spec["validation"]
    (tmp_path / "dataset.json").write_text(json.dumps(spec))
    with pytest.raises(ValueError, match=r"in both the training and the held-out \(every 4th training case\) split"):
        read_decathlon(tmp_path)


def test_classify_refuses_a_val_class_missing_from_training(tmp_path: Path) -> None:
    """Checked before the encoder or any image is read (neither exists here)."""
    path = _csv(tmp_path, "a.nii.gz,0,train\nb.nii.gz,0,train\nc.nii.gz,0,val\nd.nii.gz,1,val\n")
    with pytest.raises(ValueError, match=r"c.csv: class\(es\) 1 in the val split but in no training case"):
        run_classification(tmp_path / "enc.pt", path, ClassifyConfig(mode="probe"))


def test_cli_prints_why_a_metric_is_undefined() -> None:
    """Notes nested anywhere in a result (segment's absent class, classify's NaN probabilities)."""
    from mixpretrain.eval.commands import _notes

    result = {"notes": ["lesion: no validation case has it"], "scratch": {"notes": ["x"]},
              "probe": {"metrics": {"note": "2 of 2 val rows have non-finite class probabilities"}}}
    assert _notes(result) == ["lesion: no validation case has it", "scratch: x",
                              "probe: metrics: 2 of 2 val rows have non-finite class probabilities"]
