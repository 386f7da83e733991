"""Baselines on the residual stream: ShortGPT's Block Influence (one-shot and iterative), Gromov et al.'s angular
distance over a window, and the norm ratio. Statistics are taken where the gates act (see `estimation.statistics`)."""

from __future__ import annotations

from typing import ClassVar

from ..qubo import CardinalityProblem
from .base import GreedyMethod, ImportanceMethod, RankingContext, RankingMethod, register_method
from .rules import rank_windows


class _StatisticMethod(ImportanceMethod):
    """One-shot: the per-block `statistic` of `ResidualStatistics` is the importance."""

    statistic: ClassVar[str]
    needs = ("statistics",)
    cost = "one forward"

    def importance(self, problem: CardinalityProblem, context: RankingContext):
        return getattr(context.statistics(), self.statistic)


@register_method
class BlockInfluence(_StatisticMethod):
    name = "block_influence"
    description = "ShortGPT: lowest BI = 1 - mean cos(h_in, h_out)"
    objective = "sum of BI"
    reference = "ShortGPT, Men et al. 2024, arXiv:2403.03853"
    statistic = "block_influence"


@register_method
class NormRatio(_StatisticMethod):
    name = "norm_ratio"
    description = "smallest mean ||h_out|| / ||h_in||"
    objective = "sum of norm ratios"
    reference = "||h_out|| / ||h_in||"
    statistic = "norm_ratio"


@register_method
class BlockInfluenceIterative(GreedyMethod):
    name = "block_influence_iterative"
    description = "the same, recomputed after each removal (the paper's baseline)"
    objective = "sum of BI at removal"
    needs = ("statistics", "removals")
    cost = "M forwards"
    reference = "ShortGPT, recomputed after each removal (the paper's baseline)"
    accumulate = True

    def step_costs(self, context, removed, options):
        return context.statistics(removed).block_influence[options]


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
