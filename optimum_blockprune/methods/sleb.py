"""SLEB: remove the block whose removal raises the calibration loss least, then repeat (measured, not estimated)."""

from __future__ import annotations

from .base import RankingMethod, register_method
from .rules import greedy_ranking


@register_method
class SLEB(RankingMethod):
    name = "sleb"
    description = "SLEB: the block whose removal raises calibration loss least, repeated M times"
    objective = "calibration loss"
    needs = ("removals", "next_token")
    cost = "about N*M forwards"
    reference = "SLEB, Song et al. 2024, arXiv:2402.09025"

    def rank(self, problem, context):
        def loss_after(removed, options):
            return context.removal_costs([(*removed, b) for b in options], metric="loss")

        return greedy_ranking(problem, loss_after, accumulate=False, name=self.name)
