"""Solver base class and registry. A solver implements `_search`; the base class does the rest
(feasibility check, exact re-evaluation in float64, deterministic ordering, timing, the `Ranking`)."""

from __future__ import annotations

import logging
import time
from abc import ABC, abstractmethod
from typing import Any, ClassVar

import numpy as np

from ..qubo import CardinalityProblem
from ..result import RankedState, Ranking

logger = logging.getLogger(__name__)

_SOLVERS: dict[str, type[Solver]] = {}


def register_solver(cls: type[Solver]) -> type[Solver]:
    """Class decorator adding a solver under `cls.name`; refuses duplicates."""
    if cls.name in _SOLVERS:
        raise ValueError(f"A solver named {cls.name!r} is already registered.")
    _SOLVERS[cls.name] = cls
    return cls


def available_solvers() -> list[str]:
    return sorted(_SOLVERS)


def get_solver(name: str, **options: Any) -> Solver:
    try:
        return _SOLVERS[name](**options)
    except KeyError:
        raise ValueError(
            f"`solver`={name!r} is not registered; choose one of {available_solvers()}."
        ) from None


class Solver(ABC):
    """Find the `num_states` lowest-energy feasible states of a `CardinalityProblem`."""

    name: ClassVar[str]
    #: True when `_search` certifies that what it returns are exactly the lowest states.
    exact: ClassVar[bool] = False

    @abstractmethod
    def _search(
        self, problem: CardinalityProblem, num_states: int, *, seed: int, show_progress: bool
    ) -> tuple[list[tuple[int, ...]], dict[str, Any]]:
        """Return candidate states (tuples of selected indices; duplicates allowed) and solver statistics."""

    def solve(
        self, problem: CardinalityProblem, num_states: int = 20, *, seed: int = 0, show_progress: bool = False
    ) -> Ranking:
        start = time.perf_counter()
        found, stats = self._search(problem, num_states, seed=seed, show_progress=show_progress)
        allowed = set(problem.candidates)
        unique = sorted({tuple(sorted(int(i) for i in s)) for s in found})
        for state in unique:
            if len(state) != problem.num_selected or not allowed.issuperset(state):
                raise RuntimeError(
                    f"Solver {self.name!r} returned an infeasible state {state}."
                )  # a solver bug
        energies = problem.qubo.energies(problem.to_binary(unique)) if unique else np.zeros(0)
        # Deterministic order: energy, then the removed indices lexicographically.
        order = sorted(range(len(unique)), key=lambda k: (energies[k], unique[k]))[:num_states]
        proven = self.exact
        states = tuple(
            RankedState(rank=r, removed_blocks=unique[k], energy=float(energies[k]), proven=proven)
            for r, k in enumerate(order)
        )
        elapsed = time.perf_counter() - start
        logger.info(
            "Solver %s ranked %d states in %.3f s (ground-state energy %.6g).",
            self.name,
            len(states),
            elapsed,
            states[0].energy if states else float("nan"),
        )
        return Ranking(
            states=states,
            num_blocks=problem.qubo.num_variables,
            num_blocks_to_remove=problem.num_selected,
            candidates=problem.candidates,
            solver=self.name,
            proven=proven,
            solve_time_s=elapsed,
            stats=stats,
        )
