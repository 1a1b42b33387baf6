"""mixpretrain.samplers: pluggable mixture samplers (domain losses in, probabilities out).

    from mixpretrain.samplers import build
    s = build("transfer", ["ct", "mri", "pet"], total_budget=100_000, available={"ct": 900, ...})
    s.observe(step, consumed, {"ct": 0.71, "mri": 0.64}, "val")
    w = s.weights()

See docs/samplers.md for every sampler and option.
"""

from .base import COMMON_OPTIONS, MixtureSampler, SamplerError, project_to_floor
from .registry import ENTRY_POINT_GROUP, available_samplers, build, get_factory

__all__ = [
    "COMMON_OPTIONS",
    "ENTRY_POINT_GROUP",
    "MixtureSampler",
    "SamplerError",
    "available_samplers",
    "build",
    "get_factory",
    "project_to_floor",
]
