"""Which samples go into which batch, and which process runs which batch. Pure functions over sample lengths.

Every consumer of calibration batches (the Fisher, measured removals) files its per-sample results under the
sample indices of each batch, so batch composition changes only padding and memory, never which row is whose:

- fixed batches: `batch_size` consecutive samples, in order (the default);
- a token budget (`max_tokens_per_batch`): samples sorted by length, longest first, packed while
  `batch rows x longest sample <= budget`, so padding stays small and peak memory is bounded by the budget
  (whole conversations of very different lengths, as the paper calibrates on);
- data parallel: batch k runs on process k mod world_size, so each process sees the batches one process would,
  and its rows are identical to that one process's.
"""

from __future__ import annotations

from collections.abc import Sequence


def batch_plan(
    lengths: Sequence[int], batch_size: int, max_tokens_per_batch: int | None = None
) -> list[list[int]]:
    """Sample indices of every batch, in the order the batches run.

    Without a budget: consecutive runs of `batch_size`. With `max_tokens_per_batch`: length-sorted (longest first,
    ties in sample order) and packed greedily while the padded size `rows x longest` stays within the budget; a
    sample longer than the budget gets a batch of its own. `batch_size` is then not used.

    Raises:
        ValueError: `batch_size` or `max_tokens_per_batch` below 1.
    """
    if batch_size < 1:
        raise ValueError(f"`batch_size` must be at least 1, got {batch_size}.")
    if max_tokens_per_batch is None:
        return [
            list(range(start, min(start + batch_size, len(lengths))))
            for start in range(0, len(lengths), batch_size)
        ]
    if max_tokens_per_batch < 1:
        raise ValueError(f"`max_tokens_per_batch` must be at least 1, got {max_tokens_per_batch}.")
    order = sorted(range(len(lengths)), key=lambda index: (-lengths[index], index))
    plan: list[list[int]] = []
    current: list[int] = []
    for index in order:
        # Longest first, so the batch's width is its first sample's length.
        width = lengths[current[0]] if current else lengths[index]
        if current and (len(current) + 1) * width > max_tokens_per_batch:
            plan.append(current)
            current = []
        current.append(index)
    if current:
        plan.append(current)
    return plan


def shard_plan(plan: list[list[int]], process_index: int, num_processes: int) -> list[list[int]]:
    """The batches process `process_index` of `num_processes` runs: every `num_processes`-th, from its index."""
    if not 0 <= process_index < num_processes:
        raise ValueError(f"process {process_index} is not one of {num_processes} processes.")
    return plan[process_index::num_processes]


def padded_tokens(plan: list[list[int]], lengths: Sequence[int]) -> int:
    """Token positions the plan runs, padding included (sum over batches of rows x longest)."""
    return sum(len(batch) * max(lengths[i] for i in batch) for batch in plan if batch)
