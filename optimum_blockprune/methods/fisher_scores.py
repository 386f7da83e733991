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


@register_method
class TaylorPlus(ImportanceMethod):
    name = "taylor_plus"
    label = "taylor+"
    description = "Shortened LLaMA (Taylor+): smallest |g_i|, the first four and last two blocks removed last"
    objective = "sum of |g| (+ edge penalty)"
    needs = ("fisher", "next_token")
    cost = "one Fisher pass (one forward + one backward per batch)"
    reference = "Shortened LLaMA, Kim et al. 2024, arXiv:2402.02834 (Taylor+)"
    #: the blocks Taylor+ keeps (its authors' heuristic: early and final blocks matter more than |g| says)
    kept_first, kept_last = 4, 2

    def importance(self, problem: CardinalityProblem, context: RankingContext) -> np.ndarray:
        scores = np.abs(context.fisher().mean_gradient)
        n = scores.shape[0]
        edges = [*range(min(self.kept_first, n)), *range(max(0, n - self.kept_last), n)]
        # a penalty above every other block's total: edge blocks go only when the constraints leave no other choice
        scores[edges] += scores.sum() + 1.0
        return scores
