"""The paper's energy: E(x) = xᵀHx with H the Fisher of per-sample gate gradients (arXiv:2602.00161)."""

from __future__ import annotations

import numpy as np

from ..estimation.fisher import energy_matrix
from .base import Energy, register_energy


@register_energy
class PaperEnergy(Energy):
    name = "paper"
    description = "xᵀHx, H = AᵀA/m the Fisher of per-sample gate gradients (the paper's energy)"
    reference = "Jansen et al. 2026, arXiv:2602.00161"

    def matrix(self, problem, context) -> np.ndarray:
        return energy_matrix(context.fisher().hessian)
