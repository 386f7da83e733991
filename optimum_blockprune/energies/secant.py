"""Secant rows: the paper's energy with each per-sample gate gradient replaced by the measured per-sample loss
change of removing that block alone, D[s, i] = l_s(alpha_i = 0) - l_s(1). E(x) = xᵀ(DᵀD/m)x = mean_s (Σ_i x_i
D[s, i])²: the squared additive prediction of each sample's loss change, measured at the removal (alpha = 0)
instead of extrapolated from the slope at alpha = 1."""

from __future__ import annotations

import numpy as np

from ..estimation.fisher import hessian_from_gradients
from .base import Energy, register_energy


@register_energy
class SecantEnergy(Energy):
    name = "secant"
    description = "xᵀ(DᵀD/m)x with D[s, i] = l_s(block i removed) − l_s(unpruned) measured per sample (N gated forwards)"
    needs = ("removals",)
    reference = "the paper's Fisher with secant (measured) rows in place of gradient rows"

    def matrix(self, problem, context) -> np.ndarray:
        per_sample = context.single_removals().per_sample()
        rows = (per_sample[1:] - per_sample[0]).T  # [samples, gates]
        return hessian_from_gradients(rows)
