"""Shard format: writer, codecs, index, urls, verify, decode errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import webdataset as wds

from mixpretrain.data import shards as S


def _vol(seed: int = 0, shape=(12, 10, 8)) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def _write(out: Path, domain="dom", n=5, split="train", maxcount=2, **kw) -> list[dict]:
    with S.ShardWriter(out, domain, "ct", split, maxcount=maxcount, **kw) as w:
        for i in range(n):
            w.write(f"case-{i}", _vol(i), {"spacing": [1.0, 1.0, 2.0], "orientation": "RAS"})
    return w.close()


@pytest.mark.parametrize("codec", ["blosc2", "zstd", "raw"])
@pytest.mark.parametrize("dtype", ["float16", "float32"])
def test_roundtrip_each_codec_and_dtype(tmp_path, codec, dtype):
    written = _write(tmp_path, n=3, codec=codec, dtype=dtype)
    S.update_index(tmp_path, "dom", "ct", shards=written, spacing=[1.0, 1.0, 2.0])
    samples = list(wds.WebDataset(S.shard_urls(tmp_path, "dom", "train"), shardshuffle=False))
    assert [s["__key__"] for s in samples] == ["case-0", "case-1", "case-2"]
    for i, s in enumerate(samples):
        vol, meta = S.decode_sample(s)
        assert vol.dtype == np.dtype(dtype) and vol.shape == (12, 10, 8)
        tol = 2e-3 if dtype == "float16" else 0
        np.testing.assert_allclose(vol.astype(np.float32), _vol(i), atol=tol * 4, rtol=tol)
        assert meta["codec"] == codec and meta["domain"] == "dom" and meta["modality"] == "ct"
        assert meta["shape"] == [12, 10, 8] and meta["spacing"] == [1.0, 1.0, 2.0] and meta["key"] == f"case-{i}"
        assert S.CODEC_EXT[codec] in s


def test_maxcount_atomic_names_and_checksums(tmp_path):
    w = S.ShardWriter(tmp_path, "dom", "ct", "val", maxcount=2)
    w.write("a", _vol(0), {})
    # While a shard is open it exists only under its temp name.
    assert not list((tmp_path / "dom").glob("*.tar")) and list((tmp_path / "dom").glob(".val-000000.tar.tmp"))
    for k in "bcde":
        w.write(k, _vol(1), {})
    written = w.close()
    assert [s["file"] for s in written] == ["dom/val-000000.tar", "dom/val-000001.tar", "dom/val-000002.tar"]
    assert [s["samples"] for s in written] == [2, 2, 1] and [s["keys"] for s in written][2] == ["e"]
    assert not list((tmp_path / "dom").glob("*.tmp"))
    for s in written:
        p = tmp_path / s["file"]
        assert p.stat().st_size == s["bytes"] and S._sha256(p) == s["sha256"]


def test_abort_leaves_no_partial_shard(tmp_path):
    with pytest.raises(RuntimeError), S.ShardWriter(tmp_path, "dom", "ct", "train") as w:
        w.write("a", _vol(0), {})
        raise RuntimeError("boom")
    assert list((tmp_path / "dom").iterdir()) == []


def test_no_overwrite_continues_numbering_overwrite_replaces(tmp_path):
    first = _write(tmp_path, n=4)  # 000000, 000001
    second = _write(tmp_path, n=1)
    assert [s["file"] for s in second] == ["dom/train-000002.tar"]
    assert all((tmp_path / s["file"]).is_file() for s in first)
    third = _write(tmp_path, n=1, overwrite=True)
    assert [s["file"] for s in third] == ["dom/train-000000.tar"]
    assert sorted(p.name for p in (tmp_path / "dom").glob("*.tar")) == ["train-000000.tar"]


@pytest.mark.parametrize(
    ("key", "volume", "match"),
    [
        ("a.b", _vol(), "may contain only"),
        ("x/y", _vol(), "may contain only"),
        ("nan", np.full((4, 4, 4), np.nan, np.float32), "NaN/Inf"),
        ("big", np.full((4, 4, 4), 1e6, np.float32), "overflow float16"),
        ("flat", np.zeros((4, 4), np.float32), "3-D"),
        ("ints", np.zeros((4, 4, 4), np.int16), "float16/float32"),
    ],
)
def test_write_rejects_bad_input(tmp_path, key, volume, match):
    with S.ShardWriter(tmp_path, "dom", "ct", "train") as w, pytest.raises(ValueError, match=match):
        w.write(key, volume, {})


def test_writer_rejects_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="split"):
        S.ShardWriter(tmp_path, "dom", "ct", "test")
    with pytest.raises(ValueError, match="modality"):
        S.ShardWriter(tmp_path, "dom", "xray", "train")
    with pytest.raises(ValueError, match="domain"):
        S.ShardWriter(tmp_path, "../evil", "ct", "train")
    with S.ShardWriter(tmp_path, "dom", "ct", "train") as w:
        w.write("a", _vol(), {})
        with pytest.raises(ValueError, match="twice"):
            w.write("a", _vol(), {})


def test_index_counts_skips_and_conflicts(tmp_path):
    train, val = _write(tmp_path, n=3), _write(tmp_path, n=1, split="val")
    skipped = [{"path": "/x/bad.nii.gz", "case_id": "bad", "reason": "truncated"}]
    S.update_index(tmp_path, "dom", "ct", shards=train + val, spacing=[1, 1, 2], skipped=skipped,
                   cases={f"case-{i}": {"split": "train"} for i in range(3)})
    index = S.load_index(tmp_path)
    entry = index["domains"]["dom"]
    assert index["format_version"] == S.FORMAT_VERSION and index["skipped"] == 1
    assert entry["splits"] == {"train": {"samples": 3, "shards": 2}, "val": {"samples": 1, "shards": 1}}
    assert entry["skipped_files"][0]["reason"] == "truncated" and entry["samples"] == 4
    # Re-recording the same skip does not double count it.
    S.update_index(tmp_path, "dom", "ct", skipped=skipped)
    assert S.load_index(tmp_path)["skipped"] == 1
    with pytest.raises(ValueError, match="modality"):
        S.update_index(tmp_path, "dom", "mri")
    with pytest.raises(ValueError, match="spacing"):
        S.update_index(tmp_path, "dom", "ct", spacing=[2, 2, 2])
    S.update_index(tmp_path, "dom", "mri", replace=True)
    assert S.load_index(tmp_path)["domains"]["dom"]["samples"] == 0
    rows = S.stats(tmp_path)
    assert {(r["domain"], r["split"]) for r in rows} == {("dom", "train"), ("dom", "val")}


def test_shard_urls_and_index_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no shard index"):
        S.load_index(tmp_path)
    S.update_index(tmp_path, "dom", "ct", shards=_write(tmp_path, n=5))
    urls = S.shard_urls(tmp_path, "dom", "train")
    assert [Path(u).name for u in urls] == ["train-000000.tar", "train-000001.tar", "train-000002.tar"]
    assert S.shard_urls(tmp_path, "dom", "val") == []
    with pytest.raises(KeyError, match="domains: \\['dom'\\]"):
        S.shard_urls(tmp_path, "nope", "train")
    (tmp_path / "index.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        S.load_index(tmp_path)
    (tmp_path / "index.json").write_text(json.dumps({"format_version": 99, "domains": {}}))
    with pytest.raises(ValueError, match="format_version 99"):
        S.load_index(tmp_path)


def test_verify_names_corrupted_truncated_and_missing_shards(tmp_path):
    S.update_index(tmp_path, "dom", "ct", shards=_write(tmp_path, n=6))
    assert S.verify(tmp_path) == []
    urls = S.shard_urls(tmp_path, "dom", "train")
    data = bytearray(Path(urls[0]).read_bytes())
    data[700] ^= 0xFF  # flip a byte inside the first payload
    Path(urls[0]).write_bytes(bytes(data))
    Path(urls[1]).write_bytes(Path(urls[1]).read_bytes()[:1000])  # truncate
    Path(urls[2]).unlink()
    problems = {Path(p["file"]).name: p["problem"] for p in S.verify(tmp_path)}
    assert "checksum" in problems["train-000000.tar"]
    assert "truncated" in problems["train-000001.tar"]
    assert problems["train-000002.tar"] == "missing"


def test_verify_deep_decodes_payloads(tmp_path):
    """A shard rewritten with a consistent checksum but garbage payload fails the decode check."""
    written = _write(tmp_path, n=1, maxcount=1)
    path = tmp_path / written[0]["file"]
    data = bytearray(path.read_bytes())
    start = data.index(b"case-0.vol.b2") + 512  # payload follows its 512-byte tar header
    data[start : start + 16] = b"\x00" * 16  # the blosc2 chunk header
    path.write_bytes(bytes(data))
    written[0].update(bytes=path.stat().st_size, sha256=S._sha256(path))
    S.update_index(tmp_path, "dom", "ct", shards=written)
    problems = S.verify(tmp_path)
    assert len(problems) == 1 and "unreadable" in problems[0]["problem"], problems
    assert S.verify(tmp_path, deep=False) == []


def test_decode_sample_errors_name_the_sample():
    vol = _vol()
    meta = {"shape": list(vol.shape), "dtype": "float32"}
    good = {"__key__": "k", "__url__": "s.tar", "meta.json": json.dumps(meta).encode(),
            "vol.b2": S.encode_volume(vol, "blosc2")}
    out, _ = S.decode_sample(good)
    np.testing.assert_array_equal(out, vol)
    with pytest.raises(S.ShardError, match="'k' in s.tar: no meta.json"):
        S.decode_sample({k: v for k, v in good.items() if k != "meta.json"})
    with pytest.raises(S.ShardError, match="no volume entry"):
        S.decode_sample({k: v for k, v in good.items() if k != "vol.b2"})
    with pytest.raises(S.ShardError, match="corrupted or truncated"):
        S.decode_sample({**good, "vol.b2": good["vol.b2"][:40]})
    with pytest.raises(S.ShardError, match="expected"):
        S.decode_sample({**good, "meta.json": json.dumps({**meta, "shape": [2, 2, 2]}).encode()})
    with pytest.raises(S.ShardError, match="not valid JSON"):
        S.decode_sample({**good, "meta.json": b"\x80pickle"})
    with pytest.raises(S.ShardError, match="corrupted"):
        S.decode_sample({"__key__": "z", "meta.json": json.dumps(meta).encode(), "vol.zst": b"garbage"})


@pytest.mark.parametrize("dtype", ["float16", "float32"])
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_decode_sample_refuses_non_finite_voxels(dtype, bad):
    """The writer refuses NaN/Inf, so a volume that decodes to them has a corrupted payload."""
    vol = _vol().astype(dtype)
    meta = json.dumps({"shape": list(vol.shape), "dtype": dtype}).encode()
    for codec in ("raw", "zstd", "blosc2"):
        out, _ = S.decode_sample({"__key__": "k", "meta.json": meta, S.CODEC_EXT[codec]: S.encode_volume(vol, codec)})
        np.testing.assert_array_equal(out, vol)
        broken = vol.copy()
        broken[3, 4, 5] = bad
        sample = {"__key__": "k", "__url__": "s.tar", "meta.json": meta, S.CODEC_EXT[codec]: S.encode_volume(broken, codec)}
        with pytest.raises(S.ShardError, match=r"sample 'k' in s.tar: 1 NaN/Inf voxel\(s\) after decoding: corrupted payload"):
            S.decode_sample(sample)
    extremes = np.array([np.finfo(dtype).max, np.finfo(dtype).min, 0.0, -0.0, np.finfo(dtype).tiny], dtype=dtype)
    assert S._all_finite(extremes) and S._all_finite(np.zeros((0, 2, 2), dtype))


def test_verify_needs_a_local_folder():
    for fn in (S.verify, S.orphans):
        with pytest.raises(ValueError, match="needs a local shards folder, not the URL http://host/shards/"):
            fn("http://host/shards/")


def test_safe_key():
    assert S.safe_key("sub-01/ses 2.nii") == "sub-01_ses_2_nii"
    with pytest.raises(ValueError):
        S.safe_key("...")


def test_stale_temp_shards_of_a_killed_run_are_removed(tmp_path):
    (tmp_path / "dom").mkdir()
    stale = tmp_path / "dom" / ".train-000003.tar.tmp"
    stale.write_bytes(b"half a shard")
    other = tmp_path / "dom" / ".val-000000.tar.tmp"
    other.write_bytes(b"x")
    S.ShardWriter(tmp_path, "dom", "ct", "train").close()
    assert not stale.exists() and other.exists()
