"""The code fingerprint recorded in run.json: stable for the same source, different after an edit."""

from __future__ import annotations

import shutil
from pathlib import Path

from mixpretrain import provenance


def test_fingerprint_is_stable_and_follows_the_source(tmp_path: Path, monkeypatch) -> None:
    assert provenance.code_fingerprint() == provenance.code_fingerprint()
    assert provenance.code_record()["fingerprint"] == provenance.code_fingerprint()
    copy = tmp_path / "mixpretrain"
    shutil.copytree(provenance.PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(provenance, "PACKAGE", copy)
    provenance.code_fingerprint.cache_clear()
    try:
        same = provenance.code_fingerprint()
        (copy / "samplers" / "transfer.py").write_text((copy / "samplers" / "transfer.py").read_text() + "\n# edit\n")
        provenance.code_fingerprint.cache_clear()
        edited = provenance.code_fingerprint()
    finally:
        provenance.code_fingerprint.cache_clear()
    assert same != edited and len(edited) == 16
