"""Re-running only what a removal changes: the residual stream entering every block, captured on a batch, so a
removal re-runs only the blocks from the first one where its stream differs from a captured one, and the head.

The unpruned model's stream serves every removal: one whose first removed block is k re-runs blocks k..N-1. Removals
measured together share more (`plan_resumption`): a removal also resumes from the capture of a shorter removal it
agrees with up to some block, so the pair (i, j) resumes at block j from the capture of (i,) and a greedy step with
R removed resumes every candidate R + {b} at block b from the capture of R. Blocks before the resume point compute
exactly what the captured run computed, so their output is read from the capture instead.

`check` verifies, once per pass, that starting half-way with nothing removed reproduces the unpruned logits; a model
whose blocks read more than the residual stream from earlier blocks fails it and is refused.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .gates import block_input

if TYPE_CHECKING:
    import torch


class NotResumableError(ValueError):
    """The model's blocks read more than the residual stream from earlier blocks: it cannot start mid-stack."""


class _HeadSkipped(Exception):
    """Raised after the last block of a capture-only pass: the final norm and the head are not needed."""


#: `PlannedRemoval.parent` of a removal resumed from the unpruned model's capture.
UNPRUNED = -1
#: Beyond this many removals in one call, parents are looked for only among the unpruned capture (the search is
#: quadratic in the number of removals).
_MAX_SHARED = 4096


@dataclass(frozen=True)
class PlannedRemoval:
    """One step of `plan_resumption`: run `removal` from block `start` on, reading the blocks before it from the
    capture of plan step `parent` (`UNPRUNED`: the unpruned model's). `rows`: the positions of this removal in the
    caller's list (empty: a shared prefix measured only to be resumed from); `capture`: later steps resume from it."""

    removal: tuple[int, ...]
    parent: int
    start: int
    rows: tuple[int, ...]
    capture: bool


def plan_resumption(
    removals: Sequence[Sequence[int]], num_blocks: int, *, share: bool = True
) -> list[PlannedRemoval]:
    """The order and resume points that measure `removals` with few block evaluations (greedy, a pure function).

    A removal R may resume from the capture of any shorter removal S (or the unpruned model) at the first block
    where the two differ, d = min(R △ S), if S's capture holds that block (d at or after S's own start); the latest
    such d wins. A prefix R[:-1] shared by several removals and not asked for is added (captured only, no head) when
    resuming them from it saves more blocks than it costs. Steps come parents first, depth first, so a capture can
    be dropped as soon as its last child has run. `share=False`: every removal resumes from the unpruned capture.
    """
    rows: dict[tuple[int, ...], list[int]] = {}
    for row, removal in enumerate(removals):
        rows.setdefault(tuple(sorted(set(int(i) for i in removal))), []).append(row)

    def unpruned_start(removal):
        return removal[0] if removal else num_blocks

    children: dict[tuple[int, ...], list[tuple[int, ...]]] = {}
    for removal in rows:
        if len(removal) >= 2:
            children.setdefault(removal[:-1], []).append(removal)
    shared = [
        prefix
        for prefix, kids in children.items()
        if share
        and prefix not in rows
        and len(kids) >= 2
        and sum(kid[-1] - unpruned_start(kid) for kid in kids) > num_blocks - unpruned_start(prefix)
    ]
    nodes = sorted([*rows, *shared], key=lambda r: (len(r), r))
    search = share and len(nodes) <= _MAX_SHARED
    parents, starts, sets = [], [], [frozenset(r) for r in nodes]
    for k, removal in enumerate(nodes):
        parent, start = UNPRUNED, unpruned_start(removal)
        for j in range(k) if search else ():
            if len(nodes[j]) >= len(removal):
                break  # nodes are sorted by length: only shorter ones can be parents
            differ = sets[k] ^ sets[j]
            resume = min(differ) if differ else num_blocks
            if starts[j] <= resume and resume > start:
                parent, start = j, resume
        parents.append(parent)
        starts.append(start)

    kids_of: dict[int, list[int]] = {}
    for k, parent in enumerate(parents):
        kids_of.setdefault(parent, []).append(k)
    order, index_of, stack = [], {}, list(reversed(kids_of.get(UNPRUNED, [])))
    while stack:  # depth first from the unpruned model
        k = stack.pop()
        index_of[k] = len(order)
        order.append(k)
        stack.extend(reversed(kids_of.get(k, [])))
    return [
        PlannedRemoval(
            removal=nodes[k],
            parent=UNPRUNED if parents[k] == UNPRUNED else index_of[parents[k]],
            start=starts[k],
            rows=tuple(rows.get(nodes[k], ())),
            capture=k in kids_of,
        )
        for k in order
    ]


