"""`mixpretrain eval classify | segment`: per-command help, step-count checks and the errors for
inputs of the wrong kind (a folder for a CSV, a run folder for an encoder file, a CSV for a Decathlon
dataset). Every error is one line on stderr and exit code 2; none of these tests trains a model."""

from __future__ import annotations

import logging
import re
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from mixpretrain.cli import main as cli_main
from mixpretrain.eval import commands
from mixpretrain.eval.classify import ClassifyConfig, read_classification_csv, run_classification
from mixpretrain.eval.common import (
    _NVIMGCODEC_LOG,
    _NVIMGCODEC_LOGGER,
    _quiet_nvimgcodec,
    check_steps,
    load_pretrained,
    load_volumes,
)
from mixpretrain.eval.segment import EXPECTED, SegmentConfig, read_decathlon, run_segmentation

NVIMGCODEC_WARNING = ("NvImgCodecPydicomReader: nvImageCodec decoder plugin did not register successfully. "
                      "Falling back to default pydicom decoders.")


@pytest.fixture
def csv_file(tmp_path: Path) -> Path:
    """A well-formed classification CSV (its images need not exist: every error here comes first)."""
    path = tmp_path / "tasks" / "classification.csv"
    path.parent.mkdir()
    path.write_text("image,label,split\na.nii.gz,0,train\nb.nii.gz,1,train\nc.nii.gz,0,val\nd.nii.gz,1,val\n")
    return path


def _err(capsys: pytest.CaptureFixture, argv: list[str]) -> str:
    """stderr of a CLI call that must fail with exit code 2 (a handler error or an argparse error)."""
    try:
        code = cli_main(argv)
    except SystemExit as exc:  # argparse
        code = exc.code
    assert code == 2
    return capsys.readouterr().err


def _help(capsys: pytest.CaptureFixture, argv: list[str]) -> str:
    with pytest.raises(SystemExit) as exc:
        cli_main([*argv, "--help"])
    assert exc.value.code == 0
    return " ".join(capsys.readouterr().out.split())  # argparse wraps lines


def test_each_command_has_its_own_data_help_and_shows_defaults(capsys: pytest.CaptureFixture) -> None:
    classify = _help(capsys, ["eval", "classify"])
    segment = _help(capsys, ["eval", "segment"])
    assert "classification CSV with columns image,label[,split]" in classify and "Decathlon" not in classify
    assert "Decathlon dataset folder (imagesTr/, labelsTr/, dataset.json) or its dataset.json" in segment
    assert "classification CSV" not in segment
    assert "(default: 300)" in classify and "(default: 50)" in classify and "batch size (default: 4)" in classify
    assert "(default: 100)" in segment and "batch size (default: 2)" in segment
    assert "--help" in _help(capsys, ["eval"])  # points to the sub-commands' help


def test_cli_batch_size_defaults_match_the_configs() -> None:
    assert commands.CLASSIFY_BATCH_SIZE == ClassifyConfig().batch_size
    assert commands.SEGMENT_BATCH_SIZE == SegmentConfig().batch_size


def test_classify_data_folder_is_a_clear_error(tmp_path: Path, csv_file: Path, capsys: pytest.CaptureFixture) -> None:
    err = _err(capsys, ["eval", "classify", "--encoder", str(tmp_path / "enc.pt"), "--data", str(csv_file.parent)])
    assert f"{csv_file.parent} is a folder: classify expects a CSV of (image, label) rows" in err
    assert f"did you mean {csv_file}?" in err and "does not exist" not in err
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="is a folder: classify expects a CSV") as exc:
        read_classification_csv(empty)
    assert "did you mean" not in str(exc.value)
    (empty / "dataset.json").write_text("{}")
    with pytest.raises(ValueError, match="input of `eval segment`"):
        read_classification_csv(empty)
    with pytest.raises(FileNotFoundError, match="does not exist"):  # a missing path stays "does not exist"
        read_classification_csv(tmp_path / "missing.csv")


def test_encoder_folder_is_a_clear_error(tmp_path: Path, csv_file: Path, capsys: pytest.CaptureFixture) -> None:
    run = tmp_path / "run"
    run.mkdir()
    err = _err(capsys, ["eval", "classify", "--encoder", str(run), "--data", str(csv_file)])
    assert f"encoder {run} is a directory, not an encoder export file" in err and "has no encoder.pt" in err
    (run / "encoder.pt").write_bytes(b"")  # only its existence matters to the message
    err = _err(capsys, ["eval", "classify", "--encoder", str(run), "--data", str(csv_file)])
    assert f"did you mean {run / 'encoder.pt'}?" in err and "does not exist" not in err
    with pytest.raises(ValueError, match="is a directory"):
        load_pretrained(run)


