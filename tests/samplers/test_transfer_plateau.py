"""The transfer sampler's defaults on a loss plateau: a domain whose curve is flat until it has seen
enough of its own data must not be read as converged and starved (the H100 gpu_small failure)."""

from __future__ import annotations

from mixpretrain.samplers import simulate

OLD_DEFAULTS = {"prior": "proportional", "unidentified": "fit"}  # the defaults before the H100 plateau runs


def test_defaults_do_not_starve_a_domain_on_a_plateau() -> None:
    # Seed 5, world 6 of the simulated --plateau benchmark: a hub world where the old defaults ended
    # 10% worse than proportional (benchmarks/RESULTS.md, "Plateau guards").
    world = simulate.make_world(6, seed=5, plateau=True)
    result = simulate.evaluate_world(world, ("proportional", "transfer", "old"), variants={"old": OLD_DEFAULTS})
    rows = result["samplers"]
    assert rows["transfer"]["vs_proportional"] < 0.0  # the default: not worse than proportional
    assert rows["old"]["vs_proportional"] > 0.05  # the plateau domain fitted as converged and starved