class BlockInputs:
    """`inputs[k]`: the residual stream entering block k on one batch (k = N: leaving the last block), for k at or
    after `start` (blocks before it were read from another capture)."""

    def __init__(self, run: Any, batch: dict[str, torch.Tensor], *, start: int = 0, head: bool = True):
        """Run the model on `batch` through `run` (a `GatedForward`, gates as the caller set them), capturing every
        block's input from block `start` on; `self.outputs` holds the model's outputs (`.logits` for a language
        model), or None with `head=False`, which stops after the last block."""
        self.blocks = run.adapter.block_list(run.model)
        n = len(self.blocks)
        self.start = start
        self.inputs: list[torch.Tensor | None] = [None] * (n + 1)
        self.tuple_lengths = [0] * n  # 0: the block returns a tensor; t: a tuple of t elements

        def capture_input(index):
            def hook(module, args, kwargs):
                self.inputs[index] = block_input(args, kwargs).detach()

            return hook

        def capture_output(index):
            def hook(module, args, output):
                self.tuple_lengths[index] = len(output) if isinstance(output, tuple) else 0
                if index == n - 1:
                    self.inputs[n] = (output[0] if isinstance(output, tuple) else output).detach()
                    if not head:
                        raise _HeadSkipped

            return hook

        handles = [
            b.register_forward_pre_hook(capture_input(i), with_kwargs=True)
            for i, b in enumerate(self.blocks)
            if i >= start
        ]
        handles += [b.register_forward_hook(capture_output(i)) for i, b in enumerate(self.blocks)]
        self.outputs = None
        try:
            self.outputs = run.outputs(batch)
        except _HeadSkipped:
            pass
        finally:
            for handle in handles:
                handle.remove()

    @property
    def num_blocks(self) -> int:
        return len(self.blocks)

    def check(self, run: Any, batch: dict[str, torch.Tensor]) -> None:
        """Starting half-way with nothing removed must give the unpruned logits.

        Raises:
            NotResumableError: it does not (the blocks read more than the residual stream from earlier blocks).
        """
        import torch

        if run.gates is not None:
            run.gates.alpha = None
        with self.starting_at(self.num_blocks // 2):
            resumed = _primary(run.outputs(batch))
        logits = _primary(self.outputs)
        bad = ~torch.isfinite(logits)
        if bad.any():
            from ..finite import require_finite

            # not a resumption problem: the model's own output is broken; say where it came from
            first = float(logits[bad][0])
            require_finite(first, "The unpruned model's logits on a calibration batch", model=run.model)
        if not torch.allclose(resumed, logits, rtol=1e-4, atol=1e-4 * max(float(logits.abs().max()), 1.0)):
            raise NotResumableError(
                f"Starting a `{run.adapter.model_type}` model half-way from its captured residual stream does not "
                "reproduce its output: its blocks read more than the residual stream from earlier blocks."
            )

    @contextlib.contextmanager
    def starting_at(self, start: int) -> Iterator[None]:
        """Inside, blocks before `start` return the captured stream entering block `start` instead of computing
        (`start` = N: only the final norm and the head run)."""
        if not self.start <= start <= self.num_blocks:
            raise ValueError(f"This capture holds blocks {self.start}..{self.num_blocks}, not block {start}.")
        saved = []
        try:
            if start > 0:
                cached = self.inputs[start]
                for index in range(start):
                    block = self.blocks[index]
                    saved.append(
                        (block, block.__dict__.get("forward"))
                    )  # accelerate may have set one already
                    block.forward = _replay(cached, self.tuple_lengths[index])
            yield
        finally:
            for block, previous in saved:
                if previous is None:
                    del block.forward
                else:
                    block.forward = previous


def _primary(outputs: Any) -> torch.Tensor:
    """A language model's logits, or an encoder's final hidden states."""
    logits = getattr(outputs, "logits", None)
    return logits if logits is not None else outputs.last_hidden_state


def _replay(cached: torch.Tensor, tuple_length: int):
    output = (cached, *([None] * (tuple_length - 1))) if tuple_length else cached

    def forward(*args, **kwargs):
        return output

    return forward


def blocks_run(plan: Sequence[PlannedRemoval], num_blocks: int) -> int:
    """How many block evaluations `plan` costs per batch (each step runs blocks `start`..N-1)."""
    return sum(num_blocks - step.start for step in plan)
