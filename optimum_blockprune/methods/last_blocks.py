"""The simplest rule: drop the last blocks (no data)."""

from __future__ import annotations

import numpy as np

from ..qubo import CardinalityProblem
from .base import ImportanceMethod, RankingContext, register_method


@register_method
class LastBlocks(ImportanceMethod):
    name = "last_blocks"
    description = "the last M blocks"
    objective = "position"
    cost = "none"
    reference = "drop the last blocks"

    def importance(self, problem: CardinalityProblem, context: RankingContext) -> np.ndarray:
        return np.arange(problem.qubo.num_variables)[::-1].astype(np.float64)
