"""Calibrated couplings: the Fisher's correlation structure, scaled by measured single-removal costs.

Q_ij = ρ_ij √(ΔL(i) ΔL(j)), ρ = H_ij / √(H_ii H_jj): the diagonal is the measured cost of removing block i alone
(the one-shot perplexity criterion), and the couplings keep the Fisher's say about which blocks do the same work,
at the scale of what removing them costs rather than the slope at alpha = 1.
"""

from __future__ import annotations

import numpy as np

from .base import Energy, register_energy


def calibrated_matrix(hessian: np.ndarray, single_costs: np.ndarray) -> np.ndarray:
    """ρ ∘ √c √cᵀ for the correlation ρ of `hessian` and the costs c (clipped at 0: a removal that helps on the
    calibration data costs nothing rather than an imaginary scale). Blocks with H_ii = 0 have no couplings."""
    scale = np.sqrt(np.clip(np.diag(hessian), 0.0, None))
    with np.errstate(divide="ignore", invalid="ignore"):
        correlation = np.where(np.outer(scale, scale) > 0, hessian / np.outer(scale, scale), 0.0)
    np.fill_diagonal(correlation, 1.0)
    root = np.sqrt(np.clip(single_costs, 0.0, None))
    return correlation * np.outer(root, root)


@register_energy
class CalibratedEnergy(Energy):
    name = "calibrated"
    description = (
        "Q_ij = ρ_ij √(ΔL(i) ΔL(j)): the Fisher's correlations ρ (`fisher=`) scaled by measured single-removal "
        "costs ΔL"
    )
    needs = ("fisher", "removals")
    reference = "this library: the paper's coupling structure at the measured scale"

    def matrix(self, problem, context) -> np.ndarray:
        means = context.single_removals().mean()
        return calibrated_matrix(context.fisher().hessian, means[1:] - means[0])
