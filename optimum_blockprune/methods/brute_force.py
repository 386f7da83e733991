"""Measured brute force: every feasible state measured on every calibration sample. The oracle a search is checked
against on small models; refused above `max_states` states, before anything is measured."""

from __future__ import annotations

import itertools
import math
import time
from typing import ClassVar

import numpy as np

from ..errors import ConfigurationError
from ..result import Ranking
from .base import RankingContext, RankingMethod, register_method
from .rules import scored_ranking


@register_method
class MeasuredBruteForce(RankingMethod):
    name = "brute_force"
    label = "BF"
    description = "every feasible state measured on the calibration samples, ranked by `selection_metric`"
    objective = "calibration KL"
    needs = ("removals", "next_token")
    cost = "one resumed forward per feasible state (C(N, M) of them)"
    reference = "exhaustive search (EvoPress's brute-force depth pruning, arXiv:2410.14649)"

    #: The most states it measures; more is refused before any measurement.
    max_states: ClassVar[int] = 5000

    def objective_for(self, config) -> str:
        return f"calibration {config.selection_metric}"

    def rank(self, problem, context: RankingContext) -> Ranking:
        config = context.config
        forced = set(problem.forced)
        free = [b for b in problem.candidates if b not in forced]
        to_pick = problem.num_selected - len(forced)
        count = math.comb(len(free), to_pick)
        if count > self.max_states:
            raise ConfigurationError(
                f"`method='brute_force'` would measure C({len(free)}, {to_pick}) = {count} states, more than its "
                f"limit of {self.max_states}. Use it on small models or few candidates (`candidate_kinds`, "
                "`protected_blocks`, `forced_blocks`), or use a search such as `method='evopress'`."
            )
        start_time = time.perf_counter()
        states = [tuple(sorted({*forced, *chosen})) for chosen in itertools.combinations(free, to_pick)]
        states = [s for s, ok in zip(states, problem.is_feasible(problem.to_binary(states))) if ok]
        scores = (
            context.measure(states, metric=config.selection_metric, phase="Brute force").mean()
            if states
            else np.zeros(0)
        )
        order = np.argsort(scores, kind="stable")[: config.num_states]
        return scored_ranking(
            problem,
            [(states[i], scores[i]) for i in order],
            solver="enumeration",
            proven=True,
            started=start_time,
            stats={"brute_force_states": len(states)},
        )
