"""The block-selection problem as a QUBO: minimise x^T Q x + offset over binary x, with sum(x) = M.

x_i = 1 means "remove block i". Pure numpy; no model anywhere in this module.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from .errors import ConfigurationError


@dataclass(frozen=True)
class QUBO:
    """A quadratic unconstrained binary objective E(x) = x^T Q x + offset with symmetric Q (float64)."""

    matrix: np.ndarray
    offset: float = 0.0

    def __post_init__(self) -> None:
        q = np.asarray(self.matrix, dtype=np.float64)
        if q.ndim != 2 or q.shape[0] != q.shape[1]:
            raise ValueError(f"`matrix` must be square, got shape {q.shape}.")
        if not np.all(np.isfinite(q)):
            raise ConfigurationError(
                "The energy matrix contains NaN or infinite entries: the estimate it came from is broken (a bf16 "
                "or fp16 overflow, or a diverged model). Re-estimate it in float32 (`dtype='float32'`)."
            )
        object.__setattr__(self, "matrix", (q + q.T) / 2.0)

    @classmethod
    def from_terms(cls, linear: np.ndarray, quadratic: np.ndarray, offset: float = 0.0) -> QUBO:
        """E(x) = linear.x + x.quadratic.x + offset; the linear term moves onto the diagonal (x_i^2 = x_i)."""
        q = np.array(quadratic, dtype=np.float64, copy=True)
        q[np.diag_indices_from(q)] += np.asarray(linear, dtype=np.float64)
        return cls(q, offset)

    @property
    def num_variables(self) -> int:
        return int(self.matrix.shape[0])

    @property
    def linear(self) -> np.ndarray:
        """Per-variable terms (the diagonal: on binaries Q_ii x_i^2 = Q_ii x_i)."""
        return np.diag(self.matrix).copy()

    @property
    def quadratic(self) -> np.ndarray:
        """Pairwise terms: the symmetric off-diagonal part (each pair i < j contributes 2 Q_ij x_i x_j)."""
        q = self.matrix.copy()
        np.fill_diagonal(q, 0.0)
        return q

    def energies(self, states: np.ndarray) -> np.ndarray:
        """Energies of binary states, shape [k, N] (or [N]) -> [k] (or scalar)."""
        x = np.asarray(states, dtype=np.float64)
        return np.einsum("...i,ij,...j->...", x, self.matrix, x) + self.offset

    def energy_of(self, removed: Iterable[int]) -> float:
        """Energy of the state that removes exactly the blocks in `removed`."""
        idx = np.fromiter(removed, dtype=np.int64)
        return float(self.matrix[np.ix_(idx, idx)].sum() + self.offset)

    def flip_bound(self) -> float:
        """max_j |Q_jj| + 2 sum_{k != j} |Q_jk|: no single bit flip changes x^T Q x by more (the 'safe' penalty)."""
        a = np.abs(self.matrix)
        return float(np.max(2.0 * a.sum(axis=1) - np.diag(a)))

    def to_ising(self) -> tuple[np.ndarray, np.ndarray, float]:
        """Spin form with s = 2x - 1: E = s^T J s + h^T s + offset', J symmetric with zero diagonal.

        J = Q/4 off the diagonal, h_i = 1/2 sum_j Q_ij, offset' = (sum(Q) + trace(Q))/4 + offset.
        """
        q = self.matrix
        couplings = q / 4.0
        np.fill_diagonal(couplings, 0.0)
        fields = q.sum(axis=1) / 2.0
        offset = (q.sum() + np.trace(q)) / 4.0 + self.offset
        return fields, couplings, float(offset)


@dataclass(frozen=True)
class LinearConstraint:
    """`lower <= sum_j weights[j] * x_j <= upper` over the removal variables (x_j = 1: block j removed).

    Parameter budgets (weights = parameters per block) and per-kind limits (weights = 1 for blocks of that kind)
    are both of this form; see `optimum_blockprune.constraints` for the named constructors.
    """

    weights: np.ndarray
    lower: float = -np.inf
    upper: float = np.inf
    name: str = "linear"

    def __post_init__(self) -> None:
        w = np.asarray(self.weights, dtype=np.float64)
        if w.ndim != 1 or not np.all(np.isfinite(w)):
            raise ValueError(f"`weights` of constraint {self.name!r} must be a finite 1-D array.")
        if self.lower > self.upper:
            raise ValueError(f"Constraint {self.name!r} has `lower`={self.lower} > `upper`={self.upper}.")
        object.__setattr__(self, "weights", w)
        object.__setattr__(self, "lower", float(self.lower))
        object.__setattr__(self, "upper", float(self.upper))

    @property
    def tolerance(self) -> float:
        return 1e-9 * max(1.0, float(np.abs(self.weights).max(initial=0.0)))

    def is_satisfied(self, states: np.ndarray) -> np.ndarray:
        values = np.asarray(states, dtype=np.float64) @ self.weights
        return (values >= self.lower - self.tolerance) & (values <= self.upper + self.tolerance)

    def to_dict(self) -> dict:
        return {"name": self.name, "lower": self.lower, "upper": self.upper, "weights": self.weights.tolist()}


@dataclass(frozen=True)
class CardinalityProblem:
    """Choose exactly `num_selected` variables among `candidates` (the others are fixed to 0), with every variable
    in `forced` selected, every `LinearConstraint` satisfied, and, if `contiguous`, the selection one run of
    consecutive indices; minimise the QUBO energy. dimod's "choose exactly k of n", plus side constraints."""

    qubo: QUBO
    num_selected: int
    candidates: tuple[int, ...]
    forced: tuple[int, ...] = ()
    constraints: tuple[LinearConstraint, ...] = ()
    contiguous: bool = False

    def __post_init__(self) -> None:
        candidates = tuple(sorted(set(int(i) for i in self.candidates)))
        forced = tuple(sorted(set(int(i) for i in self.forced)))
        object.__setattr__(self, "candidates", candidates)
        object.__setattr__(self, "forced", forced)
        object.__setattr__(self, "constraints", tuple(self.constraints))
        n = self.qubo.num_variables
        if any(i < 0 or i >= n for i in candidates):
            raise ValueError(f"`candidates` must be indices in [0, {n}), got {list(candidates)}.")
        if not set(forced) <= set(candidates):
            raise ValueError(
                f"`forced` blocks {sorted(set(forced) - set(candidates))} are not candidates (protected blocks "
                "cannot also be forced)."
            )
        if not len(forced) <= self.num_selected <= len(candidates):
            raise ValueError(
                f"`num_selected`={self.num_selected} must be between the number of forced blocks ({len(forced)}) "
                f"and the number of candidates ({len(candidates)})."
            )
        for constraint in self.constraints:
            if constraint.weights.shape != (n,):
                raise ValueError(
                    f"Constraint {constraint.name!r} has {constraint.weights.shape[0]} weights; expected {n}."
                )

    @classmethod
    def from_matrix(
        cls,
        matrix: np.ndarray,
        num_selected: int,
        protected: Sequence[int] = (),
        *,
        forced: Sequence[int] = (),
        constraints: Sequence[LinearConstraint] = (),
        contiguous: bool = False,
    ) -> CardinalityProblem:
        n = np.asarray(matrix).shape[0]
        banned = set(protected)
        return cls(
            QUBO(matrix),
            num_selected,
            tuple(i for i in range(n) if i not in banned),
            tuple(forced),
            tuple(constraints),
            contiguous,
        )

    @property
    def is_plain(self) -> bool:
        """True when only the cardinality and the candidate set constrain the problem."""
        return not self.forced and not self.constraints and not self.contiguous

    def to_binary(self, removed: Sequence[Sequence[int]]) -> np.ndarray:
        x = np.zeros((len(removed), self.qubo.num_variables), dtype=np.float64)
        for row, state in enumerate(removed):
            x[row, list(state)] = 1.0
        return x

    def is_feasible(self, states: np.ndarray) -> np.ndarray:
        """Feasibility of binary states [k, N] against every constraint of the problem."""
        x = np.asarray(states, dtype=np.float64).reshape(-1, self.qubo.num_variables)
        ok = x.sum(axis=1) == self.num_selected
        outside = np.setdiff1d(np.arange(self.qubo.num_variables), self.candidates)
        ok &= x[:, outside].sum(axis=1) == 0
        if self.forced:
            ok &= x[:, list(self.forced)].sum(axis=1) == len(self.forced)
        for constraint in self.constraints:
            ok &= constraint.is_satisfied(x)
        if self.contiguous:
            first = np.argmax(x > 0, axis=1)
            last = x.shape[1] - 1 - np.argmax(x[:, ::-1] > 0, axis=1)
            ok &= (last - first + 1) == self.num_selected
        return ok

    def constraint_arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """The linear constraints stacked for the numeric kernels: weights [C, N], lower, upper, tolerance, scale."""
        n = self.qubo.num_variables
        if not self.constraints:
            empty = np.zeros(0)
            return np.zeros((0, n)), empty, empty, empty, empty
        weights = np.stack([c.weights for c in self.constraints])
        lower = np.array([c.lower for c in self.constraints])
        upper = np.array([c.upper for c in self.constraints])
        tolerance = np.array([c.tolerance for c in self.constraints])
        scale = np.maximum(np.abs(weights).max(axis=1), 1e-300)
        return weights, lower, upper, tolerance, scale

    def contiguous_runs(self) -> list[tuple[int, ...]]:
        """Every feasible state of a contiguous problem (at most N - M + 1 of them)."""
        n, m = self.qubo.num_variables, self.num_selected
        runs = [tuple(range(start, start + m)) for start in range(n - m + 1)]
        if not runs:
            return []
        return [run for run, ok in zip(runs, self.is_feasible(self.to_binary(runs))) if ok]

    def reduced(self) -> tuple[CardinalityProblem, np.ndarray]:
        """The same problem over the free variables only (candidates minus forced): forced variables fold into
        the diagonal and the offset, constraint bounds shift by their contribution. Returns the reduced problem
        and the map from reduced to original indices."""
        free = np.array([i for i in self.candidates if i not in set(self.forced)], dtype=np.int64)
        forced = np.array(self.forced, dtype=np.int64)
        q = self.qubo.matrix
        sub = q[np.ix_(free, free)].copy()
        if forced.size:
            sub[np.diag_indices_from(sub)] += 2.0 * q[np.ix_(free, forced)].sum(axis=1)
        offset = self.qubo.offset + float(q[np.ix_(forced, forced)].sum())
        constraints = tuple(
            LinearConstraint(
                c.weights[free],
                c.lower - c.weights[forced].sum(),
                c.upper - c.weights[forced].sum(),
                c.name,
            )
            for c in self.constraints
        )
        reduced = CardinalityProblem(
            QUBO(sub, offset),
            self.num_selected - len(forced),
            tuple(range(len(free))),
            (),
            constraints,
            False,
        )
        return reduced, free
