"""Choose the shard volume codec by measurement: size and decode speed per codec and dtype.

Real scans from ../shared/data/real are read and preprocessed exactly as ingest does; each
candidate (dtype x codec) then encodes and decodes the same volumes in this one process, on
one thread. Decode time is what the training streams pay per volume; ratios are against
``npy float32`` (np.save / np.load, the obvious baseline). "raw" decodes by np.frombuffer
(zero-copy, so its decode time is ~0: the bytes still have to be read from the tar, which
every codec pays in proportion to its size). blosc2 is LZ4HC with byte shuffle, one thread.

    OMP_NUM_THREADS=1 python benchmarks/shard_codec.py [--json] [--repeats 5]
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from mixpretrain.data.preprocess import PreprocessSettings, preprocess  # noqa: E402
from mixpretrain.data.readers import read_volume  # noqa: E402
from mixpretrain.data.shards import decode_volume, encode_volume  # noqa: E402

REAL = REPO.parent / "shared" / "data" / "real"
SCANS = [
    ("ct", "ct/totalseg_example_ct.nii.gz"),
    ("ct", "ct/totalseg_aorta_ct_cropped.nii.gz"),
    ("mri", "mri/niivue_chris_t1.nii.gz"),
    ("mri", "mri/pyradiomics_brain1_image.nrrd"),
    ("pet", "pet/juspace_FDOPA_f18.nii"),
]


def npy_encode(v: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, v, allow_pickle=False)
    return buf.getvalue()


def npy_decode(b: bytes) -> np.ndarray:
    return np.load(io.BytesIO(b), allow_pickle=False)


def candidates() -> list[tuple[str, str, str, int]]:
    out = [("npy", "float32", "npy", 0), ("npy", "float16", "npy", 0)]
    for dtype in ("float32", "float16"):
        out += [("raw", dtype, "raw", 0), ("zstd-1", dtype, "zstd", 1), ("zstd-3", dtype, "zstd", 3)]
        out += [("blosc2-lz4hc-1", dtype, "blosc2", 1), ("blosc2-lz4hc-5", dtype, "blosc2", 5)]
    return out


def timed(fn, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    vols = []
    for modality, rel in SCANS:
        arr, _ = preprocess(read_volume(REAL / rel), PreprocessSettings(modality))
        vols.append(arr)
    raw_mb = sum(v.astype(np.float32).nbytes for v in vols) / 1e6
    rows = []
    for name, dtype, codec, level in candidates():
        enc_t = dec_t = size = 0.0
        err = 0.0
        for v in vols:
            x = v.astype(dtype)
            if codec == "npy":
                payload = npy_encode(x)
                enc_t += timed(lambda x=x: npy_encode(x), 1)
                dec_t += timed(lambda p=payload: npy_decode(p), args.repeats)
                back = npy_decode(payload)
            else:
                payload = encode_volume(x, codec, level)
                enc_t += timed(lambda x=x, c=codec, lv=level: encode_volume(x, c, lv), 1)
                dec_t += timed(lambda p=payload, c=codec, s=x.shape, d=dtype: decode_volume(p, c, s, d), args.repeats)
                back = decode_volume(payload, codec, x.shape, dtype)
            size += len(payload)
            err = max(err, float(np.abs(back.astype(np.float32) - v).max() / (np.abs(v).max() + 1e-12)))
        rows.append({"codec": name, "dtype": dtype, "MB": size / 1e6, "ratio_size_vs_f32": size / 1e6 / raw_mb,
                     "decode_ms": 1e3 * dec_t / len(vols), "decode_MBps_f32eq": raw_mb / dec_t,
                     "encode_ms": 1e3 * enc_t / len(vols), "max_rel_err": err})
    base = rows[0]["decode_ms"]
    print(f"{len(vols)} preprocessed real volumes, {raw_mb:.1f} MB as float32")
    print(f"{'codec':16s} {'dtype':8s} {'MB':>7s} {'size/f32':>8s} {'dec ms':>7s} {'dec x npy':>9s} {'enc ms':>7s} {'max rel err':>11s}")
    for r in rows:
        r["decode_speed_vs_npy_f32"] = base / r["decode_ms"]
        print(f"{r['codec']:16s} {r['dtype']:8s} {r['MB']:7.2f} {r['ratio_size_vs_f32']:8.3f} {r['decode_ms']:7.2f} "
              f"{r['decode_speed_vs_npy_f32']:9.2f} {r['encode_ms']:7.1f} {r['max_rel_err']:11.2e}")
    if args.json:
        print(json.dumps({"rows": rows}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
