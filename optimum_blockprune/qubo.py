"""The block-selection problem as a QUBO: minimise x^T Q x + offset over binary x, with sum(x) = M.

x_i = 1 means "remove block i". Pure numpy; no model anywhere in this module.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np


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
            raise ValueError("`matrix` contains NaN or infinite entries; the Fisher estimate is broken.")
        object.__setattr__(self, "matrix", (q + q.T) / 2.0)

    @property
    def num_variables(self) -> int:
        return int(self.matrix.shape[0])

    def energies(self, states: np.ndarray) -> np.ndarray:
        """Energies of binary states, shape [k, N] (or [N]) -> [k] (or scalar)."""
        x = np.asarray(states, dtype=np.float64)
        return np.einsum("...i,ij,...j->...", x, self.matrix, x) + self.offset

    def energy_of(self, removed: Iterable[int]) -> float:
        """Energy of the state that removes exactly the blocks in `removed`."""
        idx = np.fromiter(removed, dtype=np.int64)
        return float(self.matrix[np.ix_(idx, idx)].sum() + self.offset)

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
class CardinalityProblem:
    """Choose exactly `num_selected` variables among `candidates` (others fixed to 0) minimising the QUBO."""

    qubo: QUBO
    num_selected: int
    candidates: tuple[int, ...]

    def __post_init__(self) -> None:
        candidates = tuple(sorted(set(int(i) for i in self.candidates)))
        object.__setattr__(self, "candidates", candidates)
        n = self.qubo.num_variables
        if any(i < 0 or i >= n for i in candidates):
            raise ValueError(f"`candidates` must be indices in [0, {n}), got {list(candidates)}.")
        if not 0 < self.num_selected <= len(candidates):
            raise ValueError(
                f"`num_selected`={self.num_selected} must be between 1 and the number of candidates ({len(candidates)})."
            )

    @classmethod
    def from_matrix(
        cls, matrix: np.ndarray, num_selected: int, protected: Sequence[int] = ()
    ) -> CardinalityProblem:
        n = np.asarray(matrix).shape[0]
        banned = set(protected)
        return cls(QUBO(matrix), num_selected, tuple(i for i in range(n) if i not in banned))

    def to_binary(self, removed: Sequence[Sequence[int]]) -> np.ndarray:
        x = np.zeros((len(removed), self.qubo.num_variables), dtype=np.float64)
        for row, state in enumerate(removed):
            x[row, list(state)] = 1.0
        return x
