"""The opt-in step profiler: parses MIXPRETRAIN_PROFILE, profiles (start, stop], writes its files."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from mixpretrain.train.profiling import ENV, StepProfiler


def test_off_unless_set_and_only_on_rank0(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV, raising=False)
    assert StepProfiler.from_env(tmp_path, is_main=True) is None
    monkeypatch.setenv(ENV, "1:2")
    assert StepProfiler.from_env(tmp_path, is_main=False) is None
    assert StepProfiler.from_env(tmp_path, is_main=True) is not None


@pytest.mark.parametrize("spec", ["5", "a:b", "4:2"])
def test_bad_spec_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, spec: str) -> None:
    monkeypatch.setenv(ENV, spec)
    with pytest.raises(ValueError, match=ENV):
        StepProfiler.from_env(tmp_path, is_main=True)


def test_profiles_the_steps_in_range(tmp_path: Path) -> None:
    prof = StepProfiler(1, 3, tmp_path / "profile")
    x = torch.randn(64, 64)
    for step in range(1, 5):
        x = x @ x.T / 64  # the "training step"
        prof.after_step(step)
    table = (tmp_path / "profile" / "steps_2-3.txt").read_text()
    assert "aten::mm" in table
    assert (tmp_path / "profile" / "steps_2-3.json").stat().st_size > 0
