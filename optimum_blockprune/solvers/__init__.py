"""Solvers for the block-selection QUBO and the `solve_ranking` entry point."""

from __future__ import annotations

from ..qubo import CardinalityProblem
from ..result import Ranking
from . import backends  # noqa: F401  (registers the optional back-ends; their packages load lazily)
from .base import (
    SearchOutcome,
    Solver,
    available_solvers,
    get_solver,
    register_solver,
    solver_class,
    solver_table,
)
from .enumeration import EnumerationSolver
from .exact import AnnealSolver, AutoSolver, ExactSolver
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
    """Rank the `num_states` lowest-energy feasible states with a registered solver.

    `time_limit_s` goes to every solver that takes one ('auto', 'exact', 'gurobi'). 'auto' runs the certified
    branch and bound under it and, if it cannot finish, falls back to annealing: the best states of both,
    marked not proven (the lower bound and gap stay in `stats`).
    """
    options = {"time_limit_s": time_limit_s} if solver_class(solver).time_limited else {}
    return get_solver(solver, **options).solve(problem, num_states, seed=seed, show_progress=show_progress)


__all__ = [
    "AnnealSolver",
    "AutoSolver",
    "EnumerationSolver",
    "ExactSolver",
    "LocalSearchSolver",
    "SearchOutcome",
    "Solver",
    "available_solvers",
    "get_solver",
    "register_solver",
    "solve_ranking",
    "solver_class",
    "solver_table",
]
