"""Ingest real scans of every format into shards, round-trip them, and handle bad inputs."""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import webdataset as wds

from mixpretrain.data import shards as S
from mixpretrain.data.ingest import assign_split, cases_from_inputs, cases_from_manifest, ingest

REAL = {  # small real scans, one per format, and the modality each is ingested as
    "mri_nii_gz": ("mri/totalseg_example_mr_sm.nii.gz", "mri", "mri_a"),
    "mri_nrrd": ("mri/pyradiomics_breast1_image.nrrd", "mri", "mri_a"),
    "pet_nii": ("pet/juspace_FDOPA_f18.nii", "pet", "pet_a"),
    "ct_dicom": ("ct/dcmqa_ct_GE_head_tilt_dicom", "ct", "ct_a"),
}


def _nifti(path: Path, data: np.ndarray) -> Path:
    nib.save(nib.Nifti1Image(data.astype(np.float32), np.diag([2.0, 2.0, 2.0, 1.0])), str(path))
    return path


def _bad_files(folder: Path, real_data_dir: Path) -> dict[str, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    good = (real_data_dir / REAL["mri_nii_gz"][0]).read_bytes()
    truncated = folder / "truncated.nii.gz"
    truncated.write_bytes(good[: len(good) // 2])
    nan = np.random.default_rng(0).random((16, 16, 16)).astype(np.float32)
    nan[4, 4, 4] = np.nan
    return {
        "truncated": truncated,
        "nan": _nifti(folder / "nan_volume.nii.gz", nan),
        "flat": _nifti(folder / "flat.nii.gz", np.ones((16, 16))),
    }


def _manifest(path: Path, rows: list[dict]) -> Path:
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["path", "modality", "domain", "case_id", "split"])
        w.writeheader()
        w.writerows(rows)
    return path


@pytest.fixture(scope="module")
def ingested(tmp_path_factory, real_data_dir):
    tmp = tmp_path_factory.mktemp("ingest")
    bad = _bad_files(tmp / "bad", real_data_dir)
    rows = [{"path": str(real_data_dir / rel), "modality": mod, "domain": dom, "case_id": name, "split": ""}
            for name, (rel, mod, dom) in REAL.items()]
    rows[0]["split"] = "val"  # an explicit split wins over the hash
    rows += [{"path": str(p), "modality": "mri", "domain": "mri_a", "case_id": "", "split": ""} for p in bad.values()]
    rows.append({"path": "does/not/exist.nii.gz", "modality": "mri", "domain": "mri_a", "case_id": "", "split": ""})
    manifest = _manifest(tmp / "cases.csv", rows)
    out = tmp / "shards"
    summary = ingest(cases_from_manifest(manifest), out, workers=1, val_fraction=0.0, progress=False)
    return out, summary, manifest


def _samples(out: Path, domain: str) -> dict[str, tuple[np.ndarray, dict]]:
    urls = S.shard_urls(out, domain, "train") + S.shard_urls(out, domain, "val")
    return {s["__key__"]: S.decode_sample(s) for s in wds.WebDataset(urls, shardshuffle=False)}


def test_real_formats_roundtrip_through_shards(ingested):
    out, summary, _ = ingested
    assert summary["ct_a"]["written"] == 1 and summary["pet_a"]["written"] == 1
    assert summary["mri_a"]["written"] == 2
    samples = {**_samples(out, "mri_a"), **_samples(out, "pet_a"), **_samples(out, "ct_a")}
    assert set(samples) == set(REAL)
    for key, (vol, meta) in samples.items():
        modality = REAL[key][1]
        assert vol.ndim == 3 and list(vol.shape) == meta["shape"] and vol.dtype == np.float16
        assert meta["orientation"] == "RAS" and meta["modality"] == modality and meta["case_id"] == key
        target = S.load_index(out)["domains"][meta["domain"]]["spacing"]
        np.testing.assert_allclose(meta["spacing"], target, rtol=0.03)  # within rounding of the grid
        assert np.isfinite(vol).all()
        # World extent is preserved by resampling (to within one target voxel).
        src = meta["source"]
        extent_src = np.sort(np.array(src["source_shape"]) * np.array(src["source_spacing"]))
        extent_out = np.sort(np.array(meta["shape"]) * np.array(meta["spacing"]))
        assert np.all(extent_out <= extent_src + 2 * max(target))
    ct, _ = samples["ct_dicom"]
    assert 0.0 <= float(ct.min()) and float(ct.max()) <= 1.0
    assert samples["ct_dicom"][1]["source"]["format"] == "dicom"
    assert samples["ct_dicom"][1]["source"]["gantry_tilt_deg"] != 0
    mri, mri_meta = samples["mri_nii_gz"]
    assert mri_meta["intensity"]["method"] == "mri_percentile_zscore" and -5 < float(mri.min()) < 0 < float(mri.max()) < 10
    assert samples["mri_nrrd"][1]["source"]["format"] == "nrrd"
    pet, pet_meta = samples["pet_nii"]
    assert pet_meta["intensity"]["method"] == "pet_percentile" and float(pet.min()) >= 0


def test_index_records_splits_checksums_and_skips(ingested):
    out, summary, _ = ingested
    index = S.load_index(out)
    mri = index["domains"]["mri_a"]
    assert mri["splits"]["val"]["samples"] == 1 and mri["splits"]["train"]["samples"] == 1  # explicit val row
    assert mri["cases"]["mri_nii_gz"]["split"] == "val"
    assert mri["preprocessing"]["modality"] == "mri" and mri["spacing"] == [1.5, 1.5, 1.5]
    reasons = {Path(f["path"]).name: f["reason"] for f in mri["skipped_files"]}
    assert set(reasons) == {"truncated.nii.gz", "nan_volume.nii.gz", "flat.nii.gz", "exist.nii.gz"}
    assert "unreadable" in reasons["truncated.nii.gz"]
    assert "1 NaN/Inf voxels" in reasons["nan_volume.nii.gz"]
    assert "2-D image" in reasons["flat.nii.gz"] and "not a file" in reasons["exist.nii.gz"]
    assert mri["skipped"] == 4 and index["skipped"] == 4 and summary["mri_a"]["skipped"] == 4
    assert S.verify(out) == []


def test_rerun_resumes_and_adds_only_new_cases(ingested, tmp_path, real_data_dir):
    out, _, manifest = ingested
    before = json.loads((out / "index.json").read_text())
    again = ingest(cases_from_manifest(manifest), out, workers=1, val_fraction=0.0, progress=False)
    assert again["ct_a"] == {**again["ct_a"], "written": 0, "already": 1}
    assert again["mri_a"]["already"] == 2 and again["mri_a"]["skipped"] == 4
    after = json.loads((out / "index.json").read_text())
    for d in before["domains"]:
        assert after["domains"][d]["shards"] == before["domains"][d]["shards"]  # nothing rewritten
    assert after["skipped"] == 4  # the same failures are not double counted
    # A second PET scan: only it is processed; its shard gets the next number.
    extra = cases_from_inputs([real_data_dir / "pet/juspace_D2_raclopride_c11.nii"], "pet_a", "pet")
    res = ingest(extra, out, workers=1, val_fraction=0.0, progress=False)
    assert res["pet_a"]["written"] == 1
    files = [s["file"] for s in S.load_index(out)["domains"]["pet_a"]["shards"]]
    assert files == ["pet_a/train-000000.tar", "pet_a/train-000001.tar"]


def test_conflicting_rerun_needs_overwrite(tmp_path, real_data_dir):
    out = tmp_path / "shards"
    cases = cases_from_inputs([real_data_dir / "pet/juspace_FDOPA_f18.nii"], "p", "pet")
    ingest(cases, out, progress=False)
    with pytest.raises(FileExistsError, match="spacing"):
        ingest(cases, out, spacing=(3, 3, 3), progress=False)
    with pytest.raises(FileExistsError, match="modality"):
        ingest(cases_from_inputs([real_data_dir / "pet/juspace_FDOPA_f18.nii"], "p", "mri"), out, progress=False)
    res = ingest(cases, out, spacing=(3, 3, 3), overwrite=True, progress=False)
    assert res["p"]["written"] == 1 and S.load_index(out)["domains"]["p"]["spacing"] == [3.0, 3.0, 3.0]
    assert sorted(p.name for p in (out / "p").iterdir()) == ["train-000000.tar"]


def test_parallel_workers_match_serial(tmp_path, real_data_dir):
    inputs = [real_data_dir / "pet/juspace_FDOPA_f18.nii", real_data_dir / "pet/juspace_MU_carfentanil_c11.nii",
              real_data_dir / "mri/pyradiomics_breast1_image.nrrd"]
    cases = cases_from_inputs(inputs, "d", "mri")
    serial = ingest(cases, tmp_path / "a", workers=1, shard_size=2, progress=False)
    parallel = ingest(cases, tmp_path / "b", workers=2, shard_size=2, progress=False)
    assert serial["d"]["written"] == parallel["d"]["written"] == 3
    a, b = _samples(tmp_path / "a", "d"), _samples(tmp_path / "b", "d")
    assert list(a) == list(b)
    for k in a:
        np.testing.assert_array_equal(a[k][0], b[k][0])


def test_split_is_a_deterministic_hash():
    ids = [f"case{i:04d}" for i in range(2000)]
    splits = [assign_split(c, 0.2) for c in ids]
    assert splits == [assign_split(c, 0.2) for c in ids]
    assert 0.17 < splits.count("val") / len(ids) < 0.23
    assert all(assign_split(c, 0.0) == "train" for c in ids[:50])


def test_case_ids_from_folders_and_bad_arguments(tmp_path, real_data_dir):
    cases = cases_from_inputs([real_data_dir / "ct"], "ct", "ct")
    ids = {c.case_id for c in cases}
    assert "dcmqa_ct_GE_head_tilt_dicom" in ids and "totalseg_example_ct_sm" in ids and len(ids) == 6
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="empty input"):
        cases_from_inputs([tmp_path / "empty"], "d", "ct")
    with pytest.raises(ValueError, match="unknown modality"):
        cases_from_inputs([real_data_dir / "pet"], "d", "xray")
    with pytest.raises(ValueError, match="no cases"):
        ingest([], tmp_path / "out")
    f = real_data_dir / "pet/juspace_FDOPA_f18.nii"
    with pytest.raises(ValueError, match="given twice"):
        cases_from_inputs([f, f], "d", "pet")


@pytest.mark.parametrize(
    ("row", "match"),
    [
        ({"path": "x.nii", "modality": "xray", "domain": "d"}, "cases.csv:2: unknown modality 'xray'"),
        ({"path": "", "modality": "ct", "domain": "d"}, "cases.csv:2: empty path"),
        ({"path": "x.nii", "modality": "ct", "domain": "a.b"}, "cases.csv:2: domain"),
        ({"path": "x.nii", "modality": "ct", "domain": "d", "split": "test"}, "split 'test'"),
    ],
)
def test_manifest_errors_name_file_and_line(tmp_path, row, match):
    path = _manifest(tmp_path / "cases.csv", [row])
    with pytest.raises(ValueError, match=match):
        cases_from_manifest(path)


def test_manifest_missing_column(tmp_path):
    path = tmp_path / "cases.csv"
    path.write_text("path,domain\nx.nii,d\n")
    with pytest.raises(ValueError, match="lacks column"):
        cases_from_manifest(path)


def test_interrupted_ingest_leaves_only_complete_indexed_shards(tmp_path, real_data_dir):
    """Ctrl-C mid-run: no partial shard is left and the index lists exactly the shards on disk."""
    import os
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "shards"
    cmd = [sys.executable, "-m", "mixpretrain.cli", "ingest", "--input", str(real_data_dir / "mri"),
           "--modality", "mri", "--domain", "m", "--out", str(out), "--shard-size", "1", "--no-progress"]
    # SIGINT back to its default in the child: a test run started in the background (`make test &`)
    # inherits SIGINT ignored, Python then keeps it ignored, and the ingest would never see the Ctrl-C.
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"},
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 120
    while not (out / "m" / "train-000000.tar").exists() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err  # the run was still going: 15 scans, one shard each
    assert "run the same command again to resume" in err
    assert not list((out / "m").glob("*.tmp")) and S.orphans(out) == []
    index = S.load_index(out)["domains"]["m"]
    assert 1 <= index["samples"] < 15 and len(index["cases"]) == index["samples"]
    assert S.verify(out) == []


def test_same_case_id_in_two_domains_shares_the_split(tmp_path, real_data_dir):
    rows = [
        {"path": str(real_data_dir / "pet/juspace_FDOPA_f18.nii"), "modality": "pet", "domain": "pa", "case_id": "subj1"},
        {"path": str(real_data_dir / "mri/pyradiomics_breast1_image.nrrd"), "modality": "mri", "domain": "mb",
         "case_id": "subj1"},
    ]
    out = tmp_path / "shards"
    ingest(cases_from_manifest(_manifest(tmp_path / "m.csv", rows)), out, val_fraction=0.5, progress=False)
    domains = S.load_index(out)["domains"]
    pa, mb = domains["pa"]["cases"]["subj1"], domains["mb"]["cases"]["subj1"]
    assert pa["source"].endswith("FDOPA_f18.nii") and mb["source"].endswith("breast1_image.nrrd")
    assert pa["split"] == mb["split"] == assign_split("subj1", 0.5)


def test_interrupt_between_shard_rename_and_index_update_leaves_it_indexed(tmp_path, real_data_dir, monkeypatch):
    """The window the Ctrl-C test hits only by chance, made deterministic: the first index update
    (right after the first shard is renamed into place) raises KeyboardInterrupt. The shard on disk
    must still end up in index.json, and nothing else may be left over."""
    import mixpretrain.data.ingest as ingest_module

    real_update, calls = S.update_index, []

    def interrupted_once(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise KeyboardInterrupt
        return real_update(*args, **kwargs)

    monkeypatch.setattr(ingest_module.S, "update_index", interrupted_once)
    cases = cases_from_inputs([real_data_dir / "mri" / "pyradiomics_brain1_image.nrrd",
                               real_data_dir / "mri" / "pyradiomics_brain2_image.nrrd"], "m", "mri")
    out = tmp_path / "shards"
    with pytest.raises(KeyboardInterrupt):
        ingest(cases, out, val_fraction=0.0, shard_size=1, progress=False)
    monkeypatch.setattr(ingest_module.S, "update_index", real_update)
    on_disk = sorted(p.name for p in (out / "m").glob("*.tar"))
    assert on_disk == ["train-000000.tar"]  # interrupted after the first shard
    index = S.load_index(out)["domains"]["m"]
    assert [Path(s["file"]).name for s in index["shards"]] == on_disk
    assert S.orphans(out) == [] and not list((out / "m").glob("*.tmp")) and S.verify(out) == []


@pytest.mark.parametrize(("line", "match"), [
    ("x.nii,ct", r"cases.csv:2: no domain value; each row needs path,modality,domain"),
    ("x.nii,ct,d,c1,train,extra", r"cases.csv:2: extra values \['extra'\]"),
    ("x.nii,PET-CT,d", r"cases.csv:2: unknown modality 'PET-CT'"),
])
def test_manifest_rows_with_too_few_or_many_values(tmp_path, line, match):
    path = tmp_path / "cases.csv"
    path.write_text(f"path,modality,domain,case_id,split\n{line}\n")
    with pytest.raises(ValueError, match=match):
        cases_from_manifest(path)


def test_dicom_header_of_another_modality_is_warned_about(tmp_path, real_data_dir, caplog):
    """A CT series ingested into a PET domain: ingested as asked, with a warning naming both."""
    series = real_data_dir / "ct/dcmqa_ct_GE_head_tilt_dicom"
    with caplog.at_level(logging.WARNING, logger="mixpretrain.data.ingest"):
        summary = ingest(cases_from_inputs([series], "pet", "pet"), tmp_path / "shards", workers=1, progress=False)
    assert summary["pet"]["written"] == 1
    assert "DICOM header says Modality CT (ct), but it is ingested as pet into domain 'pet'" in caplog.text
