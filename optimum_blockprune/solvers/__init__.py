"""Solvers for the block-selection QUBO and the `solve_ranking` entry point."""

from __future__ import annotations

import math

from ..qubo import CardinalityProblem
from ..result import Ranking
from .base import Solver, available_solvers, get_solver, register_solver
from .enumerate import EnumerationSolver
from .local_search import LocalSearchSolver


def solve_ranking(
    problem: CardinalityProblem,
    num_states: int = 20,
    *,
    solver: str = "auto",
    max_enumeration_states: int = 5_000_000,
    seed: int = 0,
    show_progress: bool = False,
) -> Ranking:
    """Rank the `num_states` lowest-energy feasible states; 'auto' enumerates exactly when C(n, M) is small
    enough and otherwise runs the local-search heuristic (its ranking is marked not proven)."""
    if solver == "auto":
        total = math.comb(len(problem.candidates), problem.num_selected)
        solver = "enumerate" if total <= max_enumeration_states else "local_search"
    return get_solver(solver).solve(problem, num_states, seed=seed, show_progress=show_progress)


__all__ = [
    "EnumerationSolver",
    "LocalSearchSolver",
    "Solver",
    "available_solvers",
    "get_solver",
    "register_solver",
    "solve_ranking",
]
