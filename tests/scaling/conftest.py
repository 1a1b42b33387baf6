"""Shared fixtures for the scaling-law tests (ground-truth worlds live in mixpretrain.scaling.synthetic)."""

from __future__ import annotations

import numpy as np
import pytest

from mixpretrain.scaling.synthetic import BUDGETS, make_world, observe, pilot_design


@pytest.fixture(scope="module")
def world3():
    """(world, D, L): the 3-domain world with hub d0 and island d2, 42 pilot runs, 1% noise."""
    world = make_world(3, seed=1, hub=0, island=2)
    rng = np.random.default_rng(0)
    D = pilot_design(3, BUDGETS, rng)
    return world, D, observe(world, D, rng)
