"""The transfer sampler's reactive guard: a domain whose validation loss rises after it was cut
below its prior share gets its floor back (and keeps it); forgetting worlds of the simulation."""

from __future__ import annotations

import numpy as np
import pytest

from mixpretrain.samplers import SamplerError, build, simulate

DOMAINS = ["ct", "mri", "pet"]
BUDGET = 30_000.0
# No preventive guard: the law may cut any domain to the floor; only the reactive guard protects.
BASE = {"seed": 0, "total_budget": BUDGET, "floor": 0.02, "explore_fraction": 0.1, "min_points": 5,
        "refit_every": 4, "warmup_fraction": 0.02, "family": "power", "min_prior_share": 0.0,
        "unidentified": "fit"}


def law(consumed: np.ndarray) -> np.ndarray:
    return np.array([0.3 + 2.0 * (1.0 + consumed[0]) ** -0.3,
                     0.3 + 3.0 * (1.0 + consumed[1]) ** -0.4,
                     0.2 + 4.0 * (1.0 + consumed[2]) ** -0.5])


def feed(sampler, shares: list[np.ndarray], rise: float = 0.0, noise: float = 0.002) -> None:
    """Drive the sampler with a *given* mixture (not its own weights): from step 11 on, ct gets
    shares[1]; its loss then rises by ``rise`` per step (forgetting) on top of the law."""
    consumed = np.zeros(3)
    for step in range(1, 41):
        w = shares[0] if step <= 10 else shares[1]
        consumed = consumed + w * 500.0
        loss = law(consumed) * np.exp(noise * np.random.default_rng(step).standard_normal(3))
        if step > 10:
            loss[0] *= 1.0 + rise * (step - 10)
        sampler.observe(step, consumed, dict(zip(DOMAINS, loss.tolist(), strict=True)), "val")


EVEN = np.full(3, 1.0 / 3.0)
CUT = np.array([0.05, 0.475, 0.475])


def test_rise_after_a_cut_restores_the_floor_for_good() -> None:
    s = build("transfer", DOMAINS, **BASE)
    feed(s, [EVEN, CUT], rise=0.01)
    assert set(s.harmed) == {"ct"}, s.harmed
    ev = s.harmed["ct"]
    assert ev["rise"] > 3.0 * ev["noise"] and ev["share_since_best"] < 1.0 / 3.0
    assert s.floors[0] == pytest.approx(1.0 / 3.0)  # harm_floor 1 x the (uniform) prior
    assert s.weights()[0] >= 1.0 / 3.0 - 1e-9 and s.target[0] >= 1.0 / 3.0 - 1e-9
    diag = s.diagnostics()
    assert "ct" in diag["harmed"] and diag["last_refit"]["harmed"] == ["ct"]
    # Kept: later observations with a falling loss do not lift the flag.
    consumed = np.full(3, 40 * 500.0 / 3)
    for step in range(41, 50):
        consumed = consumed + s.weights() * 500.0
        s.observe(step, consumed, dict(zip(DOMAINS, (0.5 * law(consumed)).tolist(), strict=True)), "val")
    assert "ct" in s.harmed and s.weights()[0] >= 1.0 / 3.0 - 1e-9


def test_without_catchup_only_the_weights_are_floored() -> None:
    """harm_catchup false: the harmed domain gets at least its prior share from the flag on, but its
    cumulative target keeps the law's value (no burst to make up the earlier shortfall)."""
    s = build("transfer", DOMAINS, **BASE, harm_catchup=False)
    feed(s, [EVEN, CUT], rise=0.01)
    assert set(s.harmed) == {"ct"}
    assert s.floors[0] == pytest.approx(1.0 / 3.0) and s.weights()[0] >= 1.0 / 3.0 - 1e-9
    assert s._target_floors()[0] == pytest.approx(0.02)
    with_catchup = build("transfer", DOMAINS, **BASE)
    feed(with_catchup, [EVEN, CUT], rise=0.01)
    assert with_catchup._target_floors()[0] == pytest.approx(1.0 / 3.0)


def test_harm_floor_option_sets_the_restored_share() -> None:
    s = build("transfer", DOMAINS, **BASE, harm_floor=0.5)
    feed(s, [EVEN, CUT], rise=0.01)
    assert s.floors[0] == pytest.approx(0.5 / 3.0)


@pytest.mark.parametrize(("shares", "rise", "opts"), [
    ([EVEN, CUT], 0.0, {}),  # cut, but the loss keeps falling: no evidence of harm
    ([EVEN, np.array([0.5, 0.25, 0.25])], 0.01, {}),  # rises, but not cut below its prior share
    ([EVEN, CUT], 0.01, {"harm_guard": 0.0}),  # guard off
    ([EVEN, CUT], 0.0005, {}),  # a rise within the noise (0.5% per step on 2% noise, over the window)
])
def test_no_flag_without_evidence(shares: list[np.ndarray], rise: float, opts: dict) -> None:
    s = build("transfer", DOMAINS, **BASE, **opts)
    feed(s, shares, rise=rise, noise=0.02 if rise == 0.0005 else 0.002)
    assert s.harmed == {}, s.harmed
    assert s.floors[0] == pytest.approx(0.02)


