"""Solvers for the block-selection QUBO and the `solve_ranking` entry point."""

from __future__ import annotations

from dataclasses import replace

from ..qubo import CardinalityProblem
from ..result import RankedState, Ranking
from . import backends  # noqa: F401  (registers the optional back-ends; their packages load lazily)
from .base import SearchOutcome, Solver, available_solvers, get_solver, register_solver
from .enumeration import EnumerationSolver
from .exact import AnnealSolver, ExactSolver
from .local_search import LocalSearchSolver


def solve_ranking(
    problem: CardinalityProblem,
    num_states: int = 20,
    *,
    solver: str = "auto",
    time_limit_s: float = 60.0,
    seed: int = 0,
    show_progress: bool = False,
) -> Ranking:
    """Rank the `num_states` lowest-energy feasible states.

    'auto' runs the certified branch and bound under `time_limit_s`; if it cannot finish, it falls back to
    annealing and returns the best states of both, marked not proven (the lower bound and gap stay in `stats`).
    """
    if solver == "auto":
        exact = get_solver("exact", time_limit_s=time_limit_s).solve(
            problem, num_states, seed=seed, show_progress=show_progress
        )
        if exact.proven:
            return exact
        annealed = get_solver("anneal").solve(problem, num_states, seed=seed, show_progress=show_progress)
        merged = sorted(
            {s.removed_blocks: s.energy for s in (*exact, *annealed)}.items(), key=lambda kv: (kv[1], kv[0])
        )
        states = tuple(
            RankedState(rank=r, removed_blocks=blocks, energy=energy, proven=False)
            for r, (blocks, energy) in enumerate(merged[:num_states])
        )
        return replace(
            exact,
            states=states,
            solver="exact+anneal",
            solve_time_s=exact.solve_time_s + annealed.solve_time_s,
            stats={**exact.stats, "fallback": "anneal"},
        )
    options = {"time_limit_s": time_limit_s} if solver == "exact" else {}
    return get_solver(solver, **options).solve(problem, num_states, seed=seed, show_progress=show_progress)


__all__ = [
    "AnnealSolver",
    "EnumerationSolver",
    "ExactSolver",
    "LocalSearchSolver",
    "SearchOutcome",
    "Solver",
    "available_solvers",
    "get_solver",
    "register_solver",
    "solve_ranking",
]
