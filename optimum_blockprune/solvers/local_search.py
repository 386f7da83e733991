"""A fast heuristic for problems too large to enumerate: iterated steepest-descent over swap moves.

A swap removes one selected index i and selects one unselected j, keeping sum(x) = M. With f = Q x:
    dE(i -> j) = -2 f_i + Q_ii + 2 f_j + Q_jj - 2 Q_ij
All swap gains come from one vectorised expression per step. Every local minimum and all of its swap
neighbours enter a pool from which the lowest `num_states` are ranked (marked not proven).
"""

from __future__ import annotations

import numpy as np

from ..qubo import CardinalityProblem
from .base import SearchOutcome, Solver, register_solver


@register_solver
class LocalSearchSolver(Solver):
    """Iterated local search with swap moves: greedy and random starts, then perturb-and-descend rounds."""

    name = "local_search"

    def __init__(self, num_restarts: int = 32, num_perturbations: int = 64):
        self.num_restarts = num_restarts
        self.num_perturbations = num_perturbations

    def _search(
        self, problem: CardinalityProblem, num_states: int, *, seed: int, show_progress: bool
    ) -> SearchOutcome:
        rng = np.random.default_rng(seed)
        q = problem.qubo.matrix  # a plain problem: every variable is a candidate
        n, m = q.shape[0], problem.num_selected
        pool: dict[tuple[int, ...], float] = {}
        descents = 0

        def descend(selected: np.ndarray) -> np.ndarray:
            nonlocal descents
            descents += 1
            x = np.zeros(n)
            x[selected] = 1.0
            while True:
                inside, outside = np.flatnonzero(x), np.flatnonzero(x == 0)
                if outside.size == 0:
                    break
                f = q @ x
                gain = (
                    (-2 * f[inside] + np.diag(q)[inside])[:, None]
                    + (2 * f[outside] + np.diag(q)[outside])[None, :]
                    - 2 * q[np.ix_(inside, outside)]
                )
                a, b = np.unravel_index(np.argmin(gain), gain.shape)
                energy = float(x @ f)
                if gain[a, b] >= -1e-12 * max(1.0, abs(energy)):
                    # Local minimum: record it and its best swap neighbours (the likely excited states).
                    pool[tuple(inside)] = energy
                    k = min(num_states, gain.size)
                    nearest = np.argpartition(gain.ravel(), k - 1)[:k]
                    for ia, ob in zip(*np.unravel_index(nearest, gain.shape)):
                        neighbour = np.sort(np.append(np.delete(inside, ia), outside[ob]))
                        pool[tuple(neighbour)] = energy + float(gain[ia, ob])
                    return inside
                x[inside[a]], x[outside[b]] = 0.0, 1.0

        greedy = np.argsort(np.diag(q), kind="stable")[:m]
        starts = [greedy] + [rng.choice(n, size=m, replace=False) for _ in range(self.num_restarts)]
        best, best_energy = None, np.inf
        for start in starts:
            local = descend(start)
            energy = pool[tuple(local)]
            if energy < best_energy:
                best, best_energy = local, energy
        for _ in range(self.num_perturbations):
            kicks = int(rng.integers(1, min(m, n - m, 4) + 1)) if n > m else 0
            trial = best.copy()
            if kicks:
                out_positions = rng.choice(m, size=kicks, replace=False)
                unselected = np.setdiff1d(np.arange(n), best)
                trial[out_positions] = rng.choice(unselected, size=kicks, replace=False)
            local = descend(trial)
            if pool[tuple(local)] < best_energy:
                best, best_energy = local, pool[tuple(local)]
        expanded = expand_top_states(q, pool, num_states)
        states = [tuple(int(i) for i in s) for s in pool]
        stats = {"descents": descents, "expanded_states": expanded, "pool_size": len(pool)}
        return SearchOutcome(states, proven=False, stats=stats)


def expand_top_states(q: np.ndarray, pool: dict[tuple[int, ...], float], num_states: int) -> int:
    """Add the swap neighbours of every state in the current top `num_states` until that set is stable:
    excited states of Fisher-like problems are usually a swap or two away from each other."""
    n = q.shape[0]
    done: set[tuple[int, ...]] = set()
    while True:
        top = sorted(pool, key=lambda s: (pool[s], s))[:num_states]
        todo = [s for s in top if s not in done]
        if not todo:
            return len(done)
        threshold = pool[top[-1]] if len(top) == num_states else np.inf
        for state in todo:
            done.add(state)
            inside = np.asarray(state)
            outside = np.setdiff1d(np.arange(n), inside)
            if outside.size == 0:
                continue
            x = np.zeros(n)
            x[inside] = 1.0
            f = q @ x
            energy = pool[state]
            neighbour_energy = energy + (
                (-2 * f[inside] + np.diag(q)[inside])[:, None]
                + (2 * f[outside] + np.diag(q)[outside])[None, :]
                - 2 * q[np.ix_(inside, outside)]
            )
            for ia, ob in zip(*np.nonzero(neighbour_energy <= threshold)):
                neighbour = tuple(sorted((*np.delete(inside, ia).tolist(), int(outside[ob]))))
                pool.setdefault(neighbour, float(neighbour_energy[ia, ob]))
