"""EvoPress: a (1 + λ) evolutionary search over removal states with measured fitness (Sieberling et al., 2025).

Fitness is the KL divergence from the unpruned model's next-token distribution on calibration tokens. Each
generation makes λ offspring of the parent by a level-switch mutation (one removed block swapped for one kept
block), then selects in stages: every candidate (the parent included) is measured on a few random calibration
samples, the best few on more, until one is left. Every state it measures satisfies the problem's constraints.
"""

from __future__ import annotations

import logging
import math
import time
from typing import ClassVar

import numpy as np

from ..result import Ranking
from ..utils import progress_bar
from .base import RankingContext, RankingMethod, register_method
from .rules import scored_ranking

logger = logging.getLogger(__name__)


@register_method
class EvoPress(RankingMethod):
    name = "evopress"
    description = (
        "EvoPress: (1 + λ) evolution of removal states by one-block swaps, selected in stages on more and more "
        "calibration samples (KL to the unpruned model)"
    )
    objective = "calibration KL (all samples)"
    needs = ("removals", "next_token")
    cost = "M (N - M) / 1.5 generations of λ + 1 states on few samples, the best 2 on a quarter of them"
    reference = "EvoPress, Sieberling et al., ICML 2025, arXiv:2410.14649"

    #: selection in stages needs samples to grow over
    min_samples = 2
    #: The reference's depth-pruning settings: 32 offspring, 64 random initial states, survivors 2 then 1.
    offspring: ClassVar[int] = 32
    initial_states: ClassVar[int] = 64
    survivors: ClassVar[tuple[int, ...]] = (2, 1)
    #: The share of the calibration samples each selection stage measures on. The reference uses 2048 then 32768
    #: of 131072 tokens (1/64, 1/4); 1/64 of a few dozen passages is under one, so the first stage takes 1/16.
    stage_fractions: ClassVar[tuple[float, ...]] = (1 / 16, 1 / 4)
    #: Tries to find a feasible random state or mutation before giving up on that one.
    max_tries: ClassVar[int] = 1000

    def run_summary(self, config, stats):
        run = stats.get("evopress")
        if not run:
            return self.description
        return (
            f"EvoPress: {run['generations']} generations of {run['offspring']} offspring by one-block swaps, "
            f"{run['improvements']} improvements, selected in stages on {run['samples_per_stage']['selection']} "
            f"samples (KL to the unpruned model)"
        )

    def rank(self, problem, context: RankingContext) -> Ranking:
        config = context.config
        rng = np.random.default_rng(config.seed)
        num_samples = context.data.num_samples
        stage_sizes = [max(1, round(f * num_samples)) for f in self.stage_fractions]
        free = [b for b in problem.candidates if b not in set(problem.forced)]
        to_pick = problem.num_selected - len(problem.forced)
        generations = max(1, math.floor(to_pick * (len(free) - to_pick) / 1.5))
        budget = config.search_budget
        start_time = time.perf_counter()
        spent_before = context.stats.get("forward_equivalents", 0.0)

        def spent() -> float:
            return context.stats.get("forward_equivalents", 0.0) - spent_before

        def fitness(states: list[tuple[int, ...]], size: int) -> np.ndarray:
            samples = np.sort(rng.choice(num_samples, size=min(size, num_samples), replace=False))
            return context.measure(states, metric="kl", samples=samples.tolist(), progress=False).mean()

        initial = self._random_states(problem, free, to_pick, rng)
        parent = initial[int(np.argmin(fitness(initial, stage_sizes[0])))]
        history = [parent]
        completed = 0
        bar = progress_bar(total=generations, desc="EvoPress", enabled=config.show_progress, unit="gen")
        for _ in range(generations):
            if budget is not None and spent() >= budget:
                break
            candidates = [parent, *self._offspring(problem, parent, free, rng)]
            for size, keep in zip(stage_sizes, self.survivors):
                scores = fitness(candidates, size)
                order = np.argsort(scores, kind="stable")  # ties: the earlier candidate, the parent first
                candidates = [candidates[i] for i in order[:keep]]
            if candidates[0] != parent:
                parent = candidates[0]
                history.append(parent)
            completed += 1
            bar.update(1)
        bar.close()
        energy = float(context.measure([parent], metric="kl").mean()[0])
        logger.info(
            "EvoPress: %d generations, %d improvements, blocks %s.", completed, len(history) - 1, parent
        )
        return scored_ranking(
            problem,
            [(parent, energy)],
            solver="evolution",
            proven=False,
            started=start_time,
            stats={
                "evopress": {
                    "generations": completed,
                    "offspring": self.offspring,
                    "improvements": len(history) - 1,
                    "parents": [list(state) for state in history],
                    "samples_per_stage": {
                        "initial": stage_sizes[0],
                        "selection": stage_sizes,
                        "final": num_samples,
                    },
                    # the stages' samples are drawn anew each generation: their tokens on average
                    "tokens_per_stage": {
                        "initial": round(stage_sizes[0] * context.data.num_tokens / num_samples),
                        "selection": [
                            round(size * context.data.num_tokens / num_samples) for size in stage_sizes
                        ],
                        "final": context.data.num_tokens,
                    },
                }
            },
        )

    def _random_states(self, problem, free: list[int], to_pick: int, rng) -> list[tuple[int, ...]]:
        """Up to `initial_states` distinct feasible states drawn uniformly (forced blocks in every one)."""
        states: dict[tuple[int, ...], None] = {}
        for _ in range(self.max_tries):
            if len(states) == self.initial_states:
                break
            picked = rng.choice(free, size=to_pick, replace=False) if to_pick else []
            state = tuple(sorted({*problem.forced, *(int(b) for b in picked)}))
            if _feasible(problem, state):
                states[state] = None
        if not states:
            from ..solvers import solve_ranking

            # constraints too tight to hit at random: start from the solver's first feasible state
            found = solve_ranking(problem, 1, solver="exact")
            states[tuple(found.states[0].removed_blocks)] = None
        return list(states)

    def _offspring(self, problem, parent: tuple[int, ...], free: list[int], rng) -> list[tuple[int, ...]]:
        """λ level-switch mutations of `parent`: one removed (not forced) block back, one kept candidate out."""
        removed = [b for b in parent if b in set(free)]
        kept = [b for b in free if b not in set(parent)]
        children: dict[tuple[int, ...], None] = {}
        if not removed or not kept:
            return []
        for _ in range(self.max_tries):
            if len(children) == self.offspring:
                break
            back, out = int(rng.choice(removed)), int(rng.choice(kept))
            child = tuple(sorted({*(b for b in parent if b != back), out}))
            if _feasible(problem, child):
                children[child] = None
        return list(children)


def _feasible(problem, state: tuple[int, ...]) -> bool:
    return bool(problem.is_feasible(problem.to_binary([state]))[0])
