"""The transfer sampler's probes: a tilt toward the domain that the law families disagree on."""

from __future__ import annotations

import numpy as np
import pytest

from mixpretrain.samplers import SamplerError, build, simulate

PROBE = {"probe": 0.5, "probe_obs": 6}


def hub_world_run(**options):
    """A simulated hub world (seed 3, world 16) where the families disagree on the hub, driven by
    hand so each observation's weights and the refit records can be read."""
    world = simulate.make_world(16, 3)
    orc = simulate.oracle(world, 0.01)
    opts = {**simulate.sampler_options(world, "transfer", 0.01, orc.weights)[1], **options}
    sampler = build("transfer", world.domains, **opts)
    probes = []
    original = sampler._retarget

    def record(info):
        original(info)
        if "probe" in info:
            probes.append((info["step"], dict(info["probe"]), sampler.probe_left))

    sampler._retarget = record
    return world, sampler, probes, simulate.run_sampler(world, "transfer", opts, sampler=sampler)


def test_probes_tilt_toward_the_disputed_domain_and_stop_on_time() -> None:
    world, sampler, probes, res = hub_world_run(**PROBE)
    assert probes, "no probe in a world whose families disagree on the hub"
    for step, probe, _ in probes:
        assert probe["gap"] >= sampler.probe_gap
        assert step / 60 <= sampler.probe_until + 1e-9  # 60 equal intervals: the share of the budget consumed
    # The weights of the interval after a probe starts give the probed domain at least the probe's share.
    step, probe, _ = probes[0]
    d = world.domains.index(probe["domain"])
    assert res["weights"][step][d] >= PROBE["probe"] - 0.02  # less only by the floors of the others
    # Probes start before probe_until and last probe_obs observations: none is running at the end.
    assert sampler.diagnostics()["probe"] == {"domain": None, "left": 0}


def test_no_probe_by_default() -> None:
    _, sampler, probes, _ = hub_world_run()
    assert sampler.probe == 0.0
    assert probes == [] and sampler.probe_left == 0


def test_state_round_trip_mid_probe_continues_identically() -> None:
    """Stop while a probe runs, restore the state into a new sampler, replay the same observations:
    the same weights after every one of them."""
    world = simulate.make_world(16, 3)
    orc = simulate.oracle(world, 0.01)
    opts = {**simulate.sampler_options(world, "transfer", 0.01, orc.weights)[1], **PROBE}
    first = build("transfer", world.domains, **opts)
    seen, snapshot = [], {}
    observe = first.observe

    def spy(step, consumed, losses, split):
        observe(step, consumed, losses, split)
        seen.append(((step, np.array(consumed), dict(losses), split), first.weights().tolist()))
        if first.probe_left > 0 and not snapshot:
            snapshot.update(at=len(seen), state=first.state_dict())

    first.observe = spy
    simulate.run_sampler(world, "transfer", opts, sampler=first)
    assert snapshot, "no probe was running after any observation"
    second = build("transfer", world.domains, **opts)
    second.load_state_dict(snapshot["state"])
    assert second.probe_left == snapshot["state"]["probe_left"] > 0
    for args, weights in seen[snapshot["at"]:]:
        second.observe(*args)
        assert second.weights().tolist() == weights


def test_a_state_saved_before_probes_loads() -> None:
    s = build("transfer", ["ct", "mri"], total_budget=1000.0, **PROBE)
    state = s.state_dict()
    for key in ("probe_domain", "probe_left"):
        state.pop(key)
    build("transfer", ["ct", "mri"], total_budget=1000.0, **PROBE).load_state_dict(state)


@pytest.mark.parametrize(("opts", "message"), [({"probe": 1.5}, "probe"), ({"probe_obs": 0}, "probe_obs"),
                                               ({"probe_until": -0.1}, "probe_until"), ({"probe_gap": 2}, "probe_gap")])
def test_bad_probe_options_are_refused_by_name(opts, message) -> None:
    with pytest.raises(SamplerError, match=message):
        build("transfer", ["ct", "mri"], total_budget=1000.0, **opts)
