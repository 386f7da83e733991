"""Coupling gates: scale what each block adds to the residual stream by a scalar alpha_i.

    h <- h + alpha_i * Attn_i(norm(h)),   h <- h + alpha_i * MLP_i(norm(h))     (METHOD.md section 1)

alpha_i = 1 is the unpruned model and alpha_i = 0 is block i removed, so gates both measure block
importance (gradients at alpha = 1) and evaluate a removal without copying the model (alpha = 0).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..architectures import ArchitectureAdapter, get_adapter

if TYPE_CHECKING:
    import torch
    import torch.nn as nn


def block_input(args: tuple, kwargs: dict) -> torch.Tensor:
    """The hidden states a block was called with (positional or `hidden_states=`), from a forward pre-hook."""
    hidden = args[0] if args else kwargs.get("hidden_states")
    if hidden is None:
        raise RuntimeError(
            "Could not find the hidden states passed to a block (neither positional nor keyword)."
        )
    return hidden


class CouplingGates:
    """Context manager installing one forward hook per residual branch; hooks are always removed on exit.

    One gate per block (`granularity="block"`, the paper's variables) or per sublayer (`"sublayer"`: the
    attention, Mamba, MLP/MoE ... branches of each block get separate gates); `gates.units` describes them.
    Set `gates.alpha` to a tensor of shape `[num_gates]` (one value for the whole batch) or
    `[batch, num_gates]` (one row per sample: the per-sample gradient trick) before a forward pass;
    `None` leaves the model untouched. With `freeze_weights=True` (default) every parameter has
    `requires_grad` switched off while the gates are installed, so a backward pass computes activation
    gradients only; the previous flags are restored on exit.

    Example:

    ```python
    >>> with CouplingGates(model) as gates:  # doctest: +SKIP
    ...     gates.alpha = torch.ones(gates.num_gates, requires_grad=True)
    ...     model(input_ids).logits.sum().backward()
    ...     importance = gates.alpha.grad
    ```
    """

    def __init__(
        self,
        model: nn.Module,
        adapter: ArchitectureAdapter | None = None,
        *,
        granularity: str = "block",
        freeze_weights: bool = True,
    ):
        self.model = model
        self.adapter = adapter or get_adapter(model)
        self.freeze_weights = freeze_weights
        self.granularity = granularity
        self.units = self.adapter.units(model, granularity)
        self.num_gates = len(self.units)
        self.alpha: torch.Tensor | None = None
        self._handles: list = []
        self._saved_requires_grad: list[tuple[torch.nn.Parameter, bool]] = []

    def __enter__(self) -> CouplingGates:
        if self._handles:
            raise RuntimeError("These coupling gates are already installed; nested use is not supported.")
        if self.freeze_weights:
            self._saved_requires_grad = [(p, p.requires_grad) for p in self.model.parameters()]
            for parameter, _ in self._saved_requires_grad:
                parameter.requires_grad_(False)
        try:
            interpolate = self.adapter.interpolates(self.granularity)
            for unit in self.units:
                for path in unit.branches:
                    module = self.model.get_submodule(path)
                    if interpolate:
                        hook = self._make_interpolation_hook(unit.index)
                        self._handles.append(module.register_forward_hook(hook, with_kwargs=True))
                    else:
                        self._handles.append(module.register_forward_hook(self._make_hook(unit.index)))
        except BaseException:
            self._remove()
            raise
        return self

    def __exit__(self, *exc_info) -> None:
        self._remove()

    def _remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []
        for parameter, flag in self._saved_requires_grad:
            parameter.requires_grad_(flag)
        self._saved_requires_grad = []
        self.alpha = None

    def _make_hook(self, index: int):
        def hook(module, args, output):
            if self.alpha is None:
                return output
            if isinstance(output, tuple):
                return (self._scale(output[0], index), *output[1:])
            return self._scale(output, index)

        return hook

    def _make_interpolation_hook(self, index: int):
        """h + alpha * (block(h) - h) on the whole block (`block_gate='interpolate'`)."""

        def hook(module, args, kwargs, output):
            if self.alpha is None:
                return output
            hidden = block_input(args, kwargs)
            out = output[0] if isinstance(output, tuple) else output
            mixed = hidden + self._scale(out - hidden, index)
            return (mixed, *output[1:]) if isinstance(output, tuple) else mixed

        return hook

    def _scale(self, branch: torch.Tensor, index: int) -> torch.Tensor:
        alpha = self.alpha
        # A model placed across devices (`device_map`) runs each branch where its block lives: the gate goes there
        # (a no-op on one device; autograd carries the gradient back to alpha's device).
        if alpha.dim() == 1:
            return branch * alpha[index].to(device=branch.device, dtype=branch.dtype)
        column = alpha[:, index].to(device=branch.device, dtype=branch.dtype)
        rows = branch.shape[0]
        if rows != column.shape[0]:
            # Some blocks flatten tokens sample-major to [batch * seq, hidden] (OPT's feed-forward): give every
            # token row its sample's alpha.
            if rows % column.shape[0]:
                raise ValueError(
                    f"`alpha` has {column.shape[0]} rows but gate {index}'s branch output has {rows}; use shape "
                    f"[batch, {self.num_gates}] or [{self.num_gates}]."
                )
            column = column.repeat_interleave(rows // column.shape[0])
        return branch * column.view(-1, *([1] * (branch.dim() - 1)))
