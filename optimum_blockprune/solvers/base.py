"""Solver base class and registry.

A solver implements one method, `_search`, on a plain problem (exactly r of n free variables, optional linear
side constraints). The base class does the rest: contiguous problems (at most N - M + 1 states, solved
exactly here), forced blocks (folded away), feasibility filtering, exact re-evaluation in float64,
deterministic ordering (energy, then the removed indices), timing and the `Ranking`.
"""

from __future__ import annotations

import logging
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from ..qubo import CardinalityProblem
from ..registry import Registry
from ..result import RankedState, Ranking

logger = logging.getLogger(__name__)

#: Solver classes by name (a solver takes options, so the class is stored); every module of this package is
#: imported when the registry is first read, so a new solver is one new file.
SOLVERS: Registry[type[Solver]] = Registry(
    "solver", "optimum_blockprune.solvers", "solver", instantiate=False
)


#: `@register_solver` on a `Solver` subclass registers it (duplicates refused).
register_solver = SOLVERS.register
available_solvers = SOLVERS.names
#: The registered solver class by name; an unknown name raises `ConfigurationError` listing the choices.
solver_class = SOLVERS.get


def solver_table() -> str:
    """The documentation's table of registered solvers: what each is (its docstring's first paragraph) and the
    extra that installs what it needs."""
    import inspect

    def summary(cls: type[Solver]) -> str:
        return " ".join((inspect.getdoc(cls) or "").split("\n\n")[0].split())

    return SOLVERS.table(
        {"what it is": summary, "extra": lambda cls: f"`[{cls.extra}]`" if cls.extra else "-"}
    )


def get_solver(name: str, **options: Any) -> Solver:
    return solver_class(name)(**options)


@dataclass
class SearchOutcome:
    """What `_search` returns: candidate states (indices of selected variables; duplicates and infeasible
    states are allowed and filtered), whether they are certified to contain the k lowest feasible states, and
    statistics (nodes, lower bound, ...)."""

    states: list[tuple[int, ...]]
    proven: bool
    stats: dict[str, Any] = field(default_factory=dict)
    solver: str | None = None  # what actually ran, when it differs from the solver's name ('exact+anneal')


class Solver(ABC):
    """Find the `num_states` lowest-energy feasible states of a `CardinalityProblem`."""

    name: ClassVar[str]
    #: True when the constructor takes `time_limit_s` (solve_ranking passes the configured limit).
    time_limited: ClassVar[bool] = False
    #: Optional packages the solver imports, and the extra that installs them (checked before any work).
    requires: ClassVar[tuple[str, ...]] = ()
    extra: ClassVar[str | None] = None

    @classmethod
    def check_available(cls) -> None:
        """Raise an ImportError with the pip line when a package this solver needs is not installed."""
        import importlib.util

        missing = [name for name in cls.requires if importlib.util.find_spec(name.split(".")[0]) is None]
        if missing:
            raise ImportError(
                f"`solver`={cls.name!r} needs {', '.join(missing)}, which is not installed. Install it with "
                f"`pip install 'optimum-blockprune[{cls.extra}]'`, or choose another solver."
            )

    @abstractmethod
    def _search(
        self, problem: CardinalityProblem, num_states: int, *, seed: int, show_progress: bool
    ) -> SearchOutcome:
        """Search a plain problem: `problem.candidates` is every variable, nothing is forced, not contiguous."""

    def solve(
        self, problem: CardinalityProblem, num_states: int = 20, *, seed: int = 0, show_progress: bool = False
    ) -> Ranking:
        start = time.perf_counter()
        label = self.name
        if problem.contiguous:
            states, proven, stats = problem.contiguous_runs(), True, {"contiguous_runs": True}
        else:
            reduced, index = problem.reduced()
            if reduced.num_selected == 0:
                outcome = SearchOutcome([()], True, {"all_forced": True})
            else:
                logger.info(  # a log file shows what is running, however long the search takes
                    "Solver %s: the %d lowest of C(%d, %d) states...",
                    self.name,
                    num_states,
                    reduced.qubo.num_variables,
                    reduced.num_selected,
                )
                outcome = self._search(reduced, num_states, seed=seed, show_progress=show_progress)
            forced = tuple(problem.forced)
            states = [tuple(sorted((*forced, *(int(index[i]) for i in s)))) for s in outcome.states]
            proven, stats = outcome.proven, dict(outcome.stats)
            label = outcome.solver or self.name
        unique = sorted(set(states))
        if unique:
            x = problem.to_binary(unique)
            cardinality_ok = (x.sum(axis=1) == problem.num_selected) & (
                x[:, np.setdiff1d(np.arange(x.shape[1]), problem.candidates)].sum(axis=1) == 0
            )
            if not cardinality_ok.all():  # every solver keeps the cardinality; this would be a solver bug
                raise RuntimeError(
                    f"Solver {self.name!r} returned states violating the cardinality or candidates."
                )
            feasible = problem.is_feasible(x)
            if not feasible.all():
                stats["infeasible_states_discarded"] = int((~feasible).sum())
            unique = [s for s, ok in zip(unique, feasible) if ok]
            energies = problem.qubo.energies(x[feasible])
        else:
            energies = np.zeros(0)
        order = sorted(range(len(unique)), key=lambda k: (energies[k], unique[k]))[:num_states]
        states_out = tuple(
            RankedState(rank=r, removed_blocks=unique[k], energy=float(energies[k]), proven=proven)
            for r, k in enumerate(order)
        )
        elapsed = time.perf_counter() - start
        logger.info(
            "Solver %s ranked %d states in %.3f s (%s; ground-state energy %.6g).",
            label,
            len(states_out),
            elapsed,
            "proven" if proven else "not proven",
            states_out[0].energy if states_out else float("nan"),
        )
        return Ranking(
            states=states_out,
            num_blocks=problem.qubo.num_variables,
            num_blocks_to_remove=problem.num_selected,
            candidates=problem.candidates,
            solver=label,
            proven=proven,
            solve_time_s=elapsed,
            stats=stats,
        )
