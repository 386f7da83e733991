"""CBO: the lowest-energy feasible states of a registered energy, from a registered solver (this library)."""

from __future__ import annotations

from dataclasses import replace

from ..energies import get_energy
from ..qubo import QUBO
from ..solvers import solve_ranking
from .base import RankingMethod, register_method
from .correction import measure_and_correct


@register_method
class CBO(RankingMethod):
    name = "cbo"
    label = "CBO"
    description = "the lowest-energy states of the configured `energy` (default: the paper's xᵀHx)"
    objective = "energy"
    needs = ("fisher",)
    cost = "the energy's estimates (paper: one Fisher pass, one forward + one backward per batch) + solve"
    reference = "Jansen et al. 2026, arXiv:2602.00161; this library"
    sublayers = True
    uses_energy = True

    def requirements(self, config):
        needs = tuple(get_energy(config.energy).needs)
        return (*needs, "removals", "next_token") if config.correction_rounds else needs

    def objective_for(self, config):
        return f"energy ({config.energy})"

    def rank(self, problem, context):
        config = context.config
        qubo = QUBO(get_energy(config.energy).matrix(problem, context))
        # kept: it prices other methods' candidates under selection='auto'
        context.estimates["energy_matrix"] = qubo.matrix
        if config.correction_rounds:
            return measure_and_correct(problem, qubo.matrix, context)
        return solve_ranking(
            replace(problem, qubo=qubo),
            config.num_states,
            solver=config.solver,
            time_limit_s=config.solver_time_limit_s,
            seed=config.seed,
            show_progress=config.show_progress,
        )
