"""Held-out quality of a model and of removals not yet applied: perplexity, per-token KL, lm-evaluation-harness.

Every next-token quantity here is token-weighted over real tokens only: position t of a sample counts when
token t + 1 is real, so padding, batch size and sample order never change a value.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, get_args

import numpy as np

#: What removal evaluation measures per real token: next-token cross-entropy, or KL from the unpruned model.
SelectionMetric = Literal["kl", "loss"]
SELECTION_METRICS = get_args(SelectionMetric)
#: What a measured removal can report: the selection metrics (language models), or for any model the
#: "distortion" of its final hidden states, 1 - cos(h_removed, h) per real token (encoders have no next token).
REMOVAL_METRICS = (*SELECTION_METRICS, "distortion")

if TYPE_CHECKING:
    import torch.nn as nn

    from .architectures import ArchitectureAdapter
    from .estimation.calibration import CalibrationData


def as_evaluation_data(data: Any, tokenizer, max_length: int) -> CalibrationData:
    from .estimation.calibration import CalibrationData, prepare_calibration_data

    if isinstance(data, CalibrationData):
        return data
    if isinstance(data, str) or not isinstance(data, Sequence):
        raise TypeError(
            f"`data` must be a list of texts or token ids, or `CalibrationData`, got {type(data).__name__}. Wrap a "
            "single text in a list."
        )
    return prepare_calibration_data(
        list(data), tokenizer, num_samples=len(data), max_length=max_length, shuffle=False
    )


@dataclass(frozen=True)
class RemovalLosses:
    """Per-sample measurements of removals: `sums[r, s]` is removal r's metric summed over sample s's predicted
    tokens, `tokens[s]` how many tokens sample s predicts; `block_evaluations`, what measuring them cost (one
    block run on one real token = 1, over every process), a count that compares across machines."""

    sums: np.ndarray
    tokens: np.ndarray
    block_evaluations: int = 0

    def mean(self) -> np.ndarray:
        """Token-weighted mean over all samples, one value per removal (what `evaluate_removals` returns)."""
        return self.sums.sum(axis=1) / self.tokens.sum()

    def per_sample(self) -> np.ndarray:
        """Each sample's token mean, shape [removals, samples]."""
        return self.sums / self.tokens


def paired_difference(sums_a, sums_b, tokens) -> tuple[float, float]:
    """The per-token mean of `a - b` over samples both were measured on, and its standard error: the paired
    difference of two removals' per-sample sums (`RemovalLosses.sums` rows), a ratio estimator with each sample's
    `tokens` as its weight (samples of different lengths count by their tokens, as the means do). Pairing removes
    what the samples share (how hard each text is), so it is far tighter than two separate errors."""
    difference = np.asarray(sums_a, dtype=float) - np.asarray(sums_b, dtype=float)
    tokens = np.asarray(tokens, dtype=float)
    n = len(difference)
    mean = difference.sum() / tokens.sum()
    if n < 2:
        return float(mean), math.inf
    spread = np.sqrt(n / (n - 1) * ((difference - mean * tokens) ** 2).sum()) / tokens.sum()
    return float(mean), float(spread)


