"""The energy registry: E(x) = xᵀQx over removal variables x (x_i = 1: block i removed), lower = removed first."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, ClassVar

from ..registry import Registry

if TYPE_CHECKING:
    import numpy as np

    from ..methods.base import RankingContext

ENERGIES: Registry[Energy] = Registry("energy", "optimum_blockprune.energies", "energy")


def register_energy(cls: type[Energy]) -> type[Energy]:
    """Class decorator: register an `Energy` under `cls.name` (duplicates are refused)."""
    return ENERGIES.register(cls)


def available_energies() -> list[str]:
    return ENERGIES.names()


def energy_table() -> str:
    """The README's table of registered energies (name, formula, estimates it needs)."""
    lines = ["| `energy` | E(x) | needs |", "|---|---|---|"]
    for energy in ENERGIES.entries():
        description = energy.description.replace("|", "\\|")
        lines.append(f"| `{energy.name}` | {description} | {', '.join(energy.needs)} |")
    return "\n".join(lines)


def get_energy(name: str) -> Energy:
    """The registered energy `name`; an unknown name raises `ConfigurationError` listing the choices."""
    return ENERGIES.get(name)


class Energy(ABC):
    """One QUBO objective for CBO. Set `name`, `description` (one line with the formula, shown in the card and
    the CLI help) and `needs` (estimates from `RankingContext`, e.g. "fisher"); implement `matrix`."""

    name: ClassVar[str]
    description: ClassVar[str] = ""
    needs: ClassVar[tuple[str, ...]] = ("fisher",)
    reference: ClassVar[str] = ""

    @abstractmethod
    def matrix(self, context: RankingContext) -> np.ndarray:
        """The symmetric matrix Q of E(x) = xᵀQx (a linear term sits on the diagonal, x_i² = x_i)."""

    def info(self) -> dict[str, str]:
        return {"name": self.name, "description": self.description, "reference": self.reference}
