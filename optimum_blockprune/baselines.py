"""The block-selection methods people use today, behind the same config and result objects as CBO.

Every baseline returns a `Ranking` over the same `CardinalityProblem` that CBO solves, so protected and forced
blocks, kinds, per-kind limits and parameter budgets bind all methods alike:

- one-shot scores (Block Influence, Taylor |g_i|, Fisher diagonal H_ii, norm ratio, "last blocks") become a
  diagonal QUBO: its ranked states are the feasible sets with the smallest total score;
- the angular distance ranks the feasible contiguous windows by the distance across them;
- the iterative methods (Block Influence recomputed after each removal, SLEB) remove one feasible block at a
  time and return one state; `stats["removal_order"]` is their sequence.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import numpy as np

from .config import METHODS
from .qubo import QUBO, CardinalityProblem
from .result import RankedState, Ranking
from .solvers import solve_ranking

if TYPE_CHECKING:
    import torch.nn as nn

    from .architectures import ArchitectureAdapter
    from .config import BlockRemovalConfig
    from .estimation import FisherEstimate
    from .estimation.calibration import CalibrationData

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class MethodInfo:
    """What a method needs and what its ranking's `energy` column holds."""

    name: str
    objective: str
    needs_fisher: bool = False
    needs_data: bool = False
    evaluates_removals: bool = False  # skips blocks through gates at alpha = 0 (needs exact gates)
    needs_loss: bool = False  # needs next-token logits (a language model head)
    reference: str = ""


METHOD_INFO: dict[str, MethodInfo] = {
    info.name: info
    for info in (
        MethodInfo(
            "cbo",
            "energy",
            needs_fisher=True,
            reference="Jansen et al. 2026, arXiv:2602.00161 (this library)",
        ),
        MethodInfo(
            "block_influence",
            "sum of BI",
            needs_data=True,
            reference="ShortGPT, Men et al. 2024, arXiv:2403.03853",
        ),
        MethodInfo(
            "block_influence_iterative",
            "sum of BI at removal",
            needs_data=True,
            evaluates_removals=True,
            reference="ShortGPT, recomputed after each removal (the paper's baseline)",
        ),
        MethodInfo(
            "angular_distance",
            "angular distance",
            needs_data=True,
            reference="Gromov et al. 2024, arXiv:2403.17887",
        ),
        MethodInfo(
            "sleb",
            "calibration loss",
            needs_data=True,
            evaluates_removals=True,
            needs_loss=True,
            reference="SLEB, Song et al. 2024, arXiv:2402.09025",
        ),
        MethodInfo(
            "taylor", "sum of |g|", needs_fisher=True, needs_loss=True, reference="first-order Taylor"
        ),
        MethodInfo(
            "fisher_diagonal", "sum of H_ii", needs_fisher=True, reference="single-block second order"
        ),
        MethodInfo("norm_ratio", "sum of norm ratios", needs_data=True, reference="||h_out|| / ||h_in||"),
        MethodInfo("last_blocks", "position", reference="drop the last blocks"),
    )
}
assert tuple(METHOD_INFO) == METHODS, "config.METHODS and baselines.METHOD_INFO must list the same methods"


def needs_calibration_data(config: BlockRemovalConfig, *, has_fisher: bool) -> bool:
    """Whether ranking and choosing with `config` reads calibration data (a given Fisher spares CBO/Taylor/H_ii
    the estimate, but not `selection='auto'`, which measures states on held-out samples)."""
    info = METHOD_INFO[config.method]
    return (info.needs_fisher and not has_fisher) or info.needs_data or config.selection == "auto"


# -- pure ranking rules ------------------------------------------------------------------------------------------
def rank_by_importance(
    problem: CardinalityProblem,
    importance: Sequence[float],
    num_states: int,
    *,
    method: str,
    objective: str,
    solver: str = "auto",
    time_limit_s: float = 60.0,
) -> Ranking:
    """The `num_states` feasible removals with the smallest total importance (a diagonal QUBO, same constraints).

    Without side constraints the ground state is simply the `num_selected` least important candidates.
    """
    scores = np.asarray(importance, dtype=np.float64)
    if scores.shape != (problem.qubo.num_variables,) or not np.all(np.isfinite(scores)):
        raise ValueError(f"`importance` must hold one finite score per block, got shape {scores.shape}.")
    shift = float(scores.min())  # a constant per removed block: same order, keeps the matrix PSD
    qubo = QUBO(np.diag(scores - shift), offset=shift * problem.num_selected)
    ranking = solve_ranking(replace(problem, qubo=qubo), num_states, solver=solver, time_limit_s=time_limit_s)
    return replace(ranking, method=method, objective=objective)


