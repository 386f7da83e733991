"""Coupling gates, calibration data and the Fisher estimate."""

from .calibration import CalibrationData, prepare_calibration_data
from .fisher import (
    FisherEstimate,
    energy_matrix,
    estimate_fisher,
    hessian_from_gradients,
    per_sample_token_mean_loss,
)
from .gates import CouplingGates

__all__ = [
    "CalibrationData",
    "CouplingGates",
    "FisherEstimate",
    "energy_matrix",
    "estimate_fisher",
    "hessian_from_gradients",
    "per_sample_token_mean_loss",
    "prepare_calibration_data",
]
