"""Guards of the transfer sampler against starving a domain whose law is poorly identified."""

from __future__ import annotations

import numpy as np
import pytest

from mixpretrain.samplers import SamplerError, build
from mixpretrain.samplers.transfer import project_to_floors

DOMAINS = ["ct", "mri", "pet"]
BUDGET = 30_000.0
BASE = {"seed": 0, "total_budget": BUDGET, "floor": 0.02, "explore_fraction": 0.1, "min_points": 5,
        "refit_every": 1, "warmup_fraction": 0.02, "family": "power",
        # The preventive guards under test, at their defaults before issue 5's reactive guard turned them off.
        "min_prior_share": 0.5, "unidentified": "prior"}


def make(**opts):
    """A transfer sampler with BASE, overridden by ``opts``."""
    return build("transfer", DOMAINS, **{**BASE, **opts})


def flat_ct_loss(consumed: np.ndarray) -> np.ndarray:
    """ct's loss does not move with its own data (as in the real cpu_tiny runs, where the fit put
    ct's exponent on its lower bound); mri and pet follow clean power laws."""
    ct = 0.7
    mri = 0.3 + 3.0 * (1.0 + consumed[1]) ** -0.4
    pet = 0.2 + 4.0 * (1.0 + consumed[2]) ** -0.5
    return np.array([ct, mri, pet])


def run(sampler, steps: int = 50, per_step: float = 500.0) -> list[np.ndarray]:
    consumed = np.zeros(3)
    out = []
    for step in range(1, steps + 1):
        w = sampler.weights()
        out.append(w.copy())
        consumed = consumed + w * per_step
        loss = flat_ct_loss(consumed) * np.exp(0.002 * np.random.default_rng(step).standard_normal(3))
        sampler.observe(step, consumed, dict(zip(DOMAINS, loss.tolist(), strict=True)), "val")
    return out


def steered(sampler, weights: list[np.ndarray]) -> np.ndarray:
    """Weights of the steering phase (after exploration)."""
    n_explore = int(np.ceil(0.1 * BUDGET / 500.0)) + 1
    return np.array(weights[n_explore:])


def test_unguarded_sampler_starves_the_flat_domain() -> None:
    """The failure mode the guards exist for: with them off, the flat domain goes to the floor."""
    s = make(min_prior_share=0.0, unidentified="fit")
    w = steered(s, run(s))
    assert w[-5:, 0].max() < 0.1, w[-5:]


def test_flat_domain_is_not_cut_below_min_prior_share() -> None:
    s = make(unidentified="fit")  # floor guard only
    w = steered(s, run(s))
    prior = 1.0 / 3.0
    assert w[:, 0].min() >= 0.5 * prior - 1e-9, w[:, 0]
    assert s.target[0] >= 0.5 * prior - 1e-9
    # The floor is a guard, not a freeze: the other domains still move with the law.
    assert not np.allclose(w[-1], prior, atol=0.02)


def test_unidentified_domain_keeps_its_prior_share() -> None:
    """ct's exponent sits on the fitter's lower bound: it keeps its prior share of the target."""
    s = make(min_prior_share=0.0)
    run(s)
    diag = s.diagnostics()
    assert "ct" in diag["last_refit"].get("unidentified", []), diag["last_refit"]
    assert diag["last_refit"]["optimum"][0] == pytest.approx(1.0 / 3.0, abs=1e-6)
    assert s.target[0] == pytest.approx(1.0 / 3.0, abs=0.03)


def test_misfit_rule_trusts_a_bound_fit_that_tracks_a_resolved_drop() -> None:
    """mri follows a clean power law with E = 0 (on the fitter's bound, but the drop is resolved and
    fitted within the noise): the prior rule holds it, the misfit rule holds only the flat ct."""
    def loss(consumed: np.ndarray) -> np.ndarray:
        return np.array([0.7, 3.0 * (1.0 + consumed[1]) ** -0.4, 0.2 + 4.0 * (1.0 + consumed[2]) ** -0.5])

    held = {}
    for rule in ("prior", "misfit"):
        s = make(min_prior_share=0.0, unidentified=rule)
        consumed = np.zeros(3)
        for step in range(1, 51):
            consumed = consumed + s.weights() * 500.0
            obs = loss(consumed) * np.exp(0.002 * np.random.default_rng(step).standard_normal(3))
            s.observe(step, consumed, dict(zip(DOMAINS, obs.tolist(), strict=True)), "val")
        held[rule] = s.diagnostics()["last_refit"].get("unidentified", [])
    assert held == {"prior": ["ct", "mri"], "misfit": ["ct"]}


