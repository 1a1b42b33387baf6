"""Sampler registry: built-in samplers by name, plus third-party ones from entry points.

A third-party package registers a sampler in its ``setup.py`` / ``pyproject.toml``::

    entry_points={"mixpretrain.samplers": ["mysampler = mypkg.sampling:MySampler"]}

The object is a :class:`~mixpretrain.samplers.base.MixtureSampler` subclass or any callable
``(domains, **options)`` returning an object with ``weights``, ``observe``, ``state_dict`` and
``load_state_dict`` (``diagnostics`` is optional; a wrapper adds ``{}``). A config then names it
with ``sampler.name: mysampler``. Built-in names take precedence over entry points.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable, Sequence
from importlib import metadata
from typing import Any

from .base import SamplerError

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "mixpretrain.samplers"

# name -> "module:attribute"; imported lazily so a bad optional dependency of one sampler
# never stops the others from building.
BUILTINS: dict[str, str] = {
    "uniform": "mixpretrain.samplers.baselines:UniformSampler",
    "proportional": "mixpretrain.samplers.baselines:ProportionalSampler",
    "temperature": "mixpretrain.samplers.baselines:TemperatureSampler",
    "fixed": "mixpretrain.samplers.baselines:FixedSampler",
    "ado": "mixpretrain.samplers.online:AdoSampler",
    "odm": "mixpretrain.samplers.online:OdmSampler",
    "doremi": "mixpretrain.samplers.online:DoremiSampler",
    "transfer": "mixpretrain.samplers.transfer:TransferSampler",
}

REQUIRED_METHODS = ("weights", "observe", "state_dict", "load_state_dict")


def _entry_points() -> dict[str, metadata.EntryPoint]:
    eps = {}
    for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
        if ep.name in BUILTINS:
            log.warning("entry point %s = %s ignored: '%s' is a built-in sampler", ep.name, ep.value, ep.name)
            continue
        eps.setdefault(ep.name, ep)
    return eps


def available_samplers() -> dict[str, str]:
    """{name: "module:attribute"} for built-ins and installed entry points."""
    out = dict(BUILTINS)
    out.update({name: ep.value for name, ep in _entry_points().items()})
    return out


def get_factory(name: str) -> Callable[..., Any]:
    if not isinstance(name, str):
        raise SamplerError(f"sampler name must be a string, got {name!r}")
    if name in BUILTINS:
        module, _, attr = BUILTINS[name].partition(":")
        return getattr(importlib.import_module(module), attr)
    eps = _entry_points()
    if name in eps:
        try:
            return eps[name].load()
        except Exception as exc:  # a broken plugin: say which one and why
            raise SamplerError(f"sampler '{name}': entry point {eps[name].value} failed to load: {exc}") from exc
    valid = sorted(BUILTINS) + sorted(eps)
    raise SamplerError(f"unknown sampler '{name}'; valid samplers are {valid}")


class _WithDiagnostics:
    """Adds ``diagnostics() -> {}`` to a third-party sampler that lacks it."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner

    def __getattr__(self, item: str) -> Any:
        return getattr(self._inner, item)

    def diagnostics(self) -> dict[str, Any]:
        return {}


def build(name: str, domains: Sequence[str], **options: Any) -> Any:
    """Build the sampler registered under ``name`` for ``domains`` with ``options``."""
    factory = get_factory(name)
    sampler = factory(list(domains), **options)
    missing = [m for m in REQUIRED_METHODS if not callable(getattr(sampler, m, None))]
    if missing:
        raise SamplerError(f"sampler '{name}' ({type(sampler).__name__}) lacks methods {missing}")
    if not callable(getattr(sampler, "diagnostics", None)):
        sampler = _WithDiagnostics(sampler)
    return sampler
