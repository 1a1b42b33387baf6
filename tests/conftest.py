"""Fixtures shared by every test package."""

from __future__ import annotations

import functools
import http.server
import os
import threading
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
