"""The reactive guard's evidence (samplers/harm.py): a rise after a cut, judged against the noise."""

from __future__ import annotations

import numpy as np

from mixpretrain.samplers import harm

RULE = harm.HarmRule(guard=3.0, smoothing=0.5, min_rise=0.02, cut="own", recent=True)
PRIOR = np.array([0.5, 0.5])


def curve(rise: float, n: int = 12) -> np.ndarray:
    """Log loss falling for n - 4 points, then rising by ``rise`` over the last 4."""
    fall = np.log(1.0 + 2.0 * np.arange(1, n - 3) ** -0.5)
    return np.concatenate([fall, fall[-1] + rise * np.arange(1, 5) / 4])


def consumption(share_after: float, n: int = 12) -> np.ndarray:
    """Cumulative samples [n, 2]: 100 per point at the prior mixture, then domain 0 at ``share_after``."""
    per = np.array([[0.5, 0.5]] * (n - 4) + [[share_after, 1 - share_after]] * 4) * 100
    return np.cumsum(per, axis=0)


def test_noise_of_one_point_from_second_differences() -> None:
    rng = np.random.default_rng(0)
    trend = np.log(1.0 + 2.0 * np.arange(1, 201) ** -0.4)
    assert 0.015 < harm.point_noise(trend + 0.02 * rng.standard_normal(200)) < 0.025
    assert harm.point_noise(trend) < 0.002  # a smooth trend alone is not noise


def test_a_rise_after_a_cut_is_harm() -> None:
    steps = np.arange(1, 13) * 50
    ev = harm.rise_after_cut(0, curve(0.08), consumption(0.05), [0.05, 0.95], steps, PRIOR, RULE)
    assert ev is not None
    assert ev["rise"] > 0.03 and ev["share_since_best"] < 0.5 and ev["best_step"] == 450  # smoothed: lags the raw curve by a point
    # The same rise while the domain kept its share is not the sampler's doing.
    assert harm.rise_after_cut(0, curve(0.08), consumption(0.5), [0.5, 0.5], steps, PRIOR, RULE) is None
    # A rise below min_rise is not material; too few points are not judged.
    assert harm.rise_after_cut(0, curve(0.015), consumption(0.05), [0.05, 0.95], steps, PRIOR, RULE) is None
    assert harm.rise_after_cut(0, curve(0.08)[-5:], consumption(0.05)[-5:], [0.05, 0.95], steps[-5:], PRIOR,
                               RULE) is None


def test_own_cut_line_catches_a_fall_from_a_high_share() -> None:
    """A domain at 0.8 of the samples cut to 0.3: above its prior (0.2), below its own share."""
    n = 12
    per = np.array([[0.8, 0.2]] * (n - 4) + [[0.3, 0.7]] * 4) * 100
    D = np.cumsum(per, axis=0)
    prior = np.array([0.2, 0.8])
    steps = np.arange(1, n + 1)
    own = harm.rise_after_cut(0, curve(0.08), D, [0.35, 0.65], steps, prior, RULE)
    assert own is not None and own["cut_below"] > 0.7
    prior_rule = harm.HarmRule(guard=3.0, smoothing=0.5, min_rise=0.02, cut="prior", recent=True)
    assert harm.rise_after_cut(0, curve(0.08), D, [0.35, 0.65], steps, prior, prior_rule) is None
