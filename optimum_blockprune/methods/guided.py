"""The QUBO proposes, measurement decides: a measured local search guided by a corrected QUBO.

The search runs on at most `search_samples` calibration samples (a seeded random subset; all of them when there
are fewer). The prior is cheap: every single removal's KL to the unpruned model on those samples (a diagonal QUBO,
one resumed pass per block). Each round the corrected QUBO proposes the incumbent's one-swap neighbours it
predicts cheapest, a few random ones (what the model has not learnt yet) and its lowest unmeasured states; they
are selected in stages on one fresh random order of the search samples (all on the first eighth, the best few on
the first half, the best on all), each stage against the incumbent on the same samples, and a sample a state was
measured on is never measured again. Every state measured on all search samples corrects the QUBO
(`correction.corrected_matrix`), so the next proposals know what the last ones cost. The fitness is the KL
divergence from the unpruned model's next-token distribution (as EvoPress's): it compares whole distributions, so
a few samples rank states more reliably than the loss does. It stops when `search_budget` is spent or `patience`
rounds in a row bring nothing better. With more calibration samples than the search used, its best states that
the search samples cannot tell from the best (a paired gap under two standard errors; at most `finalists`) are then
measured on every sample: tokens are spent where the decision is close. They are ranked on the samples the search
left out (at least `min_choice_samples` of them; else on all): on its own samples the search's best is the least of
many noisy means, an optimistic estimate, and the finalists are within noise of it there by construction.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import replace
from typing import ClassVar

import numpy as np

from ..estimation.batching import batch_plan
from ..estimation.parallel import current_processes
from ..evaluation import paired_difference
from ..qubo import QUBO
from ..result import Ranking
from ..solvers import solve_ranking
from ..utils import current_display
from .base import RankingContext, RankingMethod, register_method
from .correction import corrected_matrix
from .rules import scored_ranking
from .sleb import sleb_budget

logger = logging.getLogger(__name__)


@register_method
class GuidedSearch(RankingMethod):
    name = "guided"
    label = "Guided"
    description = (
        "a measured local search guided by a corrected QUBO (single-removal KL as its prior): the incumbent's "
        "best-predicted and some random swaps and the QUBO's lowest states, selected in stages on 1/8, 1/2 and all "
        "of the search samples (at most 16) against the incumbent, each full measurement correcting the QUBO; the states "
        "those samples cannot tell from the best measured on every sample and ranked on the samples the search left out"
    )
    objective = "calibration KL (finalists: on the samples the search left out)"
    needs = ("removals", "next_token")
    cost = (
        "one resumed pass per candidate block on the search samples, then rounds of 16 states on 1/8 of them, 4 on "
        "half and 1 on all, until `search_budget` (default: about what SLEB spends on the search samples, "
        "`sleb_budget`, plus the finalists' passes) is spent or 6 rounds bring nothing; then up to 8 "
        "finalists on the samples the search left out"
    )
    reference = (
        "this library: the QUBO as a corrected surrogate; KL fitness and staged selection after EvoPress "
        "(arXiv:2410.14649)"
    )

    #: two screening samples and two more: the stages must differ
    min_samples = 4
    metric: ClassVar[str] = "kl"
    #: Per round: the incumbent's unmeasured one-swap neighbours with the lowest corrected energy ...
    local_proposals: ClassVar[int] = 10
    #: ... random unmeasured neighbours (exploration where the QUBO is wrong) ...
    random_proposals: ClassVar[int] = 4
    #: ... and the corrected QUBO's lowest unmeasured states.
    global_proposals: ClassVar[int] = 2
    #: The share of the samples each stage measures on (the last is all of them) and how many states pass it.
    stage_fractions: ClassVar[tuple[float, ...]] = (1 / 8, 1 / 2, 1.0)
    survivors: ClassVar[tuple[int, ...]] = (4, 1, 1)
    #: Lowest states of the prior measured on all samples before the first round.
    seeds: ClassVar[int] = 4
    #: Rounds without a better state before the search stops (in the benchmarks' searches an improvement never
    #: came after more than 3 rounds without one).
    patience: ClassVar[int] = 6
    #: The search measures on at most this many samples (the benchmarks' calibration size) ...
    search_samples: ClassVar[int] = 16
    #: ... and, with more samples, measures at most this many of its best states on all of them before ranking.
    finalists: ClassVar[int] = 8
    #: The finalists are ranked on the samples the search left out when there are at least this many (else on all).
    min_choice_samples: ClassVar[int] = 8

    def run_summary(self, config, stats):
        run = stats.get("guided")
        if not run:
            return self.description
        samples = run["samples_per_stage"]
        summary = (
            f"a measured local search guided by a corrected QUBO: {run['rounds']} rounds, {run['states_screened']} "
            f"states screened on {samples['screen']} samples, {run['states_measured']} measured on all "
            f"{samples['full']} search samples"
        )
        if samples.get("final", samples["full"]) > samples["full"]:
            finalists = f"{run['finalists']} finalist" + ("s" if run["finalists"] != 1 else "")
            summary += f", {finalists} on all {samples['final']} calibration samples"
            if samples.get("choice", samples["final"]) < samples["final"]:
                summary += f" and ranked on the {samples['choice']} the search left out"
        return summary + " (KL to the unpruned model)"

    def _plan(self, problem, context: RankingContext) -> tuple[np.ndarray, float, float]:
        """The samples the search measures on, its budget and the part of it kept for the finalists (in
        forward-equivalents)."""
        config = context.config
        num_samples = context.data.num_samples
        search = search_subset(num_samples, self.search_samples, config.seed)
        # the finalists' measurement on the samples the search left out: at most one full pass each, and the
        # unpruned pass their KL compares with
        reserve = (self.finalists + 1) * (num_samples - len(search)) / num_samples
        budget = config.search_budget or (
            sleb_budget(len(problem.candidates), problem.num_selected) * len(search) / num_samples + reserve
        )
        return search, budget, reserve

    def estimated_cost(self, problem, context):
        return self._plan(problem, context)[1]

    def rank(self, problem, context: RankingContext) -> Ranking:
        config = context.config
        start_time = time.perf_counter()
        spent_before = context.stats.get("forward_equivalents", 0.0)
        rng = np.random.default_rng(config.seed)
        num_samples = context.data.num_samples
        search, budget, reserve = self._plan(problem, context)
        num_search = len(search)
        stage_sizes = [min(num_search, max(2, math.ceil(f * num_search))) for f in self.stage_fractions]
        stage_sizes[-1] = num_search
        free = [b for b in problem.candidates if b not in set(problem.forced)]
        rows = _SampleRows(context, self.metric)
        # the choice's one display (`RankingMethod.run`): every measurement moves it, the search names its phases
        display = current_display()

        def spent() -> float:
            return context.stats.get("forward_equivalents", 0.0) - spent_before

        def name_phase(phase: str) -> None:
            if display is not None:
                display.phase(phase)

        def measure_in_batches(states, samples, phase: str) -> np.ndarray:
            """`rows.mean` a round of batches at a time (the batches one call would run, one per process), so the
            display moves during a long pass (each call adds its cost) and data-parallel processes still share
            every call."""
            name_phase(phase)
            lengths = [len(context.data.samples[i]) for i in samples]
            plan = batch_plan(lengths, config.batch_size, config.max_tokens_per_batch)
            step = current_processes().num_processes
            for start in range(0, len(plan), step):
                rows.mean(states, samples[[i for batch in plan[start : start + step] for i in batch]])
            return rows.mean(states, samples)

        # The prior: each candidate's single-removal KL on the diagonal.
        singles = measure_in_batches(
            [(b,) for b in problem.candidates], search, f"single removals ({len(problem.candidates)} blocks)"
        )
        n = problem.qubo.num_variables
        q = np.zeros((n, n))
        q[list(problem.candidates), list(problem.candidates)] = singles
        full: dict[tuple[int, ...], float] = {}
        name_phase("solve")
        seeds = _lowest(problem, q, self.seeds, config.solver)
        full.update(zip(seeds, measure_in_batches(seeds, search, f"{len(seeds)} seed states")))
        seen = set(full)
        incumbent = min(full, key=full.get)
        best_history = [full[incumbent]]
        rounds = stale = screened = 0

        while spent() < budget - reserve and stale < self.patience:
            rounds += 1
            name_phase(f"round {rounds}")
            current = corrected_matrix(q, full)
            neighbours = [s for s in _neighbours(problem, incumbent, free, current) if s not in seen]
            proposals = neighbours[: self.local_proposals]
            rest = neighbours[self.local_proposals :]
            if rest:
                picks = rng.choice(len(rest), size=min(self.random_proposals, len(rest)), replace=False)
                proposals += [rest[i] for i in sorted(picks)]
            lowest = _lowest(problem, current, self.global_proposals + len(seen), config.solver)
            proposals += [s for s in lowest if s not in seen and s not in proposals][: self.global_proposals]
            if not proposals:
                break
            seen.update(proposals)
            screened += len(proposals)
            order = search[rng.permutation(num_search)]
            candidates = proposals
            for size, keep in zip(stage_sizes, self.survivors):
                samples = order[:size]
                scores = rows.mean(candidates, samples)
                bar_to_beat = rows.mean([incumbent], samples)[0]
                ranked = np.argsort(scores, kind="stable")[:keep]
                if size == num_search:
                    full.update((candidates[i], float(scores[i])) for i in ranked)
                # a state that does not beat the incumbent on these samples goes no further (the best one does,
                # so the QUBO keeps learning from a full measurement per round)
                candidates = [candidates[i] for i in ranked if scores[i] < bar_to_beat or i == ranked[0]]
            best = min(full, key=full.get)
            stale = 0 if full[best] < full[incumbent] else stale + 1
            incumbent = best
            best_history.append(full[incumbent])
            logger.info(
                "Guided search round %d: %d screened, best KL %.5g, %.1f of %.1f forward-equivalents spent.",
                rounds,
                len(proposals),
                full[incumbent],
                spent(),
                budget,
            )
        ranked_states = sorted(full, key=lambda s: (full[s], s))
        if num_search < num_samples:
            # The finalists on every sample, so the ranking compares states on the same, largest fidelity: the
            # states the search samples cannot tell from the best (a paired gap under two standard errors).
            finals = [
                state
                for state in ranked_states[: min(self.finalists, config.num_states)]
                if state == incumbent or rows.gap(state, incumbent, search) < 2
            ]
            # the display's total so far assumed the whole budget: what is left is these passes at most
            remaining = (len(finals) + 1) * (num_samples - num_search) / num_samples
            if display is not None:
                display.set_total(min(budget, spent() + remaining))
            everything = np.arange(num_samples)
            phase = f"finalists on all {num_samples} samples ({len(finals)} of {len(full)} states)"
            on_all = measure_in_batches(finals, everything, phase)
            # The choice among them is made on the samples the search never saw: on its own samples the incumbent
            # is the least of many noisy means (optimistic), and the finalists are within noise of it there.
            left_out = np.setdiff1d(everything, search)
            on_left_out = rows.mean(finals, left_out)
            choice, chosen = (
                (left_out, on_left_out) if len(left_out) >= self.min_choice_samples else (everything, on_all)
            )
            final = dict(zip(finals, (float(x) for x in chosen)))
            finalist_kl = [
                {"removed_blocks": list(state), "search": float(s), "left_out": float(o), "all": float(a)}
                for state, s, o, a in zip(finals, rows.mean(finals, search), on_left_out, on_all)
            ]
        else:
            final, choice, finalist_kl = full, search, []
        ranked_states = sorted(final, key=lambda s: (final[s], s))[: config.num_states]
        sizes = {
            "screen": stage_sizes[0],
            "half": stage_sizes[1],
            "full": num_search,
            "final": num_samples,
            "choice": len(choice),
        }
        return scored_ranking(
            problem,
            [(state, final[state]) for state in ranked_states],
            solver="guided",
            proven=False,
            started=start_time,
            stats={
                "guided": {
                    "rounds": rounds,
                    "states_measured": len(full),
                    "states_screened": screened,
                    "finalists": len(final) if num_search < num_samples else 0,
                    "search_samples": [int(i) for i in search],
                    "finalist_kl": finalist_kl,
                    "best_per_round": best_history,
                    "budget_forward_equivalents": budget,
                    "samples_per_stage": sizes,
                    # each round draws a fresh sample order: the stages' tokens on average
                    "tokens_per_stage": {
                        stage: round(size * context.data.num_tokens / num_samples)
                        for stage, size in sizes.items()
                    },
                }
            },
        )


class _SampleRows:
    """Per-sample measurements of states, each (state, sample) measured at most once: a state promoted to a
    larger stage is measured only on the samples it has not seen."""

    def __init__(self, context: RankingContext, metric: str) -> None:
        self._context = context
        self._metric = metric
        self._sums: dict[tuple[int, ...], np.ndarray] = {}
        self._tokens = np.full(context.data.num_samples, np.nan)

    def mean(self, states: list[tuple[int, ...]], samples) -> np.ndarray:
        """Each state's token-weighted mean over `samples` (measuring what is missing)."""
        samples = np.asarray(list(samples), dtype=int)
        groups: dict[tuple[int, ...], list[tuple[int, ...]]] = {}
        for state in dict.fromkeys(states):
            sums = self._sums.setdefault(state, np.full(self._tokens.shape, np.nan))
            missing = tuple(int(i) for i in np.sort(samples[np.isnan(sums[samples])]))
            if missing:
                groups.setdefault(missing, []).append(state)
        for missing, group in groups.items():
            # no bar of its own: the choice's display follows the cost record
            measured = self._context.measure(
                group, metric=self._metric, samples=list(missing), progress=False
            )
            self._tokens[list(missing)] = measured.tokens
            for state, row in zip(group, measured.sums):
                self._sums[state][list(missing)] = row
        tokens = self._tokens[samples].sum()
        return np.array([self._sums[state][samples].sum() / tokens for state in states])

    def gap(self, state: tuple[int, ...], reference: tuple[int, ...], samples) -> float:
        """How many standard errors `state`'s mean lies above `reference`'s on `samples` (both measured there): the
        paired difference, whose sampling noise the per-sample rows give (a ratio estimator, tokens as weights)."""
        samples = np.asarray(list(samples), dtype=int)
        mean, spread = paired_difference(
            self._sums[state][samples], self._sums[reference][samples], self._tokens[samples]
        )
        return float(mean / spread) if spread > 0 else (math.inf if mean > 0 else 0.0)


def search_subset(num_samples: int, limit: int, seed: int) -> np.ndarray:
    """The calibration samples (indices, sorted) the guided search measures on: all of them up to `limit`, else a
    seeded random `limit` of them (drawn from a generator of its own, so the search's later draws do not move)."""
    if num_samples <= limit:
        return np.arange(num_samples)
    return np.sort(np.random.default_rng([seed, 1]).choice(num_samples, limit, replace=False))


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
