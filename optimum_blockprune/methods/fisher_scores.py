"""Single-block scores from the same Fisher pass as CBO: first-order Taylor |g_i| and the diagonal H_ii."""

from __future__ import annotations

import numpy as np

from ..qubo import CardinalityProblem
from .base import ImportanceMethod, RankingContext, register_method


@register_method
class Taylor(ImportanceMethod):
    name = "taylor"
    description = "smallest first-order score |g_i| (from the Fisher pass)"
    objective = "sum of |g|"
    needs = ("fisher", "next_token")
    cost = "one Fisher pass (one forward + one backward per batch)"
    reference = "first-order Taylor"

    def importance(self, problem: CardinalityProblem, context: RankingContext) -> np.ndarray:
        return np.abs(context.fisher().mean_gradient)


@register_method
class FisherDiagonal(ImportanceMethod):
    name = "fisher_diagonal"
    description = "smallest single-block second-order score H_ii"
    objective = "sum of H_ii"
    needs = ("fisher",)
    cost = "one Fisher pass (one forward + one backward per batch)"
    reference = "single-block second order"

    def importance(self, problem: CardinalityProblem, context: RankingContext) -> np.ndarray:
        return np.diag(context.fisher().hessian)
