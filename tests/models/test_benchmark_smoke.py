"""The throughput benchmark runs end to end (tiny sizes) and ends with the JSON line it promises."""

from __future__ import annotations

import json
import runpy
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "model_throughput.py"


def test_model_throughput_smoke(capsys, monkeypatch):
    argv = [str(SCRIPT), "--device", "cpu", "--threads", "1", "--preset", "tiny", "--img", "16", "32", "16",
            "--patch", "8", "--batch", "1", "--steps", "1", "--rounds", "1", "--warmup", "1", "--peak-n", "128",
            "--json"]
    monkeypatch.setattr(sys, "argv", argv)
    try:
        runpy.run_path(str(SCRIPT), run_name="__main__")
    except SystemExit as exc:
        assert exc.code == 0
    lines = capsys.readouterr().out.strip().splitlines()
    result = json.loads(lines[-1])
    assert result["ratio_vs_monai"] is not None and result["ratio_vs_monai"] > 0
    for name in ("ours", "monai"):
        row = result["models"][name]
        assert row["samples_per_s"] > 0 and row["gflop_per_sample"] > 0 and 0 < row["mfu"]
    assert any(line.startswith("ratio ours/MONAI") for line in lines)
