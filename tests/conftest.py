"""Fixtures shared by every test package."""

from __future__ import annotations

import functools
import http.server
import os
import threading
import warnings
from collections.abc import Callable, Iterator
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


class QuietHTTPHandler(http.server.SimpleHTTPRequestHandler):
    """Serves a folder without logging each request (keeps the test output clean)."""

    def log_message(self, *args: object) -> None:
        pass


def legacy_multiframe(series: Path, out: Path, modality: str) -> Path:
    """A real DICOM series converted to one Legacy Converted Enhanced CT/MR Image file
    (highdicom), saved as ``out/volume.dcm``."""
    import pydicom
    from highdicom.legacy import LegacyConvertedEnhancedCTImage, LegacyConvertedEnhancedMRImage

    cls = {"CT": LegacyConvertedEnhancedCTImage, "MR": LegacyConvertedEnhancedMRImage}[modality]
    datasets = [pydicom.dcmread(f) for f in sorted(series.iterdir())]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the de-identified patient names are single-component
        mf = cls(datasets, series_instance_uid=pydicom.uid.generate_uid(), series_number=99,
                 sop_instance_uid=pydicom.uid.generate_uid(), instance_number=1)
    out.mkdir(parents=True)
    path = out / "volume.dcm"
    mf.save_as(path)
    return path


@pytest.fixture(scope="session")
def multiframe_from() -> Callable[[Path, Path, str], Path]:
    """``legacy_multiframe`` for tests in any package (conftest is not importable as a module)."""
    return legacy_multiframe


@pytest.fixture()
def serve_directory() -> Iterator[Callable[..., str]]:
    """``serve_directory(folder, handler=QuietHTTPHandler)`` serves ``folder`` over http on a
    loopback port and returns its base URL ``http://127.0.0.1:PORT/``: a real server, for shard
    streaming over http(s). Every server started is shut down after the test."""
    servers: list[tuple[http.server.ThreadingHTTPServer, threading.Thread]] = []

    def start(folder: str | Path, handler: type = QuietHTTPHandler) -> str:
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(handler, directory=str(folder)))
        server.daemon_threads = True  # a handler held up on purpose must not block the shutdown
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        servers.append((server, thread))
        return f"http://127.0.0.1:{server.server_address[1]}/"

    yield start
    for server, thread in servers:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
