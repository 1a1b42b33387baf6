"""DomainStream: crops, rank x worker splitting, determinism, sources, corrupted shards."""

from __future__ import annotations

import functools
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
def http_root(datasets: dict[int, Path]) -> Iterator[str]:
    handler = functools.partial(_QuietHandler, directory=str(datasets[2]))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args: object) -> None:  # keep the test output clean
        pass


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
