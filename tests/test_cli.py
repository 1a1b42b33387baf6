"""The top-level command: help and version."""

from __future__ import annotations

import pytest

from mixpretrain import __version__
from mixpretrain.cli import main
from mixpretrain.provenance import code_fingerprint


def test_version_names_the_code_a_run_would_record(capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out.strip() == f"mixpretrain {__version__} (code fingerprint {code_fingerprint()})"


def test_no_command_prints_help(capsys) -> None:
    assert main([]) == 2
    assert "COMMAND" in capsys.readouterr().out
