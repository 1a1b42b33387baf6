"""Which code produced a result: a fingerprint of the installed mixpretrain source.

Why: a sampler comparison reuses finished runs (so a variant can be added to an earlier
comparison), and reuse is checked against the run config. A change in the code, e.g. a
sampler's defaults, leaves the config the same; without this, runs of old and new code would be
tabulated side by side without a word.
"""

from __future__ import annotations

import hashlib
from functools import lru_cache
from pathlib import Path

from mixpretrain import __version__

PACKAGE = Path(__file__).resolve().parent


@lru_cache(maxsize=1)
def code_fingerprint() -> str:
    """sha256 (16 hex digits) of every ``*.py`` file of the package, path and content."""
    digest = hashlib.sha256()
    for path in sorted(PACKAGE.rglob("*.py")):
        digest.update(path.relative_to(PACKAGE).as_posix().encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def code_record() -> dict[str, str]:
    """What run.json stores under ``code``."""
    return {"version": __version__, "fingerprint": code_fingerprint()}
