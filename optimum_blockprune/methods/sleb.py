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
        return sleb_budget(len(problem.candidates), problem.num_selected)

    def step_costs(self, context, removed, options):
        step = len(removed) + 1
        return context.removal_costs(
            [(*removed, b) for b in options],
            metric="loss",
            phase=f"SLEB step {step}/{context.config.num_blocks_to_remove}",
        )


def sleb_budget(num_candidates: int, num_removed: int) -> float:
    """About what SLEB spends, in forward-equivalents: M steps, each an unpruned pass and one removal per remaining
    candidate, a removal resuming on average half-way (blocks before the removed one are read from the capture)."""
    return num_removed + sum(num_candidates - step for step in range(num_removed)) / 2
