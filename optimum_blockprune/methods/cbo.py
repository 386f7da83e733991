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
    description = "the lowest-energy states of the configured `energy` (default: `measured_pairs`)"
    objective = "energy"
    needs = ()  # the energy's (`requirements`)
    cost = (
        "the energy's estimates (measured_pairs: N + C(2M, 2) partial forwards, then up to 12 measured states "
        "in the correction rounds; paper: one Fisher pass, one forward + one backward per batch) + solve"
    )
    reference = "Jansen et al. 2026, arXiv:2602.00161; this library"
    sublayers = True
    uses_energy = True

    def run_summary(self, config, stats):
        text = f"the lowest-energy states of the `{config.energy}` energy"
        if stats.get("correction_rounds"):
            text += (
                f", corrected by {stats['correction_rounds']} round(s) of measure-and-correct "
                f"({stats.get('correction_states_measured', 0)} states measured)"
            )
        return text

    def min_samples_for(self, config):
        return get_energy(config.energy).min_samples

    def requirements(self, config):
        needs = tuple(get_energy(config.energy).needs)
        return (*needs, "removals") if config.rounds_of_correction else needs

    def objective_for(self, config):
        return f"energy ({config.energy})"

    def estimated_cost(self, problem, context):
        config = context.config
        energy = get_energy(config.energy).estimated_cost(problem, context)
        if energy is None or config.reexpansion_interval:
            return None
        # each correction round measures up to `correction_states` states, resumed half-way, beside the unpruned pass
        return energy + config.rounds_of_correction * (config.correction_states / 2 + 1)

    def rank(self, problem, context):
        config = context.config
        at = context  # where the energy is expanded: the unpruned model, or the last re-expansion point
        if config.reexpansion_interval:
            problem, at = _reexpand(problem, context, config.reexpansion_interval)
        qubo = QUBO(get_energy(config.energy).matrix(problem, at))
        # kept: it prices other methods' candidates under selection='auto'
        context.estimates["energy_matrix"] = qubo.matrix
        if config.rounds_of_correction:
            return measure_and_correct(problem, qubo.matrix, context)
        return solve_ranking(
            replace(problem, qubo=qubo),
            config.num_states,
            solver=config.solver,
            time_limit_s=config.solver_time_limit_s,
            seed=config.seed,
            show_progress=config.show_progress,
        )


def _reexpand(problem, context, interval):
    """Commit blocks `interval` at a time: solve at the current expansion point, keep the ground state's cheapest
    new blocks (lowest diagonal), re-estimate the energy without them. Returns the problem with every committed
    block forced and the context at the last expansion point, whose solve ranks the remaining choices."""
    energy = get_energy(context.config.energy)
    committed = tuple(problem.forced)
    rounds = 0
    while problem.num_selected - len(committed) > interval:
        view = context.partly_pruned(committed) if committed else context
        step = replace(problem, forced=committed)
        q = energy.matrix(step, view)
        ground = solve_ranking(replace(step, qubo=QUBO(q)), 1, solver=context.config.solver)[0]
        new = sorted(set(ground.removed_blocks) - set(committed), key=lambda b: (q[b, b], b))
        committed = tuple(sorted({*committed, *new[:interval]}))
        rounds += 1
    context.stats.update(reexpansion_rounds=rounds + 1, reexpansion_committed=list(committed))
    last = context.partly_pruned(committed) if committed else context
    return replace(problem, forced=committed), last
