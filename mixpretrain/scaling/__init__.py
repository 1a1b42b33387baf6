"""mixpretrain.scaling: transfer scaling laws (numpy/scipy only, no torch).

    fit = fit_laws(D, L, domains)                  # D, L: [runs, domains]
    fit.predict(D_new); fit.transfer_matrix        # [i, j] = transfer from domain i to domain j
    alloc = allocate(fit, budget=1e5)              # weights, predicted, gain_vs_proportional
    hubs_and_islands(fit, consumed=alloc.weights * 1e5)
"""

from .allocate import Allocation, allocate, hubs_and_islands
from .fit import fit_laws
from .laws import FAMILIES, LawFit, effective_data

__all__ = ["FAMILIES", "Allocation", "LawFit", "allocate", "effective_data", "fit_laws", "hubs_and_islands"]
