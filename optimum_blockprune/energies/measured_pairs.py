"""A measured pairwise QUBO: Q_ii = ΔL(i), Q_ij = λ (ΔL(i, j) − ΔL(i) − ΔL(j)) / 2, every term a measured removal.

Pairs are measured only among the blocks the diagonal leaves plausible (the 2M cheapest single removals among
the candidates); other pairs count as additive. The interaction terms are shrunk toward the diagonal by λ in
[0, 1], their split-half reliability on the calibration samples (the correlation of the interactions measured on
the even and on the odd samples, as a regression slope), so a noisy coupling cannot pull the minimiser where it
is most wrong. Standard errors of the interactions and λ are reported in the ranking's stats.
"""

from __future__ import annotations

import itertools

import numpy as np

from .base import Energy, register_energy


def split_half_shrinkage(first: np.ndarray, second: np.ndarray) -> float:
    """λ = clip(Σ a·b / Σ (a² + b²)/2, 0, 1): how much of an estimate from half the data a second half repeats."""
    denominator = float(np.sum(first**2 + second**2)) / 2.0
    if denominator <= 0.0:
        return 0.0
    return float(np.clip(np.sum(first * second) / denominator, 0.0, 1.0))


def plausible_blocks(
    single_costs: np.ndarray, candidates: tuple[int, ...], forced: tuple[int, ...], m: int
) -> list[int]:
    """The forced blocks and the cheapest single removals among the candidates, 2M of them in all (at most)."""
    free = sorted((i for i in candidates if i not in forced), key=lambda i: (single_costs[i], i))
    return sorted({*forced, *free[: max(0, 2 * m - len(forced))]})


@register_energy
class MeasuredPairsEnergy(Energy):
    name = "measured_pairs"
    description = (
        "Q_ii = ΔL(i), Q_ij = λ(ΔL(i,j) − ΔL(i) − ΔL(j))/2 measured for pairs among the 2M cheapest single "
        "removals, λ the interactions' split-half reliability"
    )
    needs = ("removals",)
    predicts_loss = True
    #: the split-half reliability compares two halves of at least two samples each
    min_samples = 4
    reference = "measured second-order interactions (cf. Shapley-style interaction indices)"

    def estimated_cost(self, problem, context) -> float:
        # a removal resumes on average half-way, and each pass adds one unpruned forward
        singles = 0.0 if "single_removals" in context.estimates else 1 + context.num_gates / 2
        plausible = min(2 * problem.num_selected, len(problem.candidates))
        return singles + (1 + plausible * (plausible - 1) / 4 if plausible > 1 else 0.0)

    def matrix(self, problem, context) -> np.ndarray:
        singles = context.single_removals()
        base = singles.sums[0]  # the unpruned model, per sample
        single_costs = singles.mean()[1:] - singles.mean()[0]
        q = np.diag(single_costs)
        blocks = plausible_blocks(single_costs, problem.candidates, problem.forced, problem.num_selected)
        pairs = list(itertools.combinations(blocks, 2))
        if not pairs:
            context.stats.update(pairs_measured=0)
            return q
        measured = context.measure(pairs, phase="Pair removals")
        # per-sample interaction sums: l(i, j) - l(i) - l(j) + l(unpruned), summed over each sample's tokens
        interactions = np.stack(
            [
                measured.sums[k] - singles.sums[i + 1] - singles.sums[j + 1] + base
                for k, (i, j) in enumerate(pairs)
            ]
        )
        tokens = singles.tokens
        halves = [np.arange(tokens.shape[0]) % 2 == parity for parity in (0, 1)]
        first, second = (interactions[:, h].sum(axis=1) / tokens[h].sum() for h in halves)
        shrinkage = split_half_shrinkage(first, second)
        full = interactions.sum(axis=1) / tokens.sum()
        per_sample = interactions / tokens
        errors = per_sample.std(axis=1, ddof=1) / np.sqrt(per_sample.shape[1])
        for (i, j), value in zip(pairs, full):
            q[i, j] = q[j, i] = shrinkage * value / 2.0
        context.stats.update(
            pairs_measured=len(pairs),
            pair_shrinkage=shrinkage,
            pair_interaction_median_abs=float(np.median(np.abs(full))),
            pair_interaction_median_standard_error=float(np.median(errors)),
        )
        return q