def test_a_small_rise_on_a_quiet_domain_is_not_harm() -> None:
    """Beyond its (tiny) noise but under harm_min_rise: holding the domain at its prior share would
    cost more than the rise (the island world's cells, flagged after < 1% and pinned at 56%)."""
    quiet = build("transfer", DOMAINS, **BASE)
    feed(quiet, [EVEN, CUT], rise=0.002, noise=0.0002)  # net rise well under 2% (the law still falls), noise 0.02%
    assert quiet.harmed == {}, quiet.harmed
    strict = build("transfer", DOMAINS, **BASE, harm_min_rise=0.0)
    feed(strict, [EVEN, CUT], rise=0.002, noise=0.0002)
    assert set(strict.harmed) == {"ct"} and strict.harmed["ct"]["rise"] < 0.02


def test_a_burst_then_starvation_is_a_cut() -> None:
    """Right after its best point a domain got a catch-up burst, then almost nothing (the H100
    gpu_small run: pet 0.72 of the samples for 20 steps, then 0.01, loss +25%). Its share since the
    best point is still above its prior; its recent share is not. harm_recent (default) flags it."""
    prior = np.array([0.1, 0.45, 0.45])  # proportional to `available`
    phases = [(10, prior), (10, np.array([0.8, 0.1, 0.1])), (20, np.array([0.01, 0.495, 0.495]))]

    def run(**opts: object) -> object:
        s = build("transfer", DOMAINS, **{**BASE, "available": [100, 450, 450], "prior": "proportional", **opts})
        consumed, step = np.zeros(3), 0
        for n, w in phases:
            for _ in range(n):
                step += 1
                consumed = consumed + w * 500.0
                loss = law(consumed) * np.exp(0.002 * np.random.default_rng(step).standard_normal(3))
                loss[0] *= 1.0 + 0.03 * max(0, step - 10)  # ct's loss rises from its best point on
                s.observe(step, consumed, dict(zip(DOMAINS, loss.tolist(), strict=True)), "val")
        return s

    s = run(harm_cut="prior")  # harm_recent against the prior share, as before harm_cut existed
    assert set(s.harmed) == {"ct"}, s.harmed
    ev = s.harmed["ct"]
    assert ev["share_since_best"] > 0.1 > ev["recent_share"]
    assert run(harm_recent=False, harm_cut="prior").harmed == {}  # the share since the best point alone misses it
    # The default (harm_cut own) compares with ct's own share at its best point and flags it sooner.
    assert run().harmed["ct"]["step"] < ev["step"]


def test_one_high_point_is_not_harm_until_confirmed() -> None:
    """A single high validation point after a cut (noise, not forgetting) looks like a rise and
    floors a domain at its prior share for good (simulated seed 1 w15: 1.1% of the objective). With
    harm_confirm 2 the evidence must hold at two successive points; a rise that persists is still
    flagged, one point later. (Not the default: real rises did not always persist, see docs.)"""
    def run(spike: float, persist: bool, **opts: object) -> object:
        s = build("transfer", DOMAINS, **{**BASE, **opts})
        consumed = np.zeros(3)
        for step in range(1, 41):
            consumed = consumed + (EVEN if step <= 10 else CUT) * 500.0
            loss = law(consumed) * np.exp(0.002 * np.random.default_rng(step).standard_normal(3))
            if step == 25 or (persist and step > 25):
                loss[0] *= 1.0 + spike
            s.observe(step, consumed, dict(zip(DOMAINS, loss.tolist(), strict=True)), "val")
            if s.harmed:
                break
        return s

    assert run(0.1, persist=False, harm_confirm=2).harmed == {}
    once = run(0.1, persist=False)
    assert set(once.harmed) == {"ct"} and once.harmed["ct"]["step"] == 25
    persistent = run(0.1, persist=True, harm_confirm=2)
    assert set(persistent.harmed) == {"ct"} and persistent.harmed["ct"]["step"] == 26
    assert persistent.harmed["ct"]["confirmed_over"] == 2


def test_state_round_trip_with_a_harmed_domain() -> None:
    s = build("transfer", DOMAINS, **BASE)
    feed(s, [EVEN, CUT], rise=0.01)
    state = s.state_dict()
    assert set(state["harmed"]) == {"ct"}
    restored = build("transfer", DOMAINS, **BASE)
    restored.load_state_dict(state)
    assert restored.state_dict() == state
    np.testing.assert_array_equal(restored.floors, s.floors)
    np.testing.assert_array_equal(restored.weights(), s.weights())
    old = dict(state)
    del old["harmed"]  # a state saved before the reactive guard: nothing flagged
    restored.load_state_dict(old)
    assert restored.harmed == {} and restored.floors[0] < 1.0 / 3.0
    with pytest.raises(SamplerError, match="harmed"):
        restored.load_state_dict({**state, "harmed": {"xray": {}}})


