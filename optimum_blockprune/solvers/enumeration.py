"""Exhaustive enumeration of all C(n, M) states: exact for any Q, and the oracle for every other solver."""

from __future__ import annotations

import math

import numpy as np

from ..qubo import CardinalityProblem
from .base import SearchOutcome, Solver, register_solver


@register_solver
class EnumerationSolver(Solver):
    """Visit every state depth first in lexicographic order (numba, O(1) per state) and keep the best `num_states`.

    A proof by exhaustion that does not depend on the structure of Q; about 10^8 states per second on one core.

    Args:
        max_states: refuse problems with more than this many states (None: no limit).
    """

    name = "enumerate"

    def __init__(self, max_states: int | None = None):
        self.max_states = max_states

    def _search(
        self, problem: CardinalityProblem, num_states: int, *, seed: int, show_progress: bool
    ) -> SearchOutcome:
        from ._kernels import kernels

        n, m = problem.qubo.num_variables, problem.num_selected
        total = math.comb(n, m)
        if self.max_states is not None and total > self.max_states:
            raise ValueError(
                f"Enumerating C({n}, {m}) = {total:,} states exceeds `max_states`={self.max_states:,}; "
                "use the 'exact' solver or raise the limit."
            )
        weights, lower, upper, tolerance, _ = problem.constraint_arrays()
        _, _, enumerate_top_k = kernels()
        k = min(num_states, total)
        energies, rows, count, visited = enumerate_top_k(
            np.ascontiguousarray(problem.qubo.matrix), m, k, weights, lower, upper, tolerance
        )
        states = [tuple(int(i) for i in rows[j]) for j in range(count)]
        return SearchOutcome(states, proven=True, stats={"states_evaluated": int(visited)})
