"""``fit_on: both``: training points join the fit on the validation scale. Real training losses
(random masks and crops) sit a per-domain factor away from the fixed-mask validation losses."""

from __future__ import annotations

import numpy as np
import pytest

from mixpretrain.samplers import build
from mixpretrain.samplers.transfer import _align_train_to_val

DOMAINS = ["ct", "pet"]


def law(consumed: np.ndarray) -> np.ndarray:
    return np.array([0.4, 0.2]) + np.array([2.0, 4.0]) * (1.0 + consumed) ** -np.array([0.3, 0.5])


def feed(sampler, factor: np.ndarray, steps: int = 30) -> None:
    """A training point every step (its loss x ``factor``), a validation point every third."""
    consumed = np.zeros(2)
    for step in range(1, steps + 1):
        before = consumed.copy()
        consumed = consumed + sampler.weights() * 1000.0
        train = law(0.5 * (before + consumed)) * factor
        sampler.observe(step, consumed, dict(zip(DOMAINS, train.tolist(), strict=True)), "train")
        if step % 3 == 0:
            sampler.observe(step, consumed, dict(zip(DOMAINS, law(consumed).tolist(), strict=True)), "val")


def test_training_losses_are_put_on_the_validation_scale() -> None:
    s = build("transfer", DOMAINS, seed=0, total_budget=30_000.0, fit_on="both", family="power", min_points=4)
    feed(s, np.array([1.3, 0.8]))
    D, L, _ = s._data("both")
    is_train = np.array([p["split"] == "train" for p in s.points])
    ratio = L[is_train] / np.array([law(d) for d in D[is_train]])
    # Inside the validation range the factor is removed (up to the interpolation between validation points).
    assert np.median(ratio, axis=0) == pytest.approx([1.0, 1.0], abs=0.02)
    assert s.fit is not None and s.counters["refits"] > 0


def test_no_alignment_before_three_validation_points() -> None:
    pts = [{"split": "val", "D": [10.0, 10.0], "L": [1.0, 1.0]}, {"split": "train", "D": [12.0, 12.0], "L": [2.0, 2.0]},
           {"split": "val", "D": [20.0, 20.0], "L": [0.9, 0.9]}]
    L = np.array([p["L"] for p in pts], dtype=np.float64)
    np.testing.assert_array_equal(_align_train_to_val(pts, L), L)
