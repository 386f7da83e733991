"""Measure and correct: measure the states the solver proposes, fold the observed errors back into the QUBO,
re-solve, until the proposals stop improving or the round budget is spent (for energies whose E(x) predicts the
calibration-loss increase of removing x, so a measurement and a prediction are in the same units).

An error on a measured state S is spread over the pair terms inside S, so only states sharing two or more of
S's blocks move. The corrections for all measured states are fitted together (least squares over their overlaps),
so every measured state's corrected energy equals its measurement and the unmeasured ones keep the model's
prediction plus what they share with measured ones.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import replace
from typing import TYPE_CHECKING

import numpy as np

from ..qubo import QUBO
from ..solvers import solve_ranking

if TYPE_CHECKING:
    from ..qubo import CardinalityProblem
    from ..result import Ranking
    from .base import RankingContext

logger = logging.getLogger(__name__)


def _spread(state: Sequence[int], n: int) -> np.ndarray:
    """A matrix P with xᵀPx = 1 on `state`, touching only its pairs (its diagonal for a single block)."""
    idx = np.asarray(state)
    p = np.zeros((n, n))
    if len(idx) == 1:
        p[idx[0], idx[0]] = 1.0
    else:
        p[np.ix_(idx, idx)] = 1.0 / (len(idx) * (len(idx) - 1))
        p[idx, idx] = 0.0
    return p


def corrected_matrix(q: np.ndarray, measured: dict[tuple[int, ...], float]) -> np.ndarray:
    """`q` plus the corrections that make every measured state's energy its measured value (pure)."""
    if not measured:
        return q
    states = list(measured)
    spreads = [_spread(state, q.shape[0]) for state in states]
    x = np.zeros((len(states), q.shape[0]))
    for row, state in enumerate(states):
        x[row, list(state)] = 1.0
    gram = np.array([[x[j] @ spread @ x[j] for spread in spreads] for j in range(len(states))])
    errors = np.array([measured[state] - x[j] @ q @ x[j] for j, state in enumerate(states)])
    coefficients = np.linalg.lstsq(gram, errors, rcond=None)[0]
    return q + sum(c * spread for c, spread in zip(coefficients, spreads))


def measure_and_correct(problem: CardinalityProblem, q: np.ndarray, context: RankingContext) -> Ranking:
    """Rounds of: solve the corrected QUBO, measure its lowest unmeasured states on the calibration samples,
    correct. Returns the final corrected ranking; `stats` records the rounds, the states measured and the
    prediction errors."""
    config = context.config
    measured: dict[tuple[int, ...], float] = {}
    errors: list[float] = []
    rounds = 0
    for rounds in range(1, config.rounds_of_correction + 1):
        current = corrected_matrix(q, measured)
        proposals = solve_ranking(
            replace(problem, qubo=QUBO(current)), config.correction_states, solver=config.solver
        )
        new = [s.removed_blocks for s in proposals if s.removed_blocks not in measured]
        if not new:
            break
        costs = context.measure(
            [(), *new], phase=f"Correction round {rounds}/{config.rounds_of_correction}"
        ).mean()
        best_before = min(measured.values(), default=np.inf)
        predicted = QUBO(current)
        for state, cost in zip(new, costs[1:] - costs[0]):
            energy = predicted.energy_of(state)
            errors.append(float(cost - energy))
            measured[state] = float(cost)
        logger.info(
            "Measure-and-correct round %d: measured %d states, best ΔL %.5g.",
            rounds,
            len(new),
            min(measured.values()),
        )
        if min(measured.values()) >= best_before:
            break
    final = corrected_matrix(q, measured)
    context.estimates["energy_matrix"] = final
    context.stats.update(
        correction_rounds=rounds,
        correction_states_measured=len(measured),
        correction_mean_abs_error=float(np.mean(np.abs(errors))) if errors else 0.0,
        correction_best_measured=min(measured.values(), default=None),
    )
    return solve_ranking(
        replace(problem, qubo=QUBO(final)),
        config.num_states,
        solver=config.solver,
        time_limit_s=config.solver_time_limit_s,
        seed=config.seed,
        show_progress=config.show_progress,
    )
