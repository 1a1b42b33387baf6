"""``fit_options``: keyword arguments for ``scaling.fit_laws``, checked when the sampler is built (they
are first used at the first refit, mid-run), and refit failures reported as warnings."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from mixpretrain.samplers import SamplerError, build

DOMAINS = ["ct", "mri", "pet"]
BASE = {"seed": 0, "total_budget": 20_000.0, "explore_fraction": 0.1, "min_points": 4, "warmup_fraction": 0.0}


def drive(sampler, steps: int) -> None:
    consumed = np.zeros(3)
    for step in range(1, steps + 1):
        consumed = consumed + sampler.weights() * 500.0
        loss = 0.3 + 3.0 * (1.0 + consumed) ** -0.35
        sampler.observe(step, consumed, dict(zip(DOMAINS, loss.tolist(), strict=True)), "val")


def test_unknown_fit_option_is_named_at_build_with_the_valid_keys() -> None:
    # Was accepted, then a TypeError escaped observe() at the first refit.
    with pytest.raises(SamplerError, match=r"fit_options': key 'huber' is not an argument of scaling.fit_laws; "
                                           r"valid keys are \[.*'huber_scale'.*'n_starts'.*\]"):
        build("transfer", DOMAINS, **BASE, fit_options={"huber": 0.05})


@pytest.mark.parametrize("key", ["family", "init", "unique", "log_warnings", "D"])
def test_fit_option_the_sampler_sets_is_refused(key: str) -> None:
    with pytest.raises(SamplerError, match=f"key '{key}' is set by the sampler itself"):
        build("transfer", DOMAINS, **BASE, fit_options={key: None})


@pytest.mark.parametrize(
    ("fit_options", "key"),
    [
        ({"n_starts": 0}, "n_starts"),  # was an IndexError out of observe() at the first refit
        ({"n_starts": 1.5}, "n_starts"),
        ({"huber_scale": -1.0}, "huber_scale"),  # was accepted: every fit silently on a nonsense loss
        ({"huber_scale": float("nan")}, "huber_scale"),
        ({"d_ref": -5.0}, "d_ref"),
        ({"ridge": -0.1}, "ridge"),
        ({"bootstrap": -1}, "bootstrap"),
        ({"seed": "x"}, "seed"),
    ],
)
def test_bad_fit_option_value_is_refused_at_build(fit_options: dict, key: str) -> None:
    with pytest.raises(SamplerError, match=f"fit_options': key '{key}' expects"):
        build("transfer", DOMAINS, **BASE, fit_options=fit_options)


def test_fit_options_must_be_a_mapping() -> None:
    with pytest.raises(SamplerError, match="fit_options': expected a mapping"):
        build("transfer", DOMAINS, **BASE, fit_options=[("n_starts", 2)])


def test_valid_fit_options_reach_fit_laws(monkeypatch) -> None:
    import mixpretrain.scaling as scaling

    s = build("transfer", DOMAINS, **BASE, fit_options={"n_starts": 2, "huber_scale": 0.05, "d_ref": None, "ridge": 0.0})
    seen = []
    real = scaling.fit_laws

    def spy(*args, **kwargs):
        seen.append(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(scaling, "fit_laws", spy)
    drive(s, 12)
    assert seen and all(k["n_starts"] == 2 and k["huber_scale"] == 0.05 for k in seen)
    assert s.counters["accepted"] > 0


def test_failed_refits_are_warned_first_and_then_every_tenth(monkeypatch, caplog) -> None:
    """A refit failing with a ValueError was logged at DEBUG only: a cause that fails every refit left
    the run on the prior mixture without a word."""
    import mixpretrain.scaling as scaling

    s = build("transfer", DOMAINS, **BASE, family="power", refit_every=1)

    def broken(*args, **kwargs):
        raise ValueError("boom: the fit cannot start")

    monkeypatch.setattr(scaling, "fit_laws", broken)
    with caplog.at_level(logging.DEBUG, logger="mixpretrain.samplers.transfer"):
        drive(s, 30)
    failures = [r for r in caplog.records if "refit failed" in r.getMessage()]
    warned = [r for r in failures if r.levelno == logging.WARNING]
    assert s.counters["failed"] == len(failures) > 10  # one family: every refit failed
    assert len(warned) == 1 + len(failures) // 10
    assert "boom: the fit cannot start" in warned[0].getMessage() and "ValueError" in warned[0].getMessage()
    assert all(r.levelno == logging.DEBUG for r in failures if r not in warned)
    assert s.last_refit["families"]["power"].startswith("failed: boom")
