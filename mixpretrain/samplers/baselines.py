"""Static baselines: uniform, proportional, temperature (with UniMax repetition cap), fixed."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from .base import MixtureSampler, SamplerError, cap_fill, per_domain


class UniformSampler(MixtureSampler):
    """Every domain equally often."""

    name = "uniform"


class ProportionalSampler(MixtureSampler):
    """Proportional to the unique samples available per domain (``available``)."""

    name = "proportional"

    def __init__(self, domains, **options: Any) -> None:
        super().__init__(domains, **options)
        if self.available is None:
            raise SamplerError("sampler 'proportional': option 'available' (unique samples per domain) is required")
        total = self.available.sum()
        self._w = self.available / total if total > 0 else np.full(self.k, 1.0 / self.k)


def repetition_caps(sampler: MixtureSampler, max_epochs: float | None) -> np.ndarray | None:
    """Per-domain weight caps so no domain repeats more than ``max_epochs`` over the budget."""
    if max_epochs is None:
        return None
    if sampler.available is None:
        raise SamplerError(f"sampler '{sampler.name}': option 'max_epochs' needs option 'available'")
    budget = sampler._require_budget()
    return max_epochs * sampler.available / budget


class TemperatureSampler(MixtureSampler):
    """w_i ∝ available_i^(1/tau), then capped at ``max_epochs`` passes over each domain's data
    for the planned ``total_budget`` (UniMax, Chung et al. 2023: the excess goes to the domains
    that still have unseen data). tau=1 is proportional, tau=inf uniform (UniMax's base)."""

    name = "temperature"
    OPTIONS = {"tau": 2.0, "max_epochs": None}

    def __init__(self, domains, **options: Any) -> None:
        super().__init__(domains, **options)
        if self.available is None:
            raise SamplerError("sampler 'temperature': option 'available' (unique samples per domain) is required")
        tau = parse_temperature(self.name, "tau", self.options["tau"])
        max_epochs = self.options["max_epochs"]
        if max_epochs is not None:
            max_epochs = self._opt_float("max_epochs", lo=1e-9)
        self._w = cap_fill(temperature_mixture(self.available, tau), repetition_caps(self, max_epochs))


def temperature_mixture(available: np.ndarray, tau: float) -> np.ndarray:
    """w ∝ available^(1/tau), uncapped: tau = 1 is proportional, tau = inf uniform (also when no
    domain has data)."""
    base = np.ones(len(available)) if math.isinf(tau) else np.power(np.maximum(available, 0.0), 1.0 / tau)
    if base.sum() <= 0:
        base = np.ones(len(available))
    return base / base.sum()


def parse_temperature(sampler: str, key: str, value: Any) -> float:
    """A sampling temperature: a number > 0, or "inf" / "infinity" (uniform)."""
    if isinstance(value, str) and value.lower() in ("inf", "infinity"):
        return math.inf
    if not isinstance(value, int | float) or isinstance(value, bool) or not value > 0:
        raise SamplerError(f"sampler '{sampler}' option '{key}': expected a number > 0 (or inf), got {value!r}")
    return float(value)


def _weights_from_laws(path: str | Path, domains: tuple[str, ...], sampler: MixtureSampler) -> Any:
    """The allocation in a JSON written by ``mixpretrain laws allocate -o`` (``weights`` at the top
    or under ``allocation``), or, for a fitted ``laws.json`` (``laws fit``) without one, the
    allocation computed from its law for the run's ``total_budget`` with the sampler's floor."""
    path = Path(path)
    if not path.is_file():
        raise SamplerError(f"sampler 'fixed' option 'laws': file {path} does not exist")
    try:
        doc = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise SamplerError(f"sampler 'fixed' option 'laws': {path} is not valid JSON: {exc}") from exc
    if not isinstance(doc, Mapping):
        kind = {list: "array", str: "string", bool: "boolean", int: "number", float: "number"}.get(type(doc), "null")
        raise SamplerError(
            f"sampler 'fixed' option 'laws': {path} holds a JSON {kind} at the top level; expected an "
            "object: a `laws allocate -o` output ('weights' at the top or under 'allocation') or a fitted laws.json "
            "(family, domains, params). Give plain weights with option 'weights' instead"
        )
    # Accept the allocation at the top level or under "allocation" (laws allocate output).
    for node in (doc.get("allocation"), doc):
        if isinstance(node, Mapping) and "weights" in node:
            weights = node["weights"]
            if isinstance(weights, Mapping):
                return weights
            names = node.get("domains") or doc.get("domains")
            if names is not None and list(names) != list(domains):
                raise SamplerError(
                    f"sampler 'fixed': {path} has weights for domains {names}, the run has {list(domains)}"
                )
            return weights
    if isinstance(doc, Mapping) and {"family", "domains", "params"} <= set(doc):
        return _allocate_from_fit(doc, path, domains, sampler)
    raise SamplerError(
        f"sampler 'fixed' option 'laws': {path} has no 'weights' or 'allocation.weights' entry and is not a fitted laws.json"
    )


def _allocate_from_fit(doc: Mapping[str, Any], path: Path, domains: tuple[str, ...], sampler: MixtureSampler) -> Any:
    from mixpretrain.scaling import LawFit, allocate

    if list(doc["domains"]) != list(domains):
        raise SamplerError(f"sampler 'fixed': {path} is a law over domains {doc['domains']}, the run has {list(domains)}")
    budget = sampler._require_budget()
    try:
        fit = LawFit.from_dict(dict(doc))
        return allocate(fit, budget, floor=sampler.floor).weights
    except ValueError as exc:
        raise SamplerError(f"sampler 'fixed': cannot allocate from the law in {path}: {exc}") from exc


class FixedSampler(MixtureSampler):
    """Constant weights given in the config (``weights``) or read from a ``laws.json``
    allocation (``laws``). Exactly one of the two."""

    name = "fixed"
    OPTIONS = {"weights": None, "laws": None}

    def __init__(self, domains, **options: Any) -> None:
        super().__init__(domains, **options)
        given, laws = self.options["weights"], self.options["laws"]
        if (given is None) == (laws is None):
            raise SamplerError("sampler 'fixed': give exactly one of options 'weights' or 'laws' (path to laws.json)")
        if laws is not None:
            given = _weights_from_laws(laws, self.domains, self)
            what = f"sampler 'fixed' weights from {laws}"
        else:
            what = "sampler 'fixed' option 'weights'"
        w = per_domain(given, self.domains, what)
        if w.sum() <= 0:
            raise SamplerError(f"{what}: weights sum to 0")
        self._w = w / w.sum()
