"""The QUBO proposes, measurement decides: a measured local search guided by the measured-pairs energy.

Each round takes the corrected QUBO's lowest unmeasured states (global proposals) and the incumbent's one-swap
neighbours it predicts cheapest (local proposals), screens them on a random quarter of the calibration samples,
and measures the best few on every sample. Every full measurement corrects the QUBO (`correction.corrected_matrix`),
so the next proposals know what the last ones cost. It stops when `search_budget` is spent or `patience` rounds
in a row find nothing better; the ranking is the measured states, best first, so `selection='auto'` can choose
among them on samples the search never saw.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import replace
from typing import ClassVar

import numpy as np

from ..qubo import QUBO
from ..result import Ranking
from ..solvers import solve_ranking
from ..utils import progress_bar
from .base import RankingContext, RankingMethod, register_method
from .correction import corrected_matrix
from .rules import scored_ranking

logger = logging.getLogger(__name__)


@register_method
class GuidedSearch(RankingMethod):
    name = "guided"
    label = "Guided"
    description = (
        "a measured search guided by the measured-pairs QUBO: its lowest states and the incumbent's "
        "best-predicted swaps, screened on a quarter of the samples, the best measured on all, each measurement "
        "correcting the QUBO"
    )
    objective = "calibration loss increase (measured)"
    needs = ("removals", "next_token")
    cost = (
        "the measured-pairs energy, then rounds of up to 16 states on a quarter of the samples and 3 on all, until "
        "`search_budget` (default: about what SLEB spends, `sleb_budget`; the energy counted) is spent or 3 rounds bring "
        "nothing"
    )
    reference = (
        "this library: the QUBO as a corrected surrogate; staged selection after EvoPress (arXiv:2410.14649)"
    )

    #: The corrected QUBO's lowest unmeasured states proposed per round.
    global_proposals: ClassVar[int] = 4
    #: The incumbent's unmeasured one-swap neighbours with the lowest corrected energy, proposed per round.
    local_proposals: ClassVar[int] = 12
    #: Screened states measured on every calibration sample per round.
    promoted: ClassVar[int] = 3
    #: The share of the calibration samples a proposal is screened on.
    screen_fraction: ClassVar[float] = 1 / 4
    #: Rounds without a better measured state before the search stops.
    patience: ClassVar[int] = 3

    def rank(self, problem, context: RankingContext) -> Ranking:
        from ..energies import get_energy

        config = context.config
        start_time = time.perf_counter()
        spent_before = context.stats.get("forward_equivalents", 0.0)
        rng = np.random.default_rng(config.seed)
        num_samples = context.data.num_samples
        screen_size = min(num_samples, max(2, round(self.screen_fraction * num_samples)))
        q = get_energy("measured_pairs").matrix(problem, context)
        free = [b for b in problem.candidates if b not in set(problem.forced)]
        budget = config.search_budget or sleb_budget(len(problem.candidates), problem.num_selected)

        def spent() -> float:
            return context.stats.get("forward_equivalents", 0.0) - spent_before

        measured: dict[tuple[int, ...], float] = {}

        def measure_all(states: list[tuple[int, ...]]) -> None:
            losses = context.measure([(), *states], metric="loss").mean()
            measured.update(zip(states, (float(x) for x in losses[1:] - losses[0])))

        # Seeds: the energy's lowest states and the one-shot pick (its M cheapest single removals).
        seeds = _lowest(problem, q, self.global_proposals, config.solver)
        seeds += _lowest(problem, np.diag(np.diag(q)), 1, config.solver)
        measure_all(list(dict.fromkeys(seeds)))
        best_history = [min(measured.values())]
        rounds = stale = screened = 0
        # progress in forward-equivalents of the budget (whole ones: a bar counts integers); ETA from the rate
        total = math.ceil(budget)
        bar = progress_bar(total=total, desc="Guided search", enabled=config.show_progress, unit="fe")
        shown = 0
        while spent() < budget and stale < self.patience:
            now = min(int(spent()), total)
            bar.update(now - shown)
            shown = now
            rounds += 1
            current = corrected_matrix(q, measured)
            incumbent = min(measured, key=measured.get)
            proposals = [
                s
                for s in _lowest(problem, current, self.global_proposals + len(measured), config.solver)
                if s not in measured
            ][: self.global_proposals]
            proposals += [
                s
                for s in _neighbours(problem, incumbent, free, current)
                if s not in measured and s not in proposals
            ][: self.local_proposals]
            if not proposals:
                break
            samples = np.sort(rng.choice(num_samples, size=screen_size, replace=False)).tolist()
            low = context.measure([(), *proposals], metric="loss", samples=samples).mean()
            screened += len(proposals)
            order = np.argsort(low[1:] - low[0], kind="stable")[: self.promoted]
            measure_all([proposals[i] for i in order])
            best = min(measured.values())
            stale = 0 if best < best_history[-1] else stale + 1
            best_history.append(best)
            logger.info(
                "Guided search round %d: %d screened, best ΔL %.5g, %.1f forward-equivalents spent.",
                rounds,
                len(proposals),
                best,
                spent(),
            )
        bar.close()
        ranked = sorted(measured, key=lambda s: (measured[s], s))[: config.num_states]
        return scored_ranking(
            problem,
            [(state, measured[state]) for state in ranked],
            solver="guided",
            proven=False,
            started=start_time,
            stats={
                "guided": {
                    "rounds": rounds,
                    "states_measured": len(measured),
                    "states_screened": screened,
                    "best_per_round": best_history,
                    "budget_forward_equivalents": budget,
                    "samples_per_stage": {"screen": screen_size, "full": num_samples},
                    # the screening samples are drawn anew each round: their tokens on average
                    "tokens_per_stage": {
                        "screen": round(screen_size * context.data.num_tokens / num_samples),
                        "full": context.data.num_tokens,
                    },
                }
            },
        )


def sleb_budget(num_candidates: int, num_removed: int) -> float:
    """About what SLEB spends, in forward-equivalents: M steps, each an unpruned pass and one removal per remaining
    candidate, a removal resuming on average half-way (blocks before the removed one are read from the capture)."""
    return num_removed + sum(num_candidates - step for step in range(num_removed)) / 2


def _lowest(problem, matrix: np.ndarray, count: int, solver: str) -> list[tuple[int, ...]]:
    ranking = solve_ranking(replace(problem, qubo=QUBO(matrix)), count, solver=solver)
    return [tuple(s.removed_blocks) for s in ranking]


def _neighbours(
    problem, state: tuple[int, ...], free: list[int], matrix: np.ndarray
) -> list[tuple[int, ...]]:
    """The feasible one-swap neighbours of `state` (a removed, not forced block back, a kept candidate out),
    cheapest first under `matrix`."""
    removed = [b for b in state if b in set(free)]
    kept = [b for b in free if b not in set(state)]
    swaps = [tuple(sorted({*(x for x in state if x != back), out})) for back in removed for out in kept]
    if not swaps:
        return []
    x = problem.to_binary(swaps)
    feasible = problem.is_feasible(x)
    energies = np.einsum("si,ij,sj->s", x, matrix, x)
    order = sorted((e, s) for e, s, ok in zip(energies, swaps, feasible) if ok)
    return [s for _, s in order]
