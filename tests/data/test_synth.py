"""Phantom domains: contrast per modality, shared anatomy, tunable difficulty, shards + index."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from mixpretrain.data import shards
from mixpretrain.data.synth import (
    CT_WINDOW,
    PRESETS,
    phantom,
    resolve_domain,
    torso_anatomy,
    val_subjects,
    write_phantom_shards,
)

SIZE = 32


def _edges(volume: np.ndarray) -> np.ndarray:
    g = np.gradient(volume.astype(np.float64))
    return np.sqrt(sum(x**2 for x in g)).ravel()


def _corr(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a, b)[0, 1])


def test_modality_contrast_and_normalisation() -> None:
    ct, ct_meta = phantom("ct", 0, SIZE)
    mri, mri_meta = phantom("mri", 0, SIZE)
    pet, pet_meta = phantom("pet", 0, SIZE)
    for vol in (ct, mri, pet):
        assert vol.shape == (SIZE,) * 3 and vol.dtype == np.float32 and np.isfinite(vol).all()
    # CT: HU window scaled to [0, 1]; outside the body is air, clipped to 0.
    assert ct.min() >= 0.0 and ct.max() <= 1.0 and ct[0, 0, 0] == 0.0
    assert ct_meta["modality"] == "ct" and ct_meta["intensity"]["window_hu"] == list(CT_WINDOW)
    # MRI: foreground z-scored, so the body's mean is ~0 and the background is negative.
    labels, _ = torso_anatomy(0, (SIZE,) * 3)
    assert abs(float(mri[labels != 0].mean())) < 0.05 and float(mri[labels == 0].mean()) < -0.5
    assert mri_meta["modality"] == "mri" and mri_meta["orientation"] == "RAS"
    # PET: non-negative uptake, hot bladder and kidneys well above the muscle background.
    assert pet.min() >= 0.0 and pet_meta["modality"] == "pet"
    assert pet[labels == 10].mean() > 3 * pet[labels == 2].mean()


def test_same_subject_shares_anatomy_across_domains() -> None:
    """Edges of one subject line up across CT and MRI; edges of different subjects do not."""
    same, other, island = [], [], []
    for s in range(4):
        ct, _ = phantom("ct", s, SIZE)
        same.append(_corr(_edges(ct), _edges(phantom("mri_t2", s, SIZE)[0])))
        other.append(_corr(_edges(ct), _edges(phantom("mri_t2", s + 1, SIZE)[0])))
        island.append(_corr(_edges(ct), _edges(phantom("cells", s, SIZE)[0])))
    assert all(a > b for a, b in zip(same, other, strict=True)), (same, other)
    assert np.mean(same) > np.mean(other) + 0.1, (same, other)
    # the island domain shares no anatomy with the torso
    assert abs(np.mean(island)) < 0.1, island


def test_difficulty_knobs_change_statistics() -> None:
    """Noise knob raises high-frequency energy; blur lowers it; domains differ in statistics."""

    def hf(vol: np.ndarray) -> float:
        return float(np.abs(np.diff(vol, axis=0)).mean() / (vol.std() + 1e-6))

    ct, _ = phantom("ct", 2, SIZE)
    low, _ = phantom("ct_lowdose", 2, SIZE)
    quiet, _ = phantom("ct:noise=1:name=ct_quiet", 2, SIZE)
    pet, _ = phantom("pet", 2, SIZE)
    assert hf(quiet) < hf(ct) < hf(low)
    assert hf(pet) < hf(ct)  # PSF blur
    assert resolve_domain("ct:noise=40").name == "ct_noise40"


def test_deterministic_given_seed() -> None:
    a, _ = phantom("mri", 3, SIZE, seed=5)
    b, _ = phantom("mri", 3, SIZE, seed=5)
    c, _ = phantom("mri", 3, SIZE, seed=6)
    assert np.array_equal(a, b) and not np.array_equal(a, c)


def test_bad_domain_specs_name_the_problem() -> None:
    with pytest.raises(ValueError, match="unknown phantom domain 'xray'"):
        resolve_domain("xray")
    with pytest.raises(ValueError, match="bad option 'colour=red'"):
        resolve_domain("ct:colour=red")
    with pytest.raises(ValueError, match="noise='loud' is not a float"):
        resolve_domain("ct:noise=loud")
    with pytest.raises(ValueError, match="three ints >= 8"):
        phantom("ct", 0, 4)


def test_val_split_is_by_subject_and_never_empty() -> None:
    assert val_subjects(range(16), 0, 0.25) == val_subjects(range(16), 0, 0.25)
    assert len(val_subjects(range(2), 0, 0.01)) == 1  # at least one val subject
    assert val_subjects(range(8), 0, 0.0) == set()
    with pytest.raises(ValueError, match="val_fraction"):
        val_subjects(range(4), 0, 1.0)


def test_write_phantom_shards_round_trip(tmp_path: Path) -> None:
    out = tmp_path / "shards"
    summary = write_phantom_shards(out, ["ct", "mri", "pet"], cases=8, size=16, seed=1, val_fraction=0.25)
    index = shards.load_index(out)
    assert sorted(index["domains"]) == ["ct", "mri", "pet"]
    val_sets = []
    for name in ("ct", "mri", "pet"):
        entry = index["domains"][name]
        assert entry["modality"] == PRESETS[name].modality
        assert entry["splits"]["train"]["samples"] + entry["splits"]["val"]["samples"] == 8
        assert entry["splits"]["train"]["shards"] >= 2  # several shards to split across workers
        assert summary["domains"][name]["val"] == entry["splits"]["val"]["samples"] >= 1
        val_sets.append({c.split("-")[1] for c, row in entry["cases"].items() if row["split"] == "val"})
    assert val_sets[0] == val_sets[1] == val_sets[2]  # same subjects held out in every domain
    assert shards.verify(out) == []
    # decode one shard back and compare with a fresh render (float16 storage)
    from webdataset.tariterators import group_by_keys, tar_file_expander

    url = shards.shard_urls(out, "mri", "train")[0]
    with open(url, "rb") as f:
        sample = next(group_by_keys(tar_file_expander([{"url": url, "stream": f}])))
    volume, meta = shards.decode_sample(sample)
    subject = meta["phantom"]["subject"]
    expected, _ = phantom("mri", subject, 16, seed=1)
    np.testing.assert_allclose(volume.astype(np.float32), expected, atol=2e-2, rtol=2e-3)
    assert meta["key"] == f"mri-{subject:06d}" and meta["spacing"] == [20.0] * 3
    assert json.loads((out / "index.json").read_text())["domains"]["mri"]["phantom"]["bias"] == PRESETS["mri"].bias


def test_write_refuses_existing_domains_without_overwrite(tmp_path: Path) -> None:
    out = tmp_path / "shards"
    write_phantom_shards(out, ["ct"], cases=6, size=12, maxcount=2)
    before = sorted(p.name for p in (out / "ct").iterdir())
    with pytest.raises(FileExistsError, match=r"domains \['ct'\] already exist"):
        write_phantom_shards(out, ["ct"], cases=3, size=12)
    assert sorted(p.name for p in (out / "ct").iterdir()) == before
    # a new domain next to an existing one is fine; overwrite replaces and removes stale shards
    write_phantom_shards(out, ["pet"], cases=2, size=12)
    write_phantom_shards(out, ["ct"], cases=2, size=12, overwrite=True, maxcount=4)
    index = shards.load_index(out)
    assert index["domains"]["ct"]["samples"] == 2 and sorted(index["domains"]) == ["ct", "pet"]
    assert len(list((out / "ct").glob("*.tar"))) == len(index["domains"]["ct"]["shards"])
    assert shards.verify(out) == []
