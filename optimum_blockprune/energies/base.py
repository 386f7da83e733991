"""The energy registry: E(x) = xᵀQx over removal variables x (x_i = 1: block i removed), lower = removed first."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, ClassVar

from ..registry import Registry

if TYPE_CHECKING:
    import numpy as np

    from ..methods.base import RankingContext
    from ..qubo import CardinalityProblem

ENERGIES: Registry[Energy] = Registry("energy", "optimum_blockprune.energies", "energy")


#: `@register_energy` on an `Energy` subclass registers it (duplicates refused).
register_energy = ENERGIES.register
available_energies = ENERGIES.names
#: The registered energy by name; an unknown name raises `ConfigurationError` listing the choices.
get_energy = ENERGIES.get


def energy_table() -> str:
    """The README's table of registered energies (formula, estimates it needs)."""
    return ENERGIES.table({"E(x)": lambda e: e.description, "needs": lambda e: ", ".join(e.needs)})


class Energy(ABC):
    """One QUBO objective for CBO. Set `name`, `description` (one line with the formula, shown in the card and
    the CLI help) and `needs` (estimates from `RankingContext`, e.g. "fisher"); implement `matrix`."""

    name: ClassVar[str]
    description: ClassVar[str] = ""
    needs: ClassVar[tuple[str, ...]] = ("fisher",)
    reference: ClassVar[str] = ""
    #: E(x) predicts the calibration-loss increase of removing x, so measured removals can correct it
    #: (`correction_rounds`).
    predicts_loss: ClassVar[bool] = False
    #: The fewest calibration samples the estimate is defined on (split halves and standard errors need several).
    min_samples: ClassVar[int] = 1

    @abstractmethod
    def matrix(self, problem: CardinalityProblem, context: RankingContext) -> np.ndarray:
        """The symmetric matrix Q of E(x) = xᵀQx (a linear term sits on the diagonal, x_i² = x_i) for `problem`
        (its candidates and count, for energies that measure only what the problem can choose)."""

    def estimated_cost(self, problem: CardinalityProblem, context: RankingContext) -> float | None:
        """What `matrix` will cost in forward-equivalents (None: not known), for the choice's progress display."""
        return None

    def info(self) -> dict[str, str]:
        return {"name": self.name, "description": self.description, "reference": self.reference}
