"""Exhaustive enumeration of all C(n, M) states: exact for any Q, and the oracle for every other solver."""

from __future__ import annotations

import itertools
import math

import numpy as np

from ..qubo import CardinalityProblem
from ..utils import progress_bar
from .base import SearchOutcome, Solver, register_solver

_CHUNK = 1 << 16


@register_solver
class EnumerationSolver(Solver):
    """Evaluate every state in lexicographic chunks with one matrix product each; keep the best `num_states`.

    Stable sorting keeps ties in lexicographic order, so the result is deterministic.
    """

    name = "enumerate"

    def __init__(self, max_states: int | None = None):
        self.max_states = max_states

    def _search(
        self, problem: CardinalityProblem, num_states: int, *, seed: int, show_progress: bool
    ) -> SearchOutcome:
        candidates = np.asarray(problem.candidates, dtype=np.int64)
        n, m = len(candidates), problem.num_selected
        total = math.comb(n, m)
        if self.max_states is not None and total > self.max_states:
            raise ValueError(
                f"Enumerating C({n}, {m}) = {total:,} states exceeds `max_states`={self.max_states:,}; "
                "use the 'local_search' solver or raise the limit."
            )
        q = problem.qubo.matrix[np.ix_(candidates, candidates)]
        best_idx = np.zeros((0, m), dtype=np.int64)
        best_energy = np.zeros(0)
        combos = itertools.combinations(range(n), m)
        with progress_bar(
            total=total,
            desc="Enumerating states",
            enabled=show_progress and total > 10 * _CHUNK,
            unit="state",
        ) as bar:
            while True:
                flat = np.fromiter(
                    itertools.chain.from_iterable(itertools.islice(combos, _CHUNK)), dtype=np.int64
                )
                if flat.size == 0:
                    break
                idx = flat.reshape(-1, m)
                x = np.zeros((idx.shape[0], n))
                np.put_along_axis(x, idx, 1.0, axis=1)
                energy = np.einsum("ki,ki->k", x @ q, x)
                if problem.constraints:
                    energy[~problem.is_feasible(x)] = np.inf
                pool_idx = np.concatenate([best_idx, idx])
                pool_energy = np.concatenate([best_energy, energy])
                keep = np.argsort(pool_energy, kind="stable")[:num_states]
                best_idx, best_energy = pool_idx[keep], pool_energy[keep]
                bar.update(idx.shape[0])
        states = [
            tuple(int(i) for i in candidates[row]) for row, e in zip(best_idx, best_energy) if np.isfinite(e)
        ]
        return SearchOutcome(states, proven=True, stats={"states_evaluated": total})
