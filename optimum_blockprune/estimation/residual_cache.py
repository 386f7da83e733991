"""Re-running only what a removal changes: the unpruned residual stream entering every block, captured on a batch,
so a removal whose first removed block is k re-runs only blocks k..N-1 and the head. Blocks before k compute
exactly what the unpruned model computed, so their output is read from the capture instead.

A pair (i, j) then costs (N - i) / N of a forward, and the unpruned model itself only the head. `check` verifies,
once per pass, that starting half-way with nothing removed reproduces the unpruned logits; a model whose blocks
read more than the residual stream from earlier blocks fails it and is refused.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from .gates import block_input

if TYPE_CHECKING:
    import torch


class NotResumableError(ValueError):
    """The model's blocks read more than the residual stream from earlier blocks: it cannot start mid-stack."""


class BlockInputs:
    """`inputs[k]`: the residual stream entering block k on one batch (k = N: leaving the last block)."""

    def __init__(self, run: Any, batch: dict[str, torch.Tensor]):
        """Run the model on `batch` through `run` (a `GatedForward`, gates as the caller set them), capturing every
        block's input; `self.outputs` holds the model's outputs (`.logits` for a language model)."""
        self.blocks = run.adapter.block_list(run.model)
        n = len(self.blocks)
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

            return hook

        handles = [
            b.register_forward_pre_hook(capture_input(i), with_kwargs=True) for i, b in enumerate(self.blocks)
        ]
        handles += [b.register_forward_hook(capture_output(i)) for i, b in enumerate(self.blocks)]
        try:
            self.outputs = run.outputs(batch)
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
        if not torch.allclose(resumed, logits, rtol=1e-4, atol=1e-4 * max(float(logits.abs().max()), 1.0)):
            raise NotResumableError(
                f"Starting a `{run.adapter.model_type}` model half-way from its captured residual stream does not "
                "reproduce its output: its blocks read more than the residual stream from earlier blocks."
            )

    @contextlib.contextmanager
    def starting_at(self, start: int) -> Iterator[None]:
        """Inside, blocks before `start` return the captured stream entering block `start` instead of computing
        (`start` = N: only the final norm and the head run)."""
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
