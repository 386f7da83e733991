"""The one way the library runs calibration data through a gated model, and the one next-token shift.

`GatedForward` puts the model in eval mode (restored after), installs the coupling gates (optional), turns
gradients off unless asked for, shows a progress bar, and yields each batch on the model's device. The Fisher,
the residual statistics and removal evaluation all run through it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Collection, Iterator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch
    import torch.nn as nn

    from ..architectures import ArchitectureAdapter
    from .calibration import CalibrationData
    from .gates import CouplingGates


def next_token_targets(labels: torch.Tensor) -> torch.Tensor:
    """Targets aligned with the logits: position t predicts labels[t + 1]; the last position predicts nothing."""
    import torch

    return torch.cat([labels[:, 1:], labels.new_full((labels.shape[0], 1), -100)], dim=1)


class GatedForward:
    """Context manager over one pass of `data` through `model` with coupling gates.

    Example:

    ```python
    >>> with GatedForward(model, data, desc="Scoring") as run:  # doctest: +SKIP
    ...     for batch in run:
    ...         run.gates.alpha = torch.zeros(run.gates.num_gates)
    ...         logits = run.logits(batch)
    ```

    Args:
        gates: install coupling gates (`run.gates`); False runs the plain model (`run.gates` is None).
        granularity: one gate per block or per sublayer.
        grad: keep autograd on (the Fisher's backward); otherwise everything runs under `no_grad`.
    """

    def __init__(
        self,
        model: nn.Module,
        data: CalibrationData,
        *,
        adapter: ArchitectureAdapter | None = None,
        granularity: str = "block",
        gates: bool = True,
        grad: bool = False,
        batch_size: int = 8,
        max_tokens_per_batch: int | None = None,
        pad_token_id: int = 0,
        show_progress: bool = False,
        desc: str = "Forward",
        shard: bool = False,
        skip: Collection[int] = (),
        gradient_checkpointing: bool = False,
        work: float | None = None,
    ):
        from ..architectures import get_adapter
        from .batching import batch_plan, shard_plan
        from .parallel import current_processes

        self.model = model
        self.data = data
        # Without gates no adapter is needed (perplexity of any causal LM); with gates it says where they go.
        self.adapter = adapter or (get_adapter(model) if gates else None)
        self.granularity = granularity
        self.use_gates = gates
        self.grad = grad
        self.batch_size = batch_size
        self.pad_token_id = pad_token_id
        self.show_progress = show_progress
        self.desc = desc
        self.work = work  # block evaluations of the whole pass, for a choice's one display
        self.gradient_checkpointing = gradient_checkpointing
        self.device = input_device(model)
        self.processes = current_processes() if shard else None
        plan = batch_plan([len(s) for s in data.samples], batch_size, max_tokens_per_batch)
        if self.processes is not None:
            plan = shard_plan(plan, self.processes.process_index, self.processes.num_processes)
        done = set(skip)
        #: the batches this process runs (sample indices), after sharding and skipping finished samples
        self.plan = [batch for batch in plan if not done.issuperset(batch)]
        #: the sample indices of the batch being run (rows of its outputs, in order)
        self.indices: list[int] = []
        self.gates: CouplingGates | None = None
        self._stack: contextlib.ExitStack | None = None
        self._bar = None

    def __enter__(self) -> GatedForward:
        import torch

        from ..utils import progress_bar
        from .gates import CouplingGates

        stack = contextlib.ExitStack()
        was_training = self.model.training
        self.model.eval()
        stack.callback(self.model.train, was_training)
        try:
            stack.enter_context(torch.enable_grad() if self.grad else torch.no_grad())
            if self.gradient_checkpointing:
                stack.enter_context(_gradient_checkpointing(self.model))
            if self.use_gates:
                self.gates = stack.enter_context(
                    CouplingGates(self.model, self.adapter, granularity=self.granularity)
                )
            self._bar = stack.enter_context(
                progress_bar(
                    total=sum(len(batch) for batch in self.plan),
                    desc=self.desc,
                    enabled=self.show_progress,
                    unit="sample",
                    work=self.work,
                )
            )
        except BaseException:
            stack.close()
            raise
        self._stack = stack
        return self

    def __exit__(self, *exc_info) -> None:
        stack, self._stack, self.gates = self._stack, None, None
        if stack is not None:
            stack.__exit__(*exc_info)

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        """Padded batches (`input_ids`, `attention_mask`, `labels`) on the model's input device, in `plan` order;
        `self.indices` names each batch's samples."""
        from .calibration import pad_token_batch

        if self._stack is None:
            raise RuntimeError("Iterate a `GatedForward` inside its `with` block.")
        for indices in self.plan:
            self.indices = indices
            batch = pad_token_batch([self.data.samples[i] for i in indices], self.pad_token_id)
            yield {key: value.to(self.device) for key, value in batch.items()}
            self._bar.update(len(indices))

    def set_removed(self, removed: tuple[int, ...] | list[int]) -> None:
        """Gates at 1 except the given variables at 0 (the same for every sample); `()` is the unpruned model."""
        import torch

        alpha = torch.ones(self.gates.num_gates, device=self.device)
        alpha[list(removed)] = 0.0
        self.gates.alpha = alpha

    def outputs(self, batch: dict[str, Any]):
        """The model's outputs on a batch: the LM's (with logits) or, for encoders, the base model's."""
        inputs = {key: value for key, value in batch.items() if key != "labels"}
        if self.adapter is None or self.adapter.task == "causal-lm":
            return self.model(**inputs, use_cache=False)
        return self.adapter.decoder(self.model)(**inputs)

    def logits(self, batch: dict[str, Any]) -> torch.Tensor:
        return self.outputs(batch).logits


def input_device(model: nn.Module) -> torch.device:
    """Where a batch goes: the input embedding's device. With accelerate's big-model placement
    (`device_map=...`) an offloaded embedding's weight is on "meta" and its hooks move inputs, so take the first
    accelerator in the device map (CPU when there is none: "cpu" and "disk" entries run on the CPU)."""
    import torch

    try:
        device = model.get_input_embeddings().weight.device
    except (AttributeError, NotImplementedError):
        device = next(model.parameters()).device
    if device.type != "meta":
        return device
    for placed in getattr(model, "hf_device_map", {}).values():
        if placed not in ("cpu", "disk"):
            return torch.device("cuda", placed) if isinstance(placed, int) else torch.device(placed)
    return torch.device("cpu")


@contextlib.contextmanager
def _gradient_checkpointing(model: nn.Module):
    """transformers' activation checkpointing for the pass (each block recomputes its activations in the
    backward), switched back off after. Non-reentrant, so gradients reach the gates' alpha though no weight needs
    them. transformers checkpoints a layer only while that layer is training: set the flag on the layers alone, so
    dropout and everything inside them stay in eval mode."""
    if not getattr(model, "supports_gradient_checkpointing", False):
        raise ValueError(
            f"`gradient_checkpointing=True`: a `{type(model).__name__}` does not support activation checkpointing; "
            "use a smaller `max_tokens_per_batch` instead."
        )
    # transformers 5 renamed the switch (the old name warns); either takes checkpoint's kwargs
    enable = getattr(model, "activation_checkpointing_enable", None)
    disable = getattr(model, "activation_checkpointing_disable", None)
    if enable is None:
        enable = lambda kwargs: model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)  # noqa: E731
        disable = model.gradient_checkpointing_disable
    state = (
        "is_activation_checkpointing"
        if hasattr(model, "is_activation_checkpointing")
        else "is_gradient_checkpointing"
    )
    was_on = bool(getattr(model, state, False))
    enable({"use_reentrant": False})
    layers = [m for m in model.modules() if getattr(m, "gradient_checkpointing", False) is True]
    for layer in layers:
        layer.training = True  # not `.train()`: that would switch dropout on below it
    try:
        yield
    finally:
        for layer in layers:
            layer.training = False
        if not was_on:
            disable()
