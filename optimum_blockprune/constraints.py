"""Named constructors for the side constraints of block selection (all linear in the removal variables x)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .qubo import LinearConstraint


def parameter_budget(
    num_parameters: Sequence[int],
    *,
    at_least: float | None = None,
    at_most: float | None = None,
    name: str = "parameters removed",
) -> LinearConstraint:
    """Bound the number of parameters (or active parameters) removed: `at_least <= sum_i params_i x_i <= at_most`.

    Example: remove at least 20 % of the parameters held in blocks with
    `parameter_budget(params, at_least=0.2 * sum(params))`.
    """
    if at_least is None and at_most is None:
        raise ValueError("`parameter_budget` needs `at_least`, `at_most` or both.")
    return LinearConstraint(
        np.asarray(num_parameters, dtype=np.float64),
        -np.inf if at_least is None else at_least,
        np.inf if at_most is None else at_most,
        name,
    )


def kind_limit(
    kinds: Sequence[str], kind: str, *, at_least: int = 0, at_most: int | None = None
) -> LinearConstraint:
    """Remove between `at_least` and `at_most` blocks of one kind (e.g. at most 2 attention blocks)."""
    if kind not in set(kinds):
        raise ValueError(f"No block has kind {kind!r}; the kinds present are {sorted(set(kinds))}.")
    weights = np.array([1.0 if k == kind else 0.0 for k in kinds])
    return LinearConstraint(
        weights, at_least, np.inf if at_most is None else at_most, f"{kind} blocks removed"
    )


def cache_holder_first(kinds: Sequence[str], cacheless_kinds: Sequence[str]) -> list[LinearConstraint]:
    """Keep a block that holds a cache ahead of every kept block of `cacheless_kinds` (transformers asks layer 0
    of the cache for its length, so a model must not start with a cache-less block).

    One row per cache-less block j with cache holders before it: if j stays, one of those stays, i.e.
    `x_j - sum_{i<j, holder} x_i >= 1 - (holders before j)`. A model that already starts with a cache-less block
    gets no rows: no removal can make it worse.
    """
    cacheless = [kind in set(cacheless_kinds) for kind in kinds]
    if not kinds or cacheless[0]:
        return []
    holder_kinds = " or ".join(sorted({k for k, c in zip(kinds, cacheless) if not c}))
    name = f"the first kept block is {holder_kinds} (the cache reads its length from layer 0)"
    rows = []
    for j, is_cacheless in enumerate(cacheless):
        if not is_cacheless:
            continue
        holders = [i for i in range(j) if not cacheless[i]]
        weights = np.zeros(len(kinds))
        weights[j] = 1.0
        weights[holders] = -1.0
        rows.append(LinearConstraint(weights, 1.0 - len(holders), np.inf, name))
    return rows
