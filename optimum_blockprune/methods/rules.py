"""Pure ranking rules shared by the methods: no model, no data; each returns a `Ranking` over a problem.

- `rank_by_importance`: one-shot scores as a diagonal QUBO (the feasible sets with the smallest total score);
- `rank_windows`: feasible runs of consecutive blocks by a window cost;
- `greedy_ranking`: remove one feasible block at a time (iterative methods), one state;
- `completable`: whether a partial removal still has a feasible completion;
- `scored_ranking`: a `Ranking` of states a method scored itself (measured searches, windows, greedy paths).

Every rule honours the problem's constraints (protected and forced blocks, kinds, budgets, contiguity).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import replace

import numpy as np

from ..qubo import QUBO, CardinalityProblem
from ..result import RankedState, Ranking
from ..solvers import solve_ranking

logger = logging.getLogger(__name__)


def rank_by_importance(
    problem: CardinalityProblem,
    importance: Sequence[float],
    num_states: int,
    *,
    solver: str = "auto",
    time_limit_s: float = 60.0,
) -> Ranking:
    """The `num_states` feasible removals with the smallest total importance (a diagonal QUBO, same constraints).

    Without side constraints the ground state is simply the `num_selected` least important candidates.
    """
    from ..finite import require_finite

    scores = np.asarray(importance, dtype=np.float64)
    if scores.shape != (problem.qubo.num_variables,):
        raise ValueError(f"`importance` must hold one score per block, got shape {scores.shape}.")
    require_finite(scores, "The blocks' importance scores")
    shift = float(scores.min())  # a constant per removed block: same order, keeps the matrix PSD
    qubo = QUBO(np.diag(scores - shift), offset=shift * problem.num_selected)
    return solve_ranking(replace(problem, qubo=qubo), num_states, solver=solver, time_limit_s=time_limit_s)


def rank_windows(problem: CardinalityProblem, window_cost: np.ndarray, num_states: int) -> Ranking:
    """Rank the feasible runs of `num_selected` consecutive blocks by `window_cost[start, start + M]`."""
    start_time = time.perf_counter()
    m = problem.num_selected
    runs = replace(problem, contiguous=True).contiguous_runs()
    costs = [float(window_cost[run[0], run[0] + m]) for run in runs]
    order = sorted(range(len(runs)), key=lambda k: (costs[k], runs[k]))[:num_states]
    return scored_ranking(
        problem, [(runs[k], costs[k]) for k in order], solver="windows", proven=True, started=start_time
    )


def scored_ranking(
    problem: CardinalityProblem,
    scored: Sequence[tuple[Sequence[int], float]],
    *,
    solver: str,
    proven: bool,
    started: float,
    stats: dict | None = None,
) -> Ranking:
    """A `Ranking` of `(removed blocks, score)` pairs, in the given order (best first), timed from `started`."""
    return Ranking(
        states=tuple(
            RankedState(rank=r, removed_blocks=tuple(state), energy=float(score), proven=proven)
            for r, (state, score) in enumerate(scored)
        ),
        num_blocks=problem.qubo.num_variables,
        num_blocks_to_remove=problem.num_selected,
        candidates=problem.candidates,
        solver=solver,
        proven=proven,
        solve_time_s=time.perf_counter() - started,
        stats=stats or {},
    )


def completable(problem: CardinalityProblem, chosen: Sequence[int]) -> bool:
    """Whether some feasible state of `problem` removes every block in `chosen`."""
    chosen = tuple(sorted(set(chosen)))
    if not set(chosen) <= set(problem.candidates) or len(chosen) > problem.num_selected:
        return False
    if problem.is_plain:
        return True
    forced = tuple(sorted(set(chosen) | set(problem.forced)))
    if len(forced) > problem.num_selected:
        return False
    zero = QUBO(np.zeros_like(problem.qubo.matrix))
    return len(solve_ranking(replace(problem, qubo=zero, forced=forced), 1, solver="exact")) > 0


def greedy_ranking(
    problem: CardinalityProblem,
    step_costs: Callable[[tuple[int, ...], list[int]], np.ndarray],
    *,
    accumulate: bool,
    name: str = "greedy",
) -> Ranking:
    """Remove one block at a time: at each step the feasible block with the lowest `step_costs(removed, options)`.

    Forced blocks are removed first. "Feasible" means some feasible final state still contains the removed set,
    so the greedy path always ends in a feasible state. The state's energy is the sum of the chosen costs
    (`accumulate`) or the last one; `stats["removal_order"]` is the sequence.
    """
    start_time = time.perf_counter()
    removed = tuple(problem.forced)
    order, chosen_costs, step_seconds = [], [], []
    while len(removed) < problem.num_selected:
        step_start = time.perf_counter()
        options = [b for b in problem.candidates if b not in removed and completable(problem, (*removed, b))]
        costs = np.asarray(step_costs(removed, options), dtype=np.float64)
        best = int(np.argmin(costs))  # ties: the lowest index
        removed = tuple(sorted((*removed, options[best])))
        order.append(options[best])
        chosen_costs.append(float(costs[best]))
        step_seconds.append(time.perf_counter() - step_start)
        logger.info("%s step %d: removed block %d (cost %.6g).", name, len(order), options[best], costs[best])
    energy = float(sum(chosen_costs)) if accumulate else (chosen_costs[-1] if chosen_costs else 0.0)
    return scored_ranking(
        problem,
        [(removed, energy)],
        solver="greedy",
        proven=False,
        started=start_time,
        stats={"removal_order": order, "step_costs": chosen_costs, "step_seconds": step_seconds},
    )