def rank_windows(
    problem: CardinalityProblem, window_cost: np.ndarray, num_states: int, *, method: str, objective: str
) -> Ranking:
    """Rank the feasible runs of `num_selected` consecutive blocks by `window_cost[start, start + M]`."""
    start_time = time.perf_counter()
    m = problem.num_selected
    runs = replace(problem, contiguous=True).contiguous_runs()
    costs = [float(window_cost[run[0], run[0] + m]) for run in runs]
    order = sorted(range(len(runs)), key=lambda k: (costs[k], runs[k]))[:num_states]
    states = tuple(
        RankedState(rank=r, removed_blocks=runs[k], energy=costs[k], proven=True) for r, k in enumerate(order)
    )
    return Ranking(
        states=states,
        num_blocks=problem.qubo.num_variables,
        num_blocks_to_remove=m,
        candidates=problem.candidates,
        solver="windows",
        proven=True,
        solve_time_s=time.perf_counter() - start_time,
        method=method,
        objective=objective,
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
    method: str,
    objective: str,
    accumulate: bool,
) -> Ranking:
    """Remove one block at a time: at each step the feasible block with the lowest `step_costs(removed, options)`.

    Forced blocks are removed first. "Feasible" means some feasible final state still contains the removed set,
    so the greedy path always ends in a feasible state. The state's energy is the sum of the chosen costs
    (`accumulate`) or the last one.
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
        logger.info(
            "%s step %d: removed block %d (%s %.6g).",
            method,
            len(order),
            options[best],
            objective,
            costs[best],
        )
    energy = float(sum(chosen_costs)) if accumulate else (chosen_costs[-1] if chosen_costs else 0.0)
    return Ranking(
        states=(RankedState(rank=0, removed_blocks=removed, energy=energy, proven=False),),
        num_blocks=problem.qubo.num_variables,
        num_blocks_to_remove=problem.num_selected,
        candidates=problem.candidates,
        solver="greedy",
        proven=False,
        solve_time_s=time.perf_counter() - start_time,
        stats={"removal_order": order, "step_costs": chosen_costs, "step_seconds": step_seconds},
        method=method,
        objective=objective,
    )


# -- the methods on a model --------------------------------------------------------------------------------------
def rank_baseline(
    problem: CardinalityProblem,
    config: BlockRemovalConfig,
    *,
    model: nn.Module | None = None,
    adapter: ArchitectureAdapter | None = None,
    data: CalibrationData | None = None,
    fisher: FisherEstimate | None = None,
    pad_token_id: int = 0,
) -> Ranking:
    """Rank removals with the baseline `config.method` over `problem` (see the module docstring).

    `data` is the calibration data (statistics methods, SLEB), `fisher` the Fisher estimate (Taylor, Fisher
    diagonal); `model` is only read, never changed.
    """
    from .estimation.statistics import collect_residual_statistics
    from .evaluation import evaluate_removals

    method = config.method
    info = METHOD_INFO[method]
    n = problem.qubo.num_variables
    common = dict(batch_size=config.batch_size, pad_token_id=pad_token_id, show_progress=config.show_progress)

    def by_importance(importance, objective=info.objective):
        return rank_by_importance(
            problem,
            importance,
            config.num_states,
            method=method,
            objective=objective,
            solver=config.solver,
            time_limit_s=config.solver_time_limit_s,
        )

    if method in ("block_influence", "angular_distance", "norm_ratio"):
        stats = collect_residual_statistics(model, data, adapter=adapter, **common)
        if method == "block_influence":
            return by_importance(stats.block_influence)
        if method == "norm_ratio":
            return by_importance(stats.norm_ratio)
        return rank_windows(
            problem, stats.angular, config.num_states, method=method, objective=info.objective
        )
    if method in ("taylor", "fisher_diagonal"):
        scores = np.abs(fisher.mean_gradient) if method == "taylor" else np.diag(fisher.hessian)
        return by_importance(scores)
    if method == "last_blocks":
        return by_importance(np.arange(n)[::-1].astype(np.float64))
    if method == "block_influence_iterative":

        def influence(removed, options):
            stats = collect_residual_statistics(model, data, adapter=adapter, removed=removed, **common)
            return stats.block_influence[options]

        return greedy_ranking(problem, influence, method=method, objective=info.objective, accumulate=True)
    if method == "sleb":

        def loss_after(removed, options):
            return evaluate_removals(
                model, data, [(*removed, b) for b in options], metric="loss", adapter=adapter, **common
            )

        return greedy_ranking(problem, loss_after, method=method, objective=info.objective, accumulate=False)
    raise ValueError(f"`method`={method!r} is not a baseline; choose one of {list(METHODS[1:])}.")
