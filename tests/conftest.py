"""Fixtures shared by every test package."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
# Real scans live beside the repo (never inside it): ../shared/data/real
REAL_DATA = Path(os.environ.get("MIXPRETRAIN_REAL_DATA", REPO_ROOT.parent / "shared" / "data" / "real"))


@pytest.fixture(scope="session")
def real_data_dir() -> Path:
    if not REAL_DATA.is_dir():
        pytest.fail(f"real scans not found at {REAL_DATA} (set MIXPRETRAIN_REAL_DATA)")
    return REAL_DATA