@pytest.mark.parametrize(("opts", "match"), [
    ({"harm_guard": -1.0}, "harm_guard"),
    ({"harm_smoothing": 0.0}, "harm_smoothing"),
    ({"harm_smoothing": 1.5}, "harm_smoothing"),
    ({"harm_floor": 1.5}, "harm_floor"),
    ({"harm_floor": "prior"}, "harm_floor"),
    ({"harm_min_rise": -0.01}, "harm_min_rise"),
    ({"harm_recent": "yes"}, "harm_recent"),
    ({"harm_confirm": 0}, "harm_confirm"),
    ({"harm_catchup": 1}, "harm_catchup"),
])
def test_bad_harm_options_are_named(opts: dict, match: str) -> None:
    with pytest.raises(SamplerError, match=match):
        build("transfer", DOMAINS, total_budget=BUDGET, **opts)


def test_forgetting_is_opt_in_and_keeps_the_world() -> None:
    plain, forget = simulate.make_world(3, seed=1), simulate.make_world(3, seed=1, forgetting=True)
    assert plain.forget_beta is None and (forget.forget_beta > 0).any() and (forget.forget_beta >= 0).all()
    np.testing.assert_array_equal(plain.available, forget.available)
    D = plain.budget * np.full(len(plain.domains), 1.0 / len(plain.domains))
    np.testing.assert_array_equal(plain.law.predict(D), forget.law.predict(D))
    assert plain.objective(D, recent=np.full(len(D), 0.01)) == plain.objective(D)  # no forgetting: no penalty
    prop = forget.forget_ref
    assert forget.objective(D, recent=prop) == pytest.approx(plain.objective(D))  # at r0: no penalty
    cut = np.where(forget.forget_beta > 0, 0.1 * prop, prop)
    assert forget.objective(D, recent=cut) > plain.objective(D)
    # The oracle sees the penalty: not worse than allocate's law-only optimum or proportional.
    orc = simulate.oracle(forget, 0.01)
    alloc = simulate.oracle(plain, 0.01).weights
    j = forget.objective(forget.budget * orc.weights, recent=orc.weights)
    for w in (alloc, prop):
        assert j <= forget.objective(forget.budget * w, recent=w) + 1e-12


def test_reactive_guard_protects_in_a_forgetting_world() -> None:
    """Seed 0 world 17 with forgetting (3 domains, benchmark schedule, power family only to keep the
    test fast): without any guard the law starves a forgetting domain and ends 12.6% above the
    oracle; the reactive guard alone flags that domain and ends 0.09% above it."""
    world = simulate.make_world(17, seed=0, forgetting=True)
    orc = simulate.oracle(world, 0.01)
    j_oracle = world.objective(world.budget * orc.weights, recent=orc.weights)
    _, opts = simulate.sampler_options(world, "transfer", 0.01, orc.weights)
    opts = {**opts, "min_prior_share": 0.0, "unidentified": "fit", "harm_floor": 1.0, "family": "power"}
    off = simulate.run_sampler(world, "transfer", {**opts, "harm_guard": 0.0})
    on = simulate.run_sampler(world, "transfer", {**opts, "harm_guard": 3.0})
    assert not off["diagnostics"]["harmed"]
    flagged = on["diagnostics"]["harmed"]
    assert flagged and all(world.forget_beta[world.domains.index(d)] > 0 for d in flagged)
    assert on["objective"] < off["objective"]
    assert on["objective"] / j_oracle - 1 < 0.01 < off["objective"] / j_oracle - 1


def test_harm_cut_own_counts_a_fall_from_the_domains_own_share() -> None:
    """harm_cut own: ct got 0.6 of the samples up to its best point, then 0.35 (still above its prior
    1/3) while its loss rose. Against the prior that is no cut; against its own share it is (H100
    gpu_small seed 2: pet went from 0.5-0.8 to 0.01 while the guard still saw it above its prior)."""
    boosted, lowered = np.array([0.6, 0.2, 0.2]), np.array([0.35, 0.325, 0.325])
    by_prior = build("transfer", DOMAINS, **BASE, harm_cut="prior")
    feed(by_prior, [boosted, lowered], rise=0.01)
    assert "ct" not in by_prior.harmed
    by_own = build("transfer", DOMAINS, **BASE)  # the default
    feed(by_own, [boosted, lowered], rise=0.01)
    ev = by_own.harmed["ct"]
    assert ev["share_since_best"] > 1.0 / 3.0 and ev["cut_below"] > ev["share_since_best"]
    with pytest.raises(SamplerError, match="harm_cut"):
        build("transfer", DOMAINS, **BASE, harm_cut="mine")
