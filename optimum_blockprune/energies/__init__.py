"""What CBO minimises: registered energies, each one module that builds the QUBO matrix from the estimates it needs.

Adding an energy is one new module here with a class decorated by `register_energy`; `energy="name"` in the
config, `--energy name` on the command line, the ranking and the card then know it.
"""

from .base import ENERGIES, Energy, available_energies, energy_table, get_energy, register_energy

__all__ = ["ENERGIES", "Energy", "available_energies", "energy_table", "get_energy", "register_energy"]
