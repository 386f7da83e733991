"""Shortened LLaMA's one-shot perplexity criterion: remove each block alone, measure the calibration loss, and
remove the M blocks whose single removal costs least (ranked as the sum of single-removal loss increases)."""

from __future__ import annotations

import numpy as np

from ..qubo import CardinalityProblem
from .base import ImportanceMethod, RankingContext, register_method


@register_method
class OneShotPerplexity(ImportanceMethod):
    name = "oneshot_ppl"
    description = "Shortened LLaMA (PPL): the M blocks whose single removal raises calibration loss least"
    objective = "sum of single-removal ΔL"
    needs = ("removals", "next_token")
    cost = "N single removals (about N/2 forwards, resuming from the captured residual stream)"
    reference = "Shortened LLaMA, Kim et al. 2024, arXiv:2402.02834"

    def importance(self, problem: CardinalityProblem, context: RankingContext) -> np.ndarray:
        means = context.single_removals().mean()
        return means[1:] - means[0]