def test_misfit_flags_a_curve_the_law_cannot_follow() -> None:
    """A plateau that ends (flat, then a drop) misfits a power law; clean power-law curves do not."""
    s = make(min_prior_share=0.0, unidentified="misfit")
    consumed = np.zeros(3)
    for step in range(1, 51):
        consumed = consumed + s.weights() * 500.0
        clean = flat_ct_loss(consumed)
        clean[0] = 0.9 - 0.3 / (1.0 + (3000.0 / max(consumed[0], 1.0)) ** 4)  # flat at 0.9, then 0.6
        obs = clean * np.exp(0.002 * np.random.default_rng(step).standard_normal(3))
        s.observe(step, consumed, dict(zip(DOMAINS, obs.tolist(), strict=True)), "val")
    assert s._misfit("val").tolist() == [True, False, False]


def test_proportional_prior_floors_follow_the_prior() -> None:
    available = {"ct": 20_000, "mri": 6_000, "pet": 2_000}
    prior = np.array([20.0, 6.0, 2.0]) / 28.0
    s = make(prior="proportional", available=available, min_prior_share=0.8)
    w = np.array(run(s))
    # The flat domain's law is never identified: its floor never relaxes, whatever the others do.
    assert np.all(w[:, 0] >= 0.8 * prior[0] - 1e-9), w[:, 0].min()
    # Before the first refit (no evidence about any law yet) every floor follows the prior.
    first = BASE["min_points"]
    assert s.counters["refits"] > 0
    assert np.all(w[:first] >= 0.8 * prior - 1e-9), w[:first].min(axis=0)
    # With floor_relax 0 the floors never relax (the behaviour before evidence-relaxed floors).
    s = make(prior="proportional", available=available, min_prior_share=0.8,
              floor_relax=0.0)
    w = np.array(run(s))
    assert np.all(w >= 0.8 * prior - 1e-9), w.min(axis=0)


def test_floors_relax_only_for_identified_domains() -> None:
    """mri and pet follow clean power laws: their floors relax as successive refits identify them;
    the flat ct's law is on a bound or unresolved, so its floor stays at min_prior_share x prior."""
    s = make()
    run(s)
    full = 0.5 / 3.0
    assert s.floors[0] == pytest.approx(full)
    assert s.doubt[0] == 1.0
    assert np.all(s.floors[1:] < 0.5 * full), s.floors
    restored = make()
    restored.load_state_dict(s.state_dict())
    np.testing.assert_array_equal(restored.floors, s.floors)
    old = s.state_dict()
    del old["doubt"]  # a state saved before floors relaxed: full floors, no evidence yet
    restored.load_state_dict(old)
    np.testing.assert_allclose(restored.floors, full)


def test_full_prior_share_pins_the_prior() -> None:
    # floor_relax 0: the floors never relax, so min_prior_share 1 pins the prior for good.
    s = make(min_prior_share=1.0, dither=0.3, floor_relax=0.0)
    for w in run(s, steps=20):
        np.testing.assert_allclose(w, 1.0 / 3.0, atol=1e-12)


def test_shrink_pulls_the_optimum_to_the_prior() -> None:
    s = make(min_prior_share=0.0, unidentified="fit", shrink=1.0)
    run(s, steps=30)
    np.testing.assert_allclose(s.diagnostics()["last_refit"]["optimum"], 1.0 / 3.0, atol=1e-9)


@pytest.mark.parametrize(("opts", "match"), [
    ({"min_prior_share": 1.5}, "min_prior_share"),
    ({"unidentified": "drop"}, "unidentified"),
    ({"misfit_ratio": -1.0}, "misfit_ratio"),
    ({"shrink": -0.1}, "shrink"),
    ({"floor_relax": 2.0}, "floor_relax"),
])
def test_bad_guard_options_are_named(opts: dict, match: str) -> None:
    with pytest.raises(SamplerError, match=match):
        make(**opts)


def test_project_to_floors_keeps_ratios_above_floors() -> None:
    w = project_to_floors(np.array([0.9, 0.09, 0.01]), np.array([0.0, 0.2, 0.1]))
    assert w.sum() == pytest.approx(1.0)
    assert w[1] == pytest.approx(0.2) and w[2] == pytest.approx(0.1)
    assert w[0] == pytest.approx(0.7)


def test_default_prior_is_the_temperature_mixture_when_available_is_given() -> None:
    available = {"ct": 40_000, "mri": 10_000, "pet": 2_500}
    s = make(available=available)
    np.testing.assert_allclose(s.prior_w, np.array([4.0, 2.0, 1.0]) / 7.0)  # available^(1/2)
    np.testing.assert_allclose(make().prior_w, 1.0 / 3.0)