def test_segment_data_of_the_wrong_kind_is_a_clear_error(tmp_path: Path, csv_file: Path,
                                                         capsys: pytest.CaptureFixture) -> None:
    err = _err(capsys, ["eval", "segment", "--encoder", str(tmp_path / "enc.pt"), "--data", str(csv_file)])
    assert f"{csv_file} is a CSV file: segment expects {EXPECTED}" in err and "not valid JSON" not in err
    assert EXPECTED == "a Decathlon dataset folder (imagesTr/, labelsTr/, dataset.json) or its dataset.json"
    with pytest.raises(FileNotFoundError, match=re.escape(f"has no dataset.json: segment expects {EXPECTED}")):
        read_decathlon(csv_file.parent)
    other = tmp_path / "notes.txt"
    other.write_text("not json")
    with pytest.raises(ValueError, match=r"notes.txt is not valid JSON \(.*\): segment expects a Decathlon"):
        read_decathlon(other)
    other.write_text("[1, 2]")
    with pytest.raises(ValueError, match="holds a JSON list, not an object"):
        read_decathlon(other)


@pytest.mark.parametrize(("command", "flag", "value"), [
    ("segment", "--steps", "-1"), ("segment", "--steps", "0"), ("segment", "--batch-size", "0"),
    ("classify", "--probe-steps", "0"), ("classify", "--finetune-steps", "-3"), ("classify", "--finetune-steps", "x"),
])
def test_step_counts_below_one_are_refused(command: str, flag: str, value: str, tmp_path: Path,
                                           capsys: pytest.CaptureFixture) -> None:
    err = _err(capsys, ["eval", command, "--encoder", "enc.pt", "--data", str(tmp_path), flag, value])
    assert f"argument {flag}: " in err and (f"got {value}" in err or f"got {value!r}" in err)


def test_library_refuses_step_counts_below_one_for_the_modes_it_runs(tmp_path: Path, csv_file: Path) -> None:
    with pytest.raises(ValueError, match=r"probe_steps \(--probe-steps\) must be an integer >= 1, got 0"):
        run_classification(tmp_path / "enc.pt", csv_file, ClassifyConfig(probe_steps=0))
    with pytest.raises(ValueError, match=r"finetune_steps \(--finetune-steps\) must be an integer >= 1, got -1"):
        run_classification(tmp_path / "enc.pt", csv_file, ClassifyConfig(mode="finetune", finetune_steps=-1))
    # A mode not run may keep any count: the next check (the missing encoder) is what fails.
    with pytest.raises(FileNotFoundError, match="enc.pt does not exist"):
        run_classification(tmp_path / "enc.pt", csv_file, ClassifyConfig(mode="probe", finetune_steps=0))
    with pytest.raises(ValueError, match=r"steps \(--steps\) must be an integer >= 1, got 0"):
        run_segmentation(tmp_path / "enc.pt", tmp_path, SegmentConfig(steps=0))
    with pytest.raises(ValueError, match=r"batch_size \(--batch-size\)"):
        check_steps("batch_size", 0)
    check_steps("steps", 1)


def test_nvimgcodec_notice_is_dropped_while_the_reader_is_built(monkeypatch: pytest.MonkeyPatch,
                                                               caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.delenv("MONAI_DICOM_READER", raising=False)
    logger = logging.getLogger(_NVIMGCODEC_LOGGER)
    with caplog.at_level(logging.WARNING), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with _quiet_nvimgcodec():
            logger.warning(_NVIMGCODEC_LOG)
            logger.warning("another warning")
            warnings.warn(NVIMGCODEC_WARNING, UserWarning, stacklevel=1)
            warnings.warn("another UserWarning", UserWarning, stacklevel=1)
        logger.warning(_NVIMGCODEC_LOG)  # outside: untouched
    assert [r.getMessage() for r in caplog.records] == ["another warning", _NVIMGCODEC_LOG]
    assert [str(w.message) for w in caught] == ["another UserWarning"]
    assert not logger.filters

    caplog.clear()
    monkeypatch.setenv("MONAI_DICOM_READER", "nvimgcodec")  # asked for: MONAI's notice is kept
    with caplog.at_level(logging.WARNING), _quiet_nvimgcodec():
        logger.warning(_NVIMGCODEC_LOG)
    assert [r.getMessage() for r in caplog.records] == [_NVIMGCODEC_LOG]


def test_loading_volumes_logs_no_nvimgcodec_notice(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.delenv("MONAI_DICOM_READER", raising=False)
    path = tmp_path / "x.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 4), np.float32), np.eye(4)), str(path))
    with caplog.at_level(logging.WARNING), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = load_volumes([{"image": str(path)}, {"image": str(path)}], [4, 4, 4])
        load_volumes([{"image": str(path)}], [4, 4, 4])
    assert len(out) == 2 and tuple(out[0]["image"].shape) == (1, 4, 4, 4)
    assert not [r for r in caplog.records if "nvImageCodec" in r.getMessage()]
    assert not [w for w in caught if "nvImageCodec" in str(w.message)]
