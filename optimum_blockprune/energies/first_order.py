"""The paper's energy plus the first-order term it drops: E(x) = xᵀHx − 2gᵀx, twice the second-order Taylor
estimate of the loss increase L(1 − x) − L(1) (g: the mean gate gradient)."""

from __future__ import annotations

import numpy as np

from ..estimation.fisher import energy_matrix
from .base import Energy, register_energy


@register_energy
class FirstOrderEnergy(Energy):
    name = "first_order"
    description = (
        "xᵀHx − 2gᵀx: the paper's energy plus the first-order term it drops (g = mean gate gradient)"
    )
    reference = "second-order Taylor expansion of the loss in the gates"

    def matrix(self, problem, context) -> np.ndarray:
        fisher = context.fisher()
        return energy_matrix(fisher.hessian, fisher.mean_gradient)
