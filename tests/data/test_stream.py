"""DomainStream: crops, rank x worker splitting, determinism, sources, corrupted shards."""

from __future__ import annotations

import http.server
import itertools
import pickle
import shutil
import tarfile
import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from mixpretrain.data.shards import ShardError, ShardWriter, load_index, shard_urls, update_index
from mixpretrain.data.stream import DomainStream
from mixpretrain.data.synth import write_phantom_shards

CASES = 10
SHAPE = (10, 12, 14)  # arange volume: every voxel value is its flat index (exact in float16)


@pytest.fixture(autouse=True)
def _single_process_topology(monkeypatch: pytest.MonkeyPatch) -> None:
    """Topology comes from these env vars when set: never inherit them from another test."""
    for var in ("RANK", "WORLD_SIZE", "WORKER", "NUM_WORKERS"):
        monkeypatch.delenv(var, raising=False)


@pytest.fixture(scope="module")
def datasets(tmp_path_factory: pytest.TempPathFactory) -> dict[int, Path]:
    """Shards dirs of one phantom domain with 10 cases over 1..5 train shards."""
    root = tmp_path_factory.mktemp("stream")
    out = {}
    for n in range(1, 6):
        out[n] = root / f"n{n}"
        write_phantom_shards(out[n], ["ct"], cases=CASES, size=12, val_fraction=0.0, maxcount=-(-CASES // n))
        assert load_index(out[n])["domains"]["ct"]["splits"]["train"]["shards"] == n
    return out


@pytest.fixture(scope="module")
def arange_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Four samples with known voxel values (offset + flat index), so crops can be checked exactly."""
    out = tmp_path_factory.mktemp("arange")
    with ShardWriter(out, "toy", "mri", "train", maxcount=2) as w:
        for i in range(4):
            vol = np.arange(np.prod(SHAPE), dtype=np.float32).reshape(SHAPE) + 100 * i
            w.write(f"case{i}", vol, {"case_id": f"case{i}"})
    update_index(out, "toy", "mri", shards=w.close())
    return out


def _keys(stream: DomainStream, workers: int) -> list[str]:
    loader = DataLoader(stream, batch_size=3, num_workers=workers)
    return [k for batch in loader for k in batch["key"]]


# ----------------------------------------------------------------------------- items and crops


def test_items_and_crops_are_exact_blocks(arange_dir: Path) -> None:
    stream = DomainStream(arange_dir, "toy", split="train", resampled=False, crop_size=(4, 5, 6), crops_per_volume=3)
    items = list(stream)
    assert len(items) == 12 == stream.num_samples()
    assert Counter(i["key"] for i in items) == {f"case{i}": 3 for i in range(4)}
    for item in items:
        img = item["image"]
        assert img.shape == (1, 4, 5, 6) and img.dtype == torch.float32 and item["domain"] == "toy"
        c = img[0].numpy()
        case = int(item["key"][-1])
        start = np.unravel_index(int(c[0, 0, 0]) - 100 * case, SHAPE)  # the block's first voxel
        block = np.arange(np.prod(SHAPE)).reshape(SHAPE)[tuple(slice(s, s + n) for s, n in zip(start, c.shape, strict=True))]
        np.testing.assert_array_equal(c, block + 100 * case)
    assert stream.stats == {"volumes": 4, "crops": 12, "bad_shards": 0, "bad_samples": 0}


def test_volumes_smaller_than_the_crop_are_padded(arange_dir: Path) -> None:
    stream = DomainStream(arange_dir, "toy", split="train", resampled=False, crop_size=(16, 8, 16), crops_per_volume=1)
    item = next(i for i in stream if i["key"] == "case1")
    img = item["image"][0].numpy()
    assert img.shape == (16, 8, 16)
    # axis 0 (10 -> 16) and axis 2 (14 -> 16) padded symmetrically with the volume's minimum
    assert (img[:3] == 100).all() and (img[-3:] == 100).all() and (img[:, :, 0] == 100).all()
    inner = img[3:13, :, 1:15]
    assert inner.shape == (10, 8, 14) and inner.min() >= 100


def test_finite_crops_do_not_depend_on_topology(arange_dir: Path) -> None:
    """Validation crops are seeded per sample: the same with 1 or 2 workers, differ by epoch."""
    kw = dict(split="train", resampled=False, crop_size=4, crops_per_volume=2, shuffle_buffer=0)

    def crops(stream: DomainStream, workers: int) -> dict[str, list[float]]:
        out: dict[str, list[float]] = {}
        for batch in DataLoader(stream, batch_size=None, num_workers=workers):
            out.setdefault(batch["key"], []).append(float(batch["image"][0, 0, 0, 0]))
        return {k: sorted(v) for k, v in out.items()}

    one = crops(DomainStream(arange_dir, "toy", **kw), 0)
    two = crops(DomainStream(arange_dir, "toy", **kw), 2)
    other_epoch = crops(DomainStream(arange_dir, "toy", epoch=1, **kw), 0)
    assert one == two and one != other_epoch


# ----------------------------------------------------------------------------- rank x worker split


@pytest.mark.parametrize("n_shards", [1, 2, 3, 4, 5])
@pytest.mark.parametrize("split_by", ["auto", "shard"])
def test_every_sample_once_per_epoch_over_2_ranks_x_2_workers(datasets: dict[int, Path], n_shards: int, split_by: str) -> None:
    """Finite mode: 2 ranks x 2 DataLoader workers see every sample exactly once, never hang.

    With fewer shards than the 4 slots, "shard" leaves some workers empty (they end at once) and
    "auto" splits by sample instead, so every worker has work.
    """
    seen: Counter[str] = Counter()
    per_rank = []
    for rank in (0, 1):
        stream = DomainStream(datasets[n_shards], "ct", split="train", resampled=False, crop_size=8,
                              crops_per_volume=2, rank=rank, world_size=2, split_by=split_by)
        keys = _keys(stream, workers=2)
        per_rank.append(len(keys))
        seen.update(keys)
    assert seen == {f"ct-{i:06d}": 2 for i in range(CASES)}
    if split_by == "auto":
        assert min(per_rank) > 0  # both ranks got work even from a single shard


def test_rank_from_environment(datasets: dict[int, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    """RANK / WORLD_SIZE env vars (as torchrun / deepspeed set them) split the shards too."""
    seen: Counter[str] = Counter()
    for rank in ("0", "1"):
        monkeypatch.setenv("RANK", rank)
        monkeypatch.setenv("WORLD_SIZE", "2")
        stream = DomainStream(datasets[3], "ct", split="train", resampled=False, crop_size=8)
        assert stream.topology()[:2] == (int(rank), 2)
        seen.update(_keys(stream, workers=2))
    assert seen == {f"ct-{i:06d}": 1 for i in range(CASES)}


# ----------------------------------------------------------------------------- resampled mode


def _take(stream: DomainStream, n: int) -> list[tuple[str, float]]:
    return [(s["key"], float(s["image"].sum())) for s in itertools.islice(iter(stream), n)]


def test_resampled_is_infinite_and_deterministic(datasets: dict[int, Path]) -> None:
    def make(**kw) -> DomainStream:
        return DomainStream(datasets[3], "ct", crop_size=8, crops_per_volume=2, **{"seed": 1, **kw})

    first = _take(make(), 3 * CASES)  # more than one pass over the data: never ends
    assert len(first) == 3 * CASES and len({k for k, _ in first}) > 1
    assert _take(make(), 3 * CASES) == first
    assert _take(make(epoch=1), 3 * CASES) != first  # resume: new epoch, new stream
    assert _take(make(seed=2), 3 * CASES) != first
    assert _take(make(rank=1, world_size=2), 3 * CASES) != first
    restored = make(seed=9)
    restored.load_state_dict(make(epoch=1).state_dict())
    assert _take(restored, 3 * CASES) == _take(make(epoch=1), 3 * CASES)


def test_resampled_workers_differ_and_few_shards_do_not_hang(datasets: dict[int, Path]) -> None:
    """One shard, 2 workers, infinite mode: each worker resamples it, both produce data."""
    stream = DomainStream(datasets[1], "ct", crop_size=8, crops_per_volume=1, shuffle_buffer=4)
    loader = DataLoader(stream, batch_size=4, num_workers=2)
    batches = list(itertools.islice(iter(loader), 6))
    assert all(b["image"].shape == (4, 1, 8, 8, 8) for b in batches)
    # batches alternate between the two workers; their orders come from different seeds
    assert [b["key"] for b in batches[0::2]] != [b["key"] for b in batches[1::2]]


# ----------------------------------------------------------------------------- sources


@pytest.fixture()
def http_root(datasets: dict[int, Path], serve_directory) -> str:
    return serve_directory(datasets[2])


def _all_keys(source: object) -> Counter[str]:
    return Counter(s["key"] for s in DomainStream(source, "ct", split="train", resampled=False, crop_size=8))


def test_sources_local_list_pattern_http_and_pipe(datasets: dict[int, Path], http_root: str) -> None:
    if shutil.which("curl") is None:  # webdataset reads http(s) shards through curl
        pytest.skip("curl not installed: webdataset's http(s) reader needs it")
    local = shard_urls(datasets[2], "ct", "train")
    expected = {f"ct-{i:06d}": 1 for i in range(CASES)}
    assert _all_keys(datasets[2]) == expected  # shards dir via index.json
    assert _all_keys(local) == expected  # list of local paths
    assert _all_keys(str(datasets[2] / "ct" / "train-{000000..000001}.tar")) == expected  # brace pattern
    assert _all_keys(http_root) == expected  # http shards dir: index.json over http, shards via curl
    assert _all_keys(http_root.rstrip("/")) == expected
    assert _all_keys(http_root + "index.json") == expected
    assert _all_keys([http_root + "ct/" + Path(u).name for u in local]) == expected
    assert _all_keys([f"pipe:cat {u}" for u in local]) == expected
    # resampled over http too
    assert len(_take(DomainStream(http_root, "ct", crop_size=8), 12)) == 12
    # a failing pipe: command and an http 404 are bad shards: logged, counted, skipped
    broken = DomainStream([f"pipe:cat {u}" for u in local] + ["pipe:cat /nonexistent/x.tar", http_root + "ct/nope.tar"],
                          "ct", split="train", resampled=False, crop_size=8)
    assert Counter(s["key"] for s in broken) == expected and broken.stats["bad_shards"] == 2, broken.errors


def test_stream_pickles_for_spawned_workers(datasets: dict[int, Path]) -> None:
    stream = DomainStream(datasets[2], "ct", crop_size=8, seed=3)
    clone = pickle.loads(pickle.dumps(stream))
    assert _take(clone, 5) == _take(stream, 5)


def test_bad_sources_fail_early_with_the_name(datasets: dict[int, Path], tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="domain 'mri' not in"):
        DomainStream(datasets[1], "mri")
    with pytest.raises(ValueError, match="no val shards for domain 'ct'"):
        DomainStream(datasets[1], "ct", split="val")
    with pytest.raises(ValueError, match="without index.json"):
        DomainStream(tmp_path, "ct")
    with pytest.raises(ValueError, match="crop_size"):
        DomainStream(datasets[1], "ct", crop_size=(8, 8))
    with pytest.raises(ValueError, match="rank and world_size"):
        DomainStream(datasets[1], "ct", rank=2, world_size=2)


# ----------------------------------------------------------------------------- corrupted shards


@pytest.fixture()
def damaged(datasets: dict[int, Path], tmp_path: Path) -> Path:
    """A copy of the 4-shard set (3, 3, 3, 1 samples) to damage."""
    out = tmp_path / "damaged"
    shutil.copytree(datasets[4], out)
    return out


def _truncate_mid_member(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) * 6 // 10])


def _truncate_at_sample_boundary(path: Path, keep_samples: int) -> None:
    with tarfile.open(path) as tar:
        members = tar.getmembers()
    cut = members[2 * keep_samples].offset  # two members (meta.json, volume) per sample
    path.write_bytes(path.read_bytes()[:cut])


def _corrupt_payload(path: Path) -> str:
    with tarfile.open(path) as tar:
        member = next(m for m in tar.getmembers() if ".vol." in m.name)
    data = bytearray(path.read_bytes())
    # zero the payload's header (codec magic and sizes): no codec can decode that to the right shape
    data[member.offset_data : member.offset_data + 16] = bytes(16)
    path.write_bytes(bytes(data))
    return member.name.split(".")[0]


def _keys_of(shards_dir: Path, shard: int) -> set[str]:
    entry = load_index(shards_dir)["domains"]["ct"]
    return set(sorted((s for s in entry["shards"] if s["split"] == "train"), key=lambda s: s["file"])[shard]["keys"])


def test_damaged_shards_are_logged_counted_and_skipped(damaged: Path, caplog: pytest.LogCaptureFixture) -> None:
    urls = shard_urls(damaged, "ct", "train")
    _truncate_mid_member(Path(urls[0]))
    _truncate_at_sample_boundary(Path(urls[1]), keep_samples=1)
    bad_key = _corrupt_payload(Path(urls[2]))
    Path(urls[3]).unlink()
    stream = DomainStream(damaged, "ct", split="train", resampled=False, crop_size=8)
    with caplog.at_level("WARNING", logger="mixpretrain.data.stream"):
        keys = Counter(s["key"] for s in stream)
    # shards 2's good samples and shard 1's first sample survive; nothing else is invented
    assert _keys_of(damaged, 2) - {bad_key} <= set(keys) and bad_key not in keys
    assert sorted(_keys_of(damaged, 1))[0] in keys
    assert all(n == 1 for n in keys.values())
    assert stream.stats["bad_shards"] == 3 and stream.stats["bad_samples"] == 1, stream.errors
    text = caplog.text
    assert "truncated: 1 of 3 samples" in text and bad_key in text and Path(urls[3]).name in text
    assert Path(urls[0]).name in text


@pytest.mark.parametrize("damage", ["truncate", "boundary", "payload", "missing"])
def test_strict_raises_on_damage(damaged: Path, damage: str) -> None:
    url = Path(shard_urls(damaged, "ct", "train")[1])
    {"truncate": _truncate_mid_member, "boundary": lambda p: _truncate_at_sample_boundary(p, 1),
     "payload": _corrupt_payload, "missing": Path.unlink}[damage](url)
    with pytest.raises(ShardError, match=url.name):
        list(DomainStream(damaged, "ct", split="train", resampled=False, crop_size=8, strict=True))


def test_resampled_stream_with_only_bad_shards_raises_instead_of_spinning(damaged: Path) -> None:
    for url in shard_urls(damaged, "ct", "train"):
        Path(url).write_bytes(b"this is not a tar file" * 100)
    with pytest.raises(ShardError, match="failures in a row"):
        next(iter(DomainStream(damaged, "ct", crop_size=8)))


# ----------------------------------------------------------------------------- runs of bad samples


def _zero_payload_headers(path: Path, keys: set[str] | None = None) -> None:
    """Zero the first 16 bytes (the codec header) of every volume payload in a shard (of ``keys`` only, if given)."""
    data = bytearray(path.read_bytes())
    with tarfile.open(path) as tar:
        for m in tar.getmembers():
            if ".vol." in m.name and (keys is None or m.name.split(".")[0] in keys):
                data[m.offset_data : m.offset_data + 16] = bytes(16)
    path.write_bytes(bytes(data))


@pytest.fixture()
def one_bad_shard(tmp_path: Path) -> Path:
    """The reviewer's setup: 3 shards x 16 samples of one domain, every sample of shard 1 undecodable."""
    out = tmp_path / "runbad"
    with ShardWriter(out, "toy", "mri", "train", maxcount=16) as w:
        for i in range(48):
            w.write(f"s{i:03d}", np.full((8, 8, 8), i + 1, np.float32), {})
    update_index(out, "toy", "mri", shards=w.close())
    _zero_payload_headers(Path(shard_urls(out, "toy", "train")[1]))
    return out


@pytest.mark.parametrize("shuffle_buffer", [0, 16])
def test_a_shard_of_bad_samples_is_skipped_not_fatal(one_bad_shard: Path, shuffle_buffer: int) -> None:
    """More bad samples in a row than the old ``2 x shards + 8`` limit, all in one shard: the other
    shards still yield, every bad sample is a counted skip (finite and resampled)."""
    good = {f"s{i:03d}" for i in [*range(16), *range(32, 48)]}
    finite = DomainStream(one_bad_shard, "toy", crop_size=4, resampled=False, shuffle_buffer=shuffle_buffer)
    assert Counter(s["key"] for s in finite) == dict.fromkeys(good, 1)
    assert finite.stats["bad_samples"] == 16 and finite.stats["bad_shards"] == 0, finite.errors
    assert len(finite.errors) == 16 and all("skipped sample" in e and "train-000001.tar" in e for e in finite.errors)
    resampled = DomainStream(one_bad_shard, "toy", crop_size=4, resampled=True, shuffle_buffer=shuffle_buffer)
    keys = [s["key"] for s in itertools.islice(iter(resampled), 200)]
    assert len(keys) == 200 and set(keys) <= good and resampled.stats["bad_samples"] >= 16


def test_a_run_of_bad_samples_in_a_single_shard_is_not_all_bad(tmp_path: Path) -> None:
    """One shard, its first 12 of 16 samples bad: the shard is not all bad, its last 4 are read."""
    with ShardWriter(tmp_path, "toy", "mri", "train", maxcount=16) as w:
        for i in range(16):
            w.write(f"s{i:03d}", np.full((8, 8, 8), i + 1, np.float32), {})
    update_index(tmp_path, "toy", "mri", shards=w.close())
    _zero_payload_headers(Path(shard_urls(tmp_path, "toy", "train")[0]), {f"s{i:03d}" for i in range(12)})
    stream = DomainStream(tmp_path, "toy", crop_size=4, resampled=False, shuffle_buffer=0)
    assert [s["key"] for s in stream] == [f"s{i:03d}" for i in range(12, 16)]
    assert stream.stats["bad_samples"] == 12


@pytest.mark.parametrize("resampled", [False, True])
def test_every_shard_of_bad_samples_still_raises(one_bad_shard: Path, resampled: bool) -> None:
    for url in shard_urls(one_bad_shard, "toy", "train"):
        _zero_payload_headers(Path(url))
    stream = DomainStream(one_bad_shard, "toy", crop_size=4, resampled=resampled, shuffle_buffer=4)
    with pytest.raises(ShardError, match=r"every one of its 3 shard\(s\) failed without one good sample"):
        next(iter(stream))


# ----------------------------------------------------------------------------- NaN / Inf payloads


def test_payload_decoding_to_nan_or_inf_is_a_bad_sample(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A corrupted payload that still decodes, to non-finite voxels (raw float16: 0xFFFF is NaN,
    0x7C00 is +Inf), is a counted, logged skip naming key and shard; strict raises."""
    with ShardWriter(tmp_path, "toy", "mri", "train", maxcount=8, codec="raw") as w:
        for i in range(4):
            w.write(f"case{i}", np.full((6, 6, 6), i + 1, np.float32), {})
    update_index(tmp_path, "toy", "mri", shards=w.close())
    path = Path(shard_urls(tmp_path, "toy", "train")[0])
    data = bytearray(path.read_bytes())
    with tarfile.open(path) as tar:
        vols = {m.name.split(".")[0]: m for m in tar.getmembers() if ".vol." in m.name}
    data[vols["case1"].offset_data + 10 : vols["case1"].offset_data + 12] = b"\xff\xff"  # NaN
    data[vols["case2"].offset_data + 40 : vols["case2"].offset_data + 42] = b"\x00\xfc"  # -Inf (little endian)
    path.write_bytes(bytes(data))
    stream = DomainStream(tmp_path, "toy", crop_size=6, resampled=False, shuffle_buffer=0)
    with caplog.at_level("WARNING", logger="mixpretrain.data.stream"):
        items = list(stream)
    assert [i["key"] for i in items] == ["case0", "case3"] and all(torch.isfinite(i["image"]).all() for i in items)
    assert stream.stats["bad_samples"] == 2
    assert "skipped sample 'case1' in " in caplog.text and path.name in caplog.text
    assert "1 NaN/Inf voxel(s) after decoding: corrupted payload" in caplog.text
    with pytest.raises(ShardError, match=r"bad sample 'case1' in .*train-000000.tar.*NaN/Inf"):
        list(DomainStream(tmp_path, "toy", crop_size=6, resampled=False, shuffle_buffer=0, strict=True))


# ----------------------------------------------------------------------------- http: index, stalls


def test_http_shards_dir_through_load_index_shard_urls_and_stream(datasets: dict[int, Path], http_root: str) -> None:
    """load_index / shard_urls take an http(s) shards dir (with or without the slash, or its
    index.json URL); errors name the URL and the HTTP status."""
    if shutil.which("curl") is None:
        pytest.skip("curl not installed: webdataset's http(s) reader needs it")
    local = load_index(datasets[2])
    for url in (http_root, http_root.rstrip("/"), http_root + "index.json"):
        assert load_index(url) == local
        assert shard_urls(url, "ct", "train") == [http_root + "ct/train-000000.tar", http_root + "ct/train-000001.tar"]
    stream = DomainStream(http_root.rstrip("/"), "ct", split="train", resampled=False, crop_size=8)
    assert stream.urls == shard_urls(http_root, "ct", "train") and set(stream.expected) == set(stream.urls)
    crops = list(itertools.islice(iter(stream), 4))
    assert len(crops) == 4 and all(c["image"].shape == (1, 8, 8, 8) for c in crops)
    with pytest.raises(FileNotFoundError, match=rf"{http_root}nope/index.json: cannot fetch the shard index: HTTP 404"):
        load_index(http_root + "nope/")
    with pytest.raises(KeyError, match=rf"domain 'mri' not in {http_root}index.json"):
        shard_urls(http_root, "mri", "train")
    with pytest.raises(ValueError, match=r"http://127.0.0.1:9/index.json: cannot fetch the shard index \(.*refused"):
        load_index("http://127.0.0.1:9/")


class _StallingHandler(http.server.SimpleHTTPRequestHandler):
    """Serves files; for ``stall_name`` sends the headers and 40% of the bytes, then nothing until released."""

    stall_name = "train-000001.tar"
    release = threading.Event()

    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        if not self.path.endswith(self.stall_name):
            super().do_GET()
            return
        data = Path(self.translate_path(self.path)).read_bytes()
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data[: len(data) * 4 // 10])
        self.wfile.flush()
        self.release.wait(60)
        self.close_connection = True


@pytest.fixture()
def stalling_root(datasets: dict[int, Path], serve_directory) -> Iterator[str]:
    release = threading.Event()
    yield serve_directory(datasets[4], type("H", (_StallingHandler,), {"release": release}))
    release.set()  # before the server's shutdown (this fixture's teardown runs first)


def test_http_server_stalling_mid_transfer_is_a_bad_shard_not_a_hang(
        datasets: dict[int, Path], stalling_root: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A server that stops sending mid-shard (webdataset's curl would wait forever): after the stall
    timeout (MIXPRETRAIN_HTTP_STALL_S, 60 s by default; 1 s here) the shard is a counted skip naming the URL."""
    if shutil.which("curl") is None:
        pytest.skip("curl not installed: webdataset's http(s) reader needs it")
    import time

    monkeypatch.setenv("MIXPRETRAIN_HTTP_STALL_S", "1")
    stalled = stalling_root + "ct/train-000001.tar"
    start = time.monotonic()
    stream = DomainStream(stalling_root, "ct", split="train", resampled=False, crop_size=8, shuffle_buffer=0)
    keys = Counter(s["key"] for s in stream)
    assert time.monotonic() - start < 20
    assert _keys_of(datasets[4], 0) | _keys_of(datasets[4], 2) | _keys_of(datasets[4], 3) <= set(keys)
    assert all(n == 1 for n in keys.values()) and stream.stats["bad_shards"] == 1, stream.errors
    assert f"skipped shard {stalled}: OSError: {stalled}: no data for 1 s (server or network stalled)" in stream.errors[0]
    # resampled: the stalled shard is redrawn and skipped again, the stream goes on
    resampled = DomainStream(stalling_root, "ct", crop_size=8, shuffle_buffer=0, seed=1)
    assert len(list(itertools.islice(iter(resampled), 15))) == 15
    # strict: raises, naming the URL
    with pytest.raises(ShardError, match=rf"bad shard {stalled}: OSError: .*no data for 1 s"):
        list(DomainStream(stalling_root, "ct", split="train", resampled=False, crop_size=8, strict=True))


def test_file_url_shards_dir_is_the_local_folder(datasets: dict[int, Path]) -> None:
    """``file:`` URLs (as webdataset accepts them) name the local shards dir: index, shard paths,
    the stream; a file:// URL of another host is refused by name."""
    from mixpretrain.data.shards import local_shards_dir

    local = datasets[2]
    for url in (local.as_uri(), f"file:{local}", f"file://localhost{local}"):
        assert Path(local_shards_dir(url)) == local
        assert load_index(url) == load_index(local)
        assert shard_urls(url, "ct", "train") == shard_urls(local, "ct", "train")
        assert _all_keys(url) == _all_keys(local)
    with pytest.raises(ValueError, match="file://nas/shards: a file:// URL with host 'nas' names another machine"):
        load_index("file://nas/shards")
