"""Third-party samplers register through the `mixpretrain.samplers` entry-point group.

The test installs a real distribution (a dist-info folder with entry_points.txt) on sys.path;
importlib.metadata discovers it exactly as it would a pip-installed package.
"""

from __future__ import annotations

import textwrap

import numpy as np
import pytest

from mixpretrain.samplers import SamplerError, available_samplers, build

PLUGIN = '''
import numpy as np
from mixpretrain.samplers import MixtureSampler


class Favourite(MixtureSampler):
    """Everything on one domain (down to the floor for the others)."""

    name = "favourite"
    OPTIONS = {"favourite": None}

    def __init__(self, domains, **options):
        super().__init__(domains, **options)
        self._w = np.array([1.0 if d == self.options["favourite"] else 0.0 for d in self.domains])


class _Plain:
    """A sampler that does not derive from MixtureSampler and has no diagnostics()."""

    def __init__(self, domains):
        self.domains = domains

    def weights(self):
        return np.full(len(self.domains), 1.0 / len(self.domains))

    def observe(self, step, consumed, losses, split):
        pass

    def state_dict(self):
        return {}

    def load_state_dict(self, state):
        pass


def make_plain(domains, **options):
    return _Plain(domains)
'''


@pytest.fixture
def plugin_on_path(tmp_path, monkeypatch):
    (tmp_path / "mixpretrain_test_plugin.py").write_text(textwrap.dedent(PLUGIN))
    dist = tmp_path / "mixpretrain_test_plugin-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: mixpretrain-test-plugin\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(
        "[mixpretrain.samplers]\n"
        "favourite = mixpretrain_test_plugin:Favourite\n"
        "plain = mixpretrain_test_plugin:make_plain\n"
        "uniform = mixpretrain_test_plugin:Favourite\n"
        "broken = mixpretrain_test_plugin_missing:Nothing\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path


def test_third_party_sampler_by_entry_point(plugin_on_path) -> None:
    names = available_samplers()
    assert names["favourite"] == "mixpretrain_test_plugin:Favourite"
    s = build("favourite", ["ct", "mri", "pet"], favourite="mri", floor=0.05)
    assert np.allclose(s.weights(), [0.05, 0.9, 0.05])
    with pytest.raises(SamplerError, match=r"unknown options \['colour'\]"):
        build("favourite", ["ct", "mri"], colour="red")


def test_plain_plugin_gets_empty_diagnostics(plugin_on_path) -> None:
    s = build("plain", ["a", "b"])
    assert s.diagnostics() == {}
    assert np.allclose(s.weights(), 0.5)


def test_builtin_names_win_and_broken_plugins_are_named(plugin_on_path) -> None:
    assert available_samplers()["uniform"].startswith("mixpretrain.samplers.")
    assert np.allclose(build("uniform", ["a", "b"]).weights(), 0.5)
    with pytest.raises(SamplerError, match="broken.*failed to load"):
        build("broken", ["a", "b"])


def test_unknown_name_lists_plugins(plugin_on_path) -> None:
    with pytest.raises(SamplerError, match="favourite"):
        build("favorite", ["a"])