def removal_losses(
    model: nn.Module,
    data: CalibrationData,
    removals: Sequence[Sequence[int]],
    *,
    metric: str = "loss",
    adapter: ArchitectureAdapter | None = None,
    granularity: str = "block",
    batch_size: int = 8,
    max_tokens_per_batch: int | None = None,
    pad_token_id: int = 0,
    show_progress: bool = False,
    reuse_prefix: bool = False,
    share_prefixes: bool = True,
    desc: str = "Evaluating",
) -> RemovalLosses:
    """Every removal's `metric` on every sample, measured through gates at 0 (no copy, model unchanged).

    `metric`: "loss" (next-token cross-entropy), "kl" (from the unpruned model's next-token distribution), or
    "distortion" (1 - cosine between the final hidden states with and without the removal, per real token; for
    encoders as well as decoders).

    With `reuse_prefix`, each batch's unpruned residual stream is captured once and a removal re-runs only the
    blocks from its first removed one on, or from the first block where it differs from a shorter removal measured
    in the same call (`estimation.residual_cache.plan_resumption`): a removal starting at block k costs (N - k) / N
    of a forward (`share_prefixes=False`: from the unpruned stream only). Block granularity only.

    `max_tokens_per_batch` batches length-sorted samples under a token budget (`batching.batch_plan`); under
    several processes each measures its share of the batches and every process gets all sums
    (`parallel.sum_over_processes`). Neither changes any sample's values.

    Raises:
        ValueError: unknown `metric`, a model without next-token logits, gates that do not remove blocks, or
            `reuse_prefix` on a model whose blocks cannot be resumed from the residual stream.
    """
    import torch
    import torch.nn.functional as F

    from .architectures import get_adapter
    from .estimation.forward import GatedForward, next_token_targets
    from .estimation.parallel import sum_over_processes
    from .estimation.residual_cache import BlockInputs, blocks_run, plan_resumption

    if metric not in REMOVAL_METRICS:
        raise ValueError(f"`metric` must be one of {list(REMOVAL_METRICS)}, got {metric!r}.")
    if reuse_prefix and granularity != "block":
        raise ValueError("`reuse_prefix` resumes from block inputs, so it needs `granularity='block'`.")
    removals = [tuple(int(i) for i in removal) for removal in removals]
    compares = metric in ("kl", "distortion")  # against the unpruned model's output on the same batch
    needs_gates = compares or reuse_prefix or any(removals)
    if needs_gates:
        adapter = adapter or get_adapter(model)
        _check_removals_measurable(adapter, granularity, next_token=metric != "distortion")
    sums = np.zeros((len(removals), data.num_samples), dtype=np.float64)
    tokens = np.zeros(data.num_samples, dtype=np.float64)
    first = True
    num_blocks = len(adapter.block_list(model)) if adapter is not None else 0
    plan = plan_resumption(removals, num_blocks, share=share_prefixes) if reuse_prefix else None
    # Blocks run per token: the unpruned pass (when one is captured), then each removal from where it resumes
    # (gated blocks still run: a gate scales a block's output, it does not skip it).
    unpruned_pass = num_blocks if needs_gates and (compares or reuse_prefix) else 0
    removal_blocks = num_blocks * len(removals) if plan is None else blocks_run(plan, num_blocks)
    with GatedForward(
        model,
        data,
        adapter=adapter,
        granularity=granularity,
        gates=needs_gates,
        batch_size=batch_size,
        max_tokens_per_batch=max_tokens_per_batch,
        pad_token_id=pad_token_id,
        show_progress=show_progress,
        desc=desc,
        shard=True,
        work=(unpruned_pass + removal_blocks) * data.num_tokens,
    ) as run:
        evaluations = np.zeros(1)
        for batch in run:
            if metric == "distortion":
                real = batch["attention_mask"].bool()  # every real token, no next-token shift
            else:
                targets = next_token_targets(batch["labels"])
                real = targets != -100
            rows = torch.as_tensor(run.indices)[real.nonzero(as_tuple=True)[0].cpu()]  # each token's sample
            reference = unpruned = None
            if needs_gates and (compares or reuse_prefix):
                run.gates.alpha = None
                unpruned = BlockInputs(run, batch)
                if reuse_prefix and first:
                    unpruned.check(run, batch)
                    evaluations += (num_blocks - num_blocks // 2) * int(batch["attention_mask"].sum())
                if metric == "kl":
                    reference = F.log_softmax(unpruned.outputs.logits[real].float(), dim=-1)
                elif metric == "distortion":
                    reference = F.normalize(unpruned.outputs.last_hidden_state[real].float(), dim=-1)

            if plan is None:
                measured = _each_removal(run, batch, removals)
            else:
                measured = _resumed(run, batch, plan, unpruned)
            for removal_rows, outputs in measured:
                if metric == "distortion":
                    output = outputs.last_hidden_state[real].float()
                    values = 1.0 - (F.normalize(output, dim=-1) * reference).sum(dim=-1)
                else:
                    output = outputs.logits[real].float()
                    if metric == "loss":
                        values = F.cross_entropy(output, targets[real], reduction="none")
                    else:
                        log_q = F.log_softmax(output, dim=-1)
                        values = F.kl_div(log_q, reference, log_target=True, reduction="none").sum(dim=-1)
                per_sample = torch.zeros(data.num_samples, dtype=torch.float64)
                per_sample.index_add_(0, rows, values.double().cpu())
                sums[list(removal_rows)] += per_sample.numpy()
            tokens += np.bincount(rows.numpy(), minlength=data.num_samples)
            evaluations += (unpruned_pass + removal_blocks) * int(batch["attention_mask"].sum())
            first = False
        if run.processes.num_processes > 1:
            sums = sum_over_processes(sums, run.processes)
            tokens = sum_over_processes(tokens, run.processes)
            evaluations = sum_over_processes(evaluations, run.processes)
    if tokens.sum() == 0:
        raise ValueError("The evaluation data has no sample with at least 2 tokens.")
    return RemovalLosses(sums, tokens, int(evaluations[0]))


def _each_removal(run, batch, removals) -> Iterator[tuple[tuple[int, ...], Any]]:
    """(rows, outputs) of every removal on one batch, each a full forward."""
    for k, removal in enumerate(removals):
        if run.gates is not None:
            run.set_removed(removal)
        yield (k,), run.outputs(batch)


def _resumed(run, batch, plan, unpruned) -> Iterator[tuple[tuple[int, ...], Any]]:
    """(rows, outputs) along `plan_resumption`'s steps on one batch, each step resuming from its parent's capture;
    a capture is dropped once its last child has run, so at most one chain of captures is held."""
    from .estimation.residual_cache import UNPRUNED, BlockInputs

    captures = {UNPRUNED: unpruned}
    waiting: dict[int, int] = {}
    for step in plan:
        waiting[step.parent] = waiting.get(step.parent, 0) + 1
    for index, step in enumerate(plan):
        run.set_removed(step.removal)
        with captures[step.parent].starting_at(step.start):
            if step.capture:
                captures[index] = BlockInputs(run, batch, start=step.start, head=bool(step.rows))
                outputs = captures[index].outputs
            else:
                outputs = run.outputs(batch)
        waiting[step.parent] -= 1
        if not waiting[step.parent] and step.parent != UNPRUNED:
            del captures[step.parent]
        if step.rows:
            yield step.rows, outputs


def _check_removals_measurable(
    adapter: ArchitectureAdapter, granularity: str, next_token: bool = True
) -> None:
    if next_token and adapter.task != "causal-lm":
        raise ValueError(
            f"Evaluating removals by next-token loss or KL needs next-token logits; a `{adapter.model_type}` model "
            f"({adapter.task}) has none (`metric='distortion'` measures its final hidden states instead)."
        )
    if not next_token and adapter.task == "causal-lm":
        raise ValueError(
            "`metric='distortion'` compares final hidden states, which a language model's output does not hold; use "
            "'loss' or 'kl'."
        )
    if not adapter.exact_gates(granularity):
        raise ValueError(
            f"A gate at 0 is not the block removed in `{adapter.model_type}` models, so removals cannot be "
            "evaluated through gates; apply them to a copy instead."
        )


def evaluate_removals(
    model: nn.Module, data: CalibrationData, removals: Sequence[Sequence[int]], **options: Any
) -> np.ndarray:
    """The held-out cost of each removal, measured without copying or changing the model.

    Each removal (0-based gate indices; `()` is the unpruned model) is evaluated by setting its coupling gates
    to alpha = 0, which for every decoder is exactly the model with those blocks removed. `metric` is 'loss'
    (mean next-token cross-entropy per real token; exp(loss) is the perplexity) or 'kl' (mean KL from the
    unpruned model's next-token distribution, per real token). The unpruned logits of a batch are computed
    once and reused by every removal, so k removals cost k + 1 forwards per batch and one batch of logits of
    memory. `options` are `removal_losses`'s (`metric`, `adapter`, `granularity`, `batch_size`,
    `pad_token_id`, `show_progress`, `reuse_prefix`). Returns the token-weighted mean over all samples, shape
    [len(removals)] (`removal_losses` gives every sample's value).

    Raises:
        ValueError: unknown `metric`, a model without next-token logits, or gates that do not remove blocks.
    """
    return removal_losses(model, data, removals, **options).mean()


def evaluate_perplexity(
    model: nn.Module,
    data: CalibrationData | Sequence[str],
    *,
    tokenizer: Any | None = None,
    max_length: int = 512,
    batch_size: int = 8,
    pad_token_id: int = 0,
    show_progress: bool = False,
) -> float:
    """exp(total next-token NLL / number of predicted tokens) over `data`, ignoring padding.

    `data` is a list of texts (tokenised with `tokenizer`, truncated to `max_length`, in order) or prepared
    `CalibrationData`. Every real token after the first of each sample is predicted once, so the value does
    not depend on `batch_size` or padding.
    """
    data = as_evaluation_data(data, tokenizer, max_length)
    loss = evaluate_removals(
        model,
        data,
        [()],
        metric="loss",
        batch_size=batch_size,
        pad_token_id=pad_token_id,
        show_progress=show_progress,
    )[0]
    return math.exp(loss)


def evaluate_lm_eval(
    model: nn.Module,
    tokenizer: Any,
    tasks: Sequence[str],
    *,
    include_path: str | None = None,
    num_fewshot: int | None = None,
    limit: int | float | None = None,
    batch_size: int = 8,
    **simple_evaluate_kwargs: Any,
) -> dict[str, Any]:
    """Evaluate an in-memory (pruned) model with upstream lm-evaluation-harness; returns `simple_evaluate`'s output
    (metrics per task under `["results"]`; per-document responses under `["samples"]` with `log_samples=True`).

    The model is wrapped as `HFLM(pretrained=model, tokenizer=tokenizer)`: no save, no reload, no fork of
    lm-eval. `include_path` adds a directory of custom task YAMLs (how to run fully offline: a task whose
    `dataset_path: json` points at local `data_files`). Needs the extra: `pip install 'optimum-blockprune[lm-eval]'`.

    Raises:
        ImportError: lm-eval is not installed.
        ValueError: the tokenizer lacks the BOS/EOS tokens lm-eval needs, or no task is given.
    """
    try:
        from lm_eval import simple_evaluate
        from lm_eval.models.huggingface import HFLM
        from lm_eval.tasks import TaskManager
    except ImportError:
        raise ImportError(
            "lm-evaluation-harness is not installed. Install it with `pip install 'optimum-blockprune[lm-eval]'`."
        ) from None
    if isinstance(tasks, str):
        tasks = [tasks]
    if not tasks:
        raise ValueError("`tasks` is empty; name at least one lm-eval task (e.g. ['hellaswag']).")
    missing = [name for name in ("eos_token", "bos_token") if getattr(tokenizer, name, None) is None]
    if missing:
        raise ValueError(
            f"lm-eval needs the tokenizer's {' and '.join(missing)}; set them (e.g. `tokenizer.bos_token = "
            "tokenizer.eos_token`) before evaluating."
        )
    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)
    output = simple_evaluate(
        model=lm,
        tasks=list(tasks),
        num_fewshot=num_fewshot,
        limit=limit,
        task_manager=TaskManager(include_path=include_path) if include_path else None,
        **simple_evaluate_kwargs,
    )
    return output


def removal_metric_for(adapter: ArchitectureAdapter) -> str:
    """What a removal is measured by: next-token loss for a language model, the final hidden states' distortion
    (1 - cos per token) for an encoder, which predicts no next token."""
    return "loss" if adapter.task == "causal-lm" else "distortion"


def check_unpruned_loss(model: nn.Module, data, adapter, *, pad_token_id: int = 0) -> int:
    """The model's own loss on the first calibration sample, before any long pass: a model that is broken as it
    is (a NaN weight, overflow) is refused at once, saying why. Returns the block evaluations it cost.

    Raises:
        NonFiniteError: the loss is NaN or infinite.
    """
    from .finite import require_finite

    metric = removal_metric_for(adapter)  # an encoder's distortion is NaN when its output is
    losses = removal_losses(
        model, data.subset([0]), [()], metric=metric, adapter=adapter, pad_token_id=pad_token_id
    )
    what = "loss" if metric == "loss" else "output distortion"
    require_finite(losses.sums[0, 0], f"The unpruned model's calibration {what} on sample 0", model=model)
    return losses.block_evaluations
