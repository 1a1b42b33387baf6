"""DICOM series integrity: files GDCM leaves out of a series and missing slices are recorded, never
silently dropped or interpolated over (copies of the real tilted head CT series, 28 slices)."""

from __future__ import annotations

import csv
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest

from mixpretrain.data import shards as S
from mixpretrain.data.ingest import cases_from_inputs, cases_from_manifest, ingest
from mixpretrain.data.readers import ReadError, _slice_gaps, discover, read_volume

SERIES = "ct/dcmqa_ct_GE_head_tilt_dicom"  # 01..28.dcm: 4 mm slices, one 1.08 mm step, then 7 mm


def _copy(real_data_dir: Path, dest: Path) -> Path:
    shutil.copytree(real_data_dir / SERIES, dest)
    for f in dest.iterdir():
        f.chmod(0o644)  # the real scans are read-only
    return dest


def _truncate(path: Path, keep: int) -> None:
    path.write_bytes(path.read_bytes()[:keep])


def _samples(out: Path):
    import webdataset as wds

    return wds.WebDataset(S.shard_urls(out, "ct", "train") + S.shard_urls(out, "ct", "val"), shardshuffle=False)


def test_slice_gap_rule():
    ge = [4.0] * 13 + [1.08] + [7.0] * 13  # the real series' steps: a change of spacing is no gap
    assert _slice_gaps(np.array(ge)) == {}
    assert _slice_gaps(np.array([4.0, 4.0, 2.0, 6.0, 4.0, 4.0, 4.0, 3.0, 5.0, 4.0])) == {}  # uneven, no hole
    assert _slice_gaps(np.array([1.5] * 119)) == {}
    assert list(_slice_gaps(np.array(ge[:8] + [8.0] + ge[10:]))) == [8]  # one slice missing
    assert list(_slice_gaps(np.array([8.0] + ge[2:]))) == [0]  # the second slice missing
    assert list(_slice_gaps(np.array([4.0] * 5 + [12.0] + [4.0] * 5))) == [5]  # two in a row
    # Gaps close together do not hide each other.
    assert list(_slice_gaps(np.array([4.0] * 3 + [8.0, 8.0, 4.0, 8.0] + [4.0] * 3 + ge[13:]))) == [3, 4, 6]


def test_real_dicom_folders_have_no_left_out_files(real_data_dir):
    found = discover([real_data_dir])
    assert sum(s.is_dicom for s in found) == 2 and not any(s.left_out for s in found)


def test_truncated_files_are_recorded_and_the_rest_of_the_series_ingests(tmp_path, real_data_dir, caplog):
    folder = _copy(real_data_dir, tmp_path / "scans" / "head")
    _truncate(folder / "28.dcm", 200)  # cut inside the header
    _truncate(folder / "01.dcm", 300_000)  # cut inside the pixel data
    found = discover([folder])
    assert [s.path.name for s in found if s.left_out] == ["01.dcm", "28.dcm"]
    with pytest.raises(ReadError, match=r"28\.dcm: left out of the DICOM series in its folder: truncated file"):
        read_volume(next(s for s in found if s.path.name == "28.dcm"))

    out = tmp_path / "shards"
    with caplog.at_level(logging.WARNING, logger="mixpretrain.data.ingest"):
        summary = ingest(cases_from_inputs([tmp_path / "scans"], "ct", "ct"), out, progress=False)
    assert summary["ct"]["written"] == 1 and summary["ct"]["skipped"] == 2
    entry = S.load_index(out)["domains"]["ct"]
    assert entry["skipped"] == 2 and list(entry["cases"]) == ["head"]
    reasons = {Path(f["path"]).name: f["reason"] for f in entry["skipped_files"]}
    assert reasons == {
        "01.dcm": "left out of the DICOM series in its folder: truncated file "
                  "(300000 bytes, pixel data 298060 of 524288 bytes)",
        "28.dcm": "left out of the DICOM series in its folder: truncated file (200 bytes, ends before the pixel data)",
    }
    assert {f["case_id"] for f in entry["skipped_files"]} == {"head_01", "head_28"}
    for name in ("01.dcm", "28.dcm"):
        assert any(r.levelname == "WARNING" and name in r.getMessage() and "truncated" in r.getMessage()
                   for r in caplog.records), name
    (meta,) = [S.decode_sample(s)[1] for s in _samples(out)]
    assert meta["source"]["files"] == 26


def test_missing_slices_skip_the_series_with_the_gap_named(tmp_path, real_data_dir, caplog):
    # The tester's case: a truncated middle slice (left out by GDCM) and a deleted one.
    folder = _copy(real_data_dir, tmp_path / "holes")
    _truncate(folder / "05.dcm", 200)
    (folder / "10.dcm").unlink()
    out = tmp_path / "shards"
    with caplog.at_level(logging.WARNING, logger="mixpretrain.data.ingest"):
        summary = ingest(cases_from_inputs([folder], "ct", "ct"), out, progress=False)
    assert summary["ct"]["written"] == 0 and summary["ct"]["skipped"] == 2
    entry = S.load_index(out)["domains"]["ct"]
    series, left_out = entry["skipped_files"]
    assert series["path"].startswith(f"{folder} [series ") and series["case_id"] == "holes"
    assert series["reason"].startswith("gap in the DICOM series (missing slices?) between 04.dcm and 06.dcm "
                                       "(-21.66 to -13.66 mm along the slice normal): 8.00 mm apart, expected about 4.00 mm; "
                                       "between 09.dcm and 11.dcm ")
    assert "not interpolated" in series["reason"]
    assert left_out["path"] == str(folder / "05.dcm") and "truncated file (200 bytes" in left_out["reason"]
    logged = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert any(str(folder) in m and "gap in the DICOM series" in m for m in logged)
    assert entry["samples"] == 0 and entry["skipped"] == 2


def test_untouched_series_still_ingests_and_manifest_ids_are_stable(tmp_path, real_data_dir):
    summary = ingest(cases_from_inputs([real_data_dir / SERIES], "ct", "ct"), tmp_path / "shards", progress=False)
    assert summary["ct"]["written"] == 1 and summary["ct"]["skipped"] == 0
    # A manifest row naming a folder with a bad file keeps the series' case id; the file gets its own.
    folder = _copy(real_data_dir, tmp_path / "series")
    _truncate(folder / "28.dcm", 200)
    manifest = tmp_path / "cases.csv"
    with open(manifest, "w", newline="") as f:
        csv.writer(f).writerows([["path", "modality", "domain", "case_id"], [str(folder), "ct", "ct", "subj1"]])
    assert [c.case_id for c in cases_from_manifest(manifest)] == ["subj1", "subj1_28"]
