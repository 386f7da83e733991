"""SLEB: remove the block whose removal raises the calibration loss least, then repeat (measured, not estimated)."""

from __future__ import annotations

from .base import GreedyMethod, register_method


@register_method
class SLEB(GreedyMethod):
    name = "sleb"
    description = "SLEB: the block whose removal raises calibration loss least, repeated M times"
    objective = "calibration loss"
    needs = ("removals", "next_token")
    cost = "about N*M forwards"
    reference = "SLEB, Song et al. 2024, arXiv:2402.09025 (over sublayers: BlockPruner, Zhong et al. 2024)"
    sublayers = True

    def estimated_cost(self, problem, context):
        from .guided import sleb_budget

        return sleb_budget(len(problem.candidates), problem.num_selected)

    def step_costs(self, context, removed, options):
        step = len(removed) + 1
        return context.removal_costs(
            [(*removed, b) for b in options],
            metric="loss",
            phase=f"SLEB step {step}/{context.config.num_blocks_to_remove}",
        )
