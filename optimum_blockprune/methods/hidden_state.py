"""Baselines on the residual stream: ShortGPT's Block Influence (one-shot and iterative), Gromov et al.'s angular
distance over a window, and the norm ratio. Statistics are taken where the gates act (see `estimation.statistics`)."""

from __future__ import annotations

from ..qubo import CardinalityProblem
from .base import ImportanceMethod, RankingContext, RankingMethod, register_method
from .rules import greedy_ranking, rank_windows


@register_method
class BlockInfluence(ImportanceMethod):
    name = "block_influence"
    description = "ShortGPT: lowest BI = 1 - mean cos(h_in, h_out)"
    objective = "sum of BI"
    needs = ("statistics",)
    cost = "one forward"
    reference = "ShortGPT, Men et al. 2024, arXiv:2403.03853"

    def importance(self, problem: CardinalityProblem, context: RankingContext):
        return context.statistics().block_influence


@register_method
class BlockInfluenceIterative(RankingMethod):
    name = "block_influence_iterative"
    description = "the same, recomputed after each removal (the paper's baseline)"
    objective = "sum of BI at removal"
    needs = ("statistics", "removals")
    cost = "M forwards"
    reference = "ShortGPT, recomputed after each removal (the paper's baseline)"

    def rank(self, problem, context):
        def influence(removed, options):
            return context.statistics(removed).block_influence[options]

        return greedy_ranking(problem, influence, accumulate=True, name=self.name)


@register_method
class AngularDistance(RankingMethod):
    name = "angular_distance"
    description = "Gromov et al.: the run of M consecutive blocks with the smallest mean angle arccos(cos(h_l, h_l+M))/pi"
    objective = "angular distance"
    needs = ("statistics",)
    cost = "one forward"
    reference = "Gromov et al. 2024, arXiv:2403.17887"

    def rank(self, problem, context):
        return rank_windows(problem, context.statistics().angular, context.config.num_states)


@register_method
class NormRatio(ImportanceMethod):
    name = "norm_ratio"
    description = "smallest mean ||h_out|| / ||h_in||"
    objective = "sum of norm ratios"
    needs = ("statistics",)
    cost = "one forward"
    reference = "||h_out|| / ||h_in||"

    def importance(self, problem: CardinalityProblem, context: RankingContext):
        return context.statistics().norm_ratio
