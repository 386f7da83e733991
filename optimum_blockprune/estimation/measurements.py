"""Measured removals kept for reuse: ranking at another M, `selection='auto'` after a ground-state run, or another
measured energy on the same data re-measures nothing it has measured before.

A measurement is valid for one model state, one calibration set, one granularity and one metric. The model state
is keyed by every parameter's storage and in-place version counter, so training, surgery or loaded weights (which
change one or the other) start a fresh entry instead of returning stale losses.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch.nn as nn

    from ..evaluation import RemovalLosses
    from .calibration import CalibrationData


def model_state_key(model: nn.Module) -> tuple:
    """Changes whenever a parameter is replaced or modified in place (optimizer steps, `load_state_dict`)."""
    return tuple((p.data_ptr(), p._version, tuple(p.shape)) for p in model.parameters())


class MeasurementCache:
    """Per-sample removal losses by calibration fingerprint, granularity, metric and removal, for the current model
    state (entries for several calibration sets live side by side: `selection='auto'` scores on a slice)."""

    def __init__(self) -> None:
        self._entries: dict[tuple, dict[tuple[int, ...], np.ndarray]] = {}
        self._tokens: dict[tuple, np.ndarray] = {}
        self._model_state: tuple | None = None

    def __len__(self) -> int:
        return sum(len(rows) for rows in self._entries.values())

    def clear(self) -> None:
        self._entries.clear()
        self._tokens.clear()

    def measure(
        self,
        model: nn.Module,
        data: CalibrationData,
        removals: Sequence[tuple[int, ...]],
        granularity: str,
        metric: str,
        compute: Callable[[list[tuple[int, ...]]], RemovalLosses],
    ) -> tuple[RemovalLosses, int]:
        """The losses of `removals` (in order), calling `compute` only for those not measured before. Returns
        them and how many were newly measured."""
        from ..evaluation import RemovalLosses

        state = model_state_key(model)
        if state != self._model_state:
            # one model state at a time: a changed model makes every older entry unreachable
            self.clear()
            self._model_state = state
        key = (data.fingerprint, granularity, metric)
        rows = self._entries.setdefault(key, {})
        todo = [r for r in dict.fromkeys(removals) if r not in rows]
        if todo:
            fresh = compute(todo)
            rows.update(zip(todo, fresh.sums))
            self._tokens[key] = fresh.tokens
        return RemovalLosses(np.stack([rows[r] for r in removals]), self._tokens[key]), len(todo)
