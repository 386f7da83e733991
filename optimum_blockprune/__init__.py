"""optimum-blockprune: remove whole transformer blocks chosen by constrained binary optimisation.

Importing the package is cheap: torch and transformers load only when a name that needs them is used.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from .version import __version__

_EXPORTS = {
    "BlockRemovalConfig": "config",
    "Pruner": "pruner",
    "PruningResult": "result",
    "Ranking": "result",
    "RankedState": "result",
    "FisherEstimate": "estimation.fisher",
    "CouplingGates": "estimation.gates",
    "estimate_fisher": "estimation.fisher",
    "prepare_calibration_data": "estimation.calibration",
    "Selection": "selection",
    "RankingMethod": "methods",
    "RankingContext": "methods",
    "register_method": "methods",
    "available_methods": "methods",
    "Energy": "energies",
    "register_energy": "energies",
    "available_energies": "energies",
    "Solver": "solvers",
    "register_solver": "solvers",
    "available_solvers": "solvers",
    "QUBO": "qubo",
    "CardinalityProblem": "qubo",
    "solve_ranking": "solvers",
    "remove_blocks": "surgery",
    "evaluate_perplexity": "evaluation",
    "ArchitectureAdapter": "architectures",
    "register_architecture": "architectures",
    "get_adapter": "architectures",
    "supported_model_types": "architectures",
    "DistillationConfig": "distillation.config",
    "DistillationTrainer": "distillation.trainer",
    "BlockPruningCallback": "distillation.callback",
    "distillation_loss": "distillation.loss",
    "BlockPruneError": "errors",
    "ConfigurationError": "errors",
    "UnsupportedArchitectureError": "errors",
    "CalibrationDataError": "errors",
    "SurgeryError": "errors",
    "OutputExistsError": "errors",
    "OutputPathError": "errors",
    "NonFiniteError": "errors",
    "FisherFileError": "errors",
    "CheckpointError": "errors",
    "ModelLoadError": "errors",
    "HubUploadError": "errors",
    "BlockPruneWarning": "errors",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(__all__)


if TYPE_CHECKING:
    from .architectures import ArchitectureAdapter, get_adapter, register_architecture, supported_model_types
    from .config import BlockRemovalConfig
    from .distillation.callback import BlockPruningCallback
    from .distillation.config import DistillationConfig
    from .distillation.loss import distillation_loss
    from .distillation.trainer import DistillationTrainer
    from .energies import Energy, available_energies, register_energy
    from .errors import (
        BlockPruneError,
        BlockPruneWarning,
        CalibrationDataError,
        CheckpointError,
        ConfigurationError,
        FisherFileError,
        HubUploadError,
        ModelLoadError,
        NonFiniteError,
        OutputExistsError,
        OutputPathError,
        SurgeryError,
        UnsupportedArchitectureError,
    )
    from .estimation.calibration import prepare_calibration_data
    from .estimation.fisher import FisherEstimate, estimate_fisher
    from .estimation.gates import CouplingGates
    from .evaluation import evaluate_perplexity
    from .methods import RankingContext, RankingMethod, available_methods, register_method
    from .pruner import Pruner
    from .qubo import QUBO, CardinalityProblem
    from .result import PruningResult, RankedState, Ranking
    from .selection import Selection
    from .solvers import Solver, available_solvers, register_solver, solve_ranking
    from .surgery import remove_blocks
