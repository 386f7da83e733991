"""Certified top-k by branch and bound (the default exact solver) and the Kawasaki annealer.

Bounds (SOLVERS.md, appendix A): with F the free suffix of the branching order and r ones left,
  1. diagonal shift: y^T Q_FF y >= sum_j d_j y_j on binaries when Q_FF - diag(d) is PSD, so
     E + (sum of the r smallest 2 g_j + d_j) bounds every completion; d is computed once per suffix;
  2. Frank-Wolfe on the convex relaxation of the shifted objective; every iterate yields a valid bound.
Variables are branched in order of decreasing diagonal (the important blocks first). The threshold is the
k-th best energy found, or before that an upper bound from annealing, so the k lowest states are certified.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import numpy as np

from ..qubo import CardinalityProblem
from .base import SearchOutcome, Solver, register_solver
from .local_search import expand_top_states

logger = logging.getLogger(__name__)


def diagonal_shifts(q: np.ndarray) -> np.ndarray:
    """d[t, t:] with Q[t:, t:] - diag(d[t, t:]) PSD for every suffix t: Jacobi-scaled smallest eigenvalue times
    the diagonal when the diagonal is positive, else a uniform shift by the smallest eigenvalue."""
    n = q.shape[0]
    shifts = np.zeros((n, n))
    for t in range(n):
        block = q[t:, t:]
        diag = np.diag(block)
        if np.all(diag > 0):
            scaled = block / np.sqrt(np.outer(diag, diag))
            shifts[t, t:] = np.linalg.eigvalsh(scaled)[0] * diag
        else:
            shifts[t, t:] = np.linalg.eigvalsh(block)[0]
        # a hair below the exact value keeps the shifted matrix PSD despite rounding
        shifts[t, t:] -= 1e-10 * max(1.0, float(np.abs(diag).max(initial=0.0)))
    return shifts


def anneal_states(
    problem: CardinalityProblem, *, restarts: int, sweeps: int, seed: int
) -> list[tuple[int, ...]]:
    """Kawasaki annealing on a plain (reduced) problem: the final state of every restart."""
    from ._kernels import kernels

    q = problem.qubo.matrix
    n, r = q.shape[0], problem.num_selected
    if r == n:
        return [tuple(range(n))]
    weights, lower, upper, _, scale = problem.constraint_arrays()
    penalty = 2.0 * problem.qubo.flip_bound() + 1.0  # a unit of violation outweighs any swap (two flips)
    _, kawasaki, _ = kernels()
    finals = kawasaki(q, r, restarts, sweeps, seed, weights, lower, upper, scale, penalty)
    return [tuple(np.flatnonzero(row).tolist()) for row in finals]


def _swap_neighbourhood(problem: CardinalityProblem, states: list[tuple[int, ...]], num_states: int) -> list:
    """The states and every single-swap neighbour of the best of them (candidate excited states)."""
    q = problem.qubo.matrix
    feasible = (
        [s for s, ok in zip(states, problem.is_feasible(problem.to_binary(states))) if ok] if states else []
    )
    pool = {s: float(problem.qubo.energy_of(s)) for s in feasible}
    if not pool or problem.constraints:
        return list(pool)
    expand_top_states(q, pool, num_states)
    return list(pool)


@register_solver
class AnnealSolver(Solver):
    """Fixed-cardinality simulated annealing with swap moves (Kawasaki dynamics), seeded and anytime.

    Every state stays feasible for the cardinality by construction; linear constraints (budgets, per-kind
    limits) enter as a penalty and only feasible states are reported. The best states are expanded by swaps
    to rank excited states. Heuristic: never marked proven.
    """

    name = "anneal"

    def __init__(self, num_restarts: int = 20, num_sweeps: int = 1000):
        self.num_restarts = num_restarts
        self.num_sweeps = num_sweeps

    def _search(self, problem, num_states, *, seed, show_progress) -> SearchOutcome:
        finals = anneal_states(problem, restarts=self.num_restarts, sweeps=self.num_sweeps, seed=seed)
        states = _swap_neighbourhood(problem, finals, num_states)
        return SearchOutcome(
            states, proven=False, stats={"restarts": self.num_restarts, "sweeps": self.num_sweeps}
        )


@register_solver
class ExactSolver(Solver):
    """Branch and bound that certifies the k lowest feasible states (ties at the k-th energy broken by search order).

    Args:
        time_limit_s: stop after this many seconds and return the best states found, marked not proven, with
            the global lower bound and the relative gap in the ranking's `stats`.
        frank_wolfe_iterations: relaxation iterations per node (each iterate is a valid bound).
    """

    name = "exact"
    time_limited = True

    def __init__(
        self,
        time_limit_s: float = 60.0,
        frank_wolfe_iterations: int = 20,
        anneal_restarts: int = 4,
        anneal_sweeps: int = 200,
    ):
        self.time_limit_s = time_limit_s
        self.frank_wolfe_iterations = frank_wolfe_iterations
        self.anneal_restarts = anneal_restarts
        self.anneal_sweeps = anneal_sweeps

    def _search(self, problem, num_states, *, seed, show_progress) -> SearchOutcome:
        from ._kernels import kernels

        q = problem.qubo.matrix
        n, r = q.shape[0], problem.num_selected
        total = math.comb(n, r)
        k = min(num_states, total)
        incumbents = anneal_states(
            problem, restarts=self.anneal_restarts, sweeps=self.anneal_sweeps, seed=seed
        )
        warm = _swap_neighbourhood(problem, incumbents, num_states)
        energies = sorted(problem.qubo.energy_of(s) - problem.qubo.offset for s in warm)
        threshold = energies[k - 1] if len(energies) >= k else np.inf
        order = np.argsort(-np.diag(q), kind="stable")
        qo = np.ascontiguousarray(q[np.ix_(order, order)])
        weights, lower, upper, tolerance, _ = problem.constraint_arrays()
        weights = np.ascontiguousarray(weights[:, order])
        branch_and_bound, _, _ = kernels()
        best_e, best_x, count, nodes, timed_out, lower_bound = branch_and_bound(
            qo,
            r,
            k,
            diagonal_shifts(qo),
            weights,
            lower,
            upper,
            tolerance,
            threshold,
            self.frank_wolfe_iterations,
            float(self.time_limit_s),
        )
        found = [tuple(sorted(int(order[j]) for j in np.flatnonzero(best_x[i]))) for i in range(count)]
        stats: dict[str, Any] = {"nodes": int(nodes), "timed_out": bool(timed_out)}
        if timed_out:
            found = list(dict.fromkeys(found + warm))  # keep the annealer's states too
            best = min(float(e) for e in best_e[:count]) if count else min(energies, default=np.inf)
            bound = float(lower_bound) + problem.qubo.offset
            best += problem.qubo.offset
            stats.update(
                lower_bound=bound, gap=(best - bound) / max(abs(best), 1e-300) if np.isfinite(best) else None
            )
            logger.warning(
                "The exact solver hit its %.3g s time limit after %d nodes; returning the best states found "
                "(not proven; lower bound %.6g).",
                self.time_limit_s,
                nodes,
                bound,
            )
        return SearchOutcome(found, proven=not timed_out, stats=stats)


@register_solver
class AutoSolver(Solver):
    """`exact` under the time limit; if it cannot finish, `anneal` as well, and the best states of both (then
    labelled 'exact+anneal' and not proven, with the exact solver's lower bound and gap in `stats`)."""

    name = "auto"
    time_limited = True

    def __init__(self, time_limit_s: float = 60.0):
        self.time_limit_s = time_limit_s

    def _search(self, problem, num_states, *, seed, show_progress) -> SearchOutcome:
        exact = ExactSolver(time_limit_s=self.time_limit_s)._search(
            problem, num_states, seed=seed, show_progress=show_progress
        )
        if exact.proven:
            return SearchOutcome(exact.states, True, exact.stats, solver="exact")
        annealed = AnnealSolver()._search(problem, num_states, seed=seed, show_progress=show_progress)
        return SearchOutcome(
            exact.states + annealed.states,
            False,
            {**exact.stats, "fallback": "anneal"},
            solver="exact+anneal",
        )
