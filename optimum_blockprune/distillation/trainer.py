"""`DistillationTrainer`: a `transformers.Trainer` whose loss is KL(teacher || student) over the vocabulary."""

from __future__ import annotations

import copy
import logging
import os
from typing import TYPE_CHECKING, Any, NamedTuple

import torch
from transformers import Trainer

from .config import DistillationConfig, require_distillation_config
from .loss import distillation_loss

if TYPE_CHECKING:
    import torch.nn as nn

logger = logging.getLogger(__name__)


class TokenCounts(NamedTuple):
    """Real tokens (KL positions) and next-token targets (cross-entropy positions) in one accumulated batch,
    summed over processes when `average_tokens_across_devices` is on."""

    kl: torch.Tensor
    ce: torch.Tensor
    gathered: bool


def _vocab_size(model: nn.Module) -> int | None:
    embeddings = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    weight = getattr(embeddings, "weight", None)
    return int(weight.shape[0]) if weight is not None else None


class DistillationTrainer(Trainer):
    """A `Trainer` that distills a teacher (the unpruned model, or any model with the same vocabulary) into
    the model being trained, with `distillation_loss` (KL at `args.temperature`, mixed with cross-entropy by
    `args.alpha`).

    The teacher is kept off the student's module tree: it is never trained, wrapped for data parallelism,
    sharded by FSDP or written into checkpoints. It runs in eval mode without gradients, placed by
    `accelerator.prepare_model(teacher, evaluation_mode=True)` (a full copy on every process under DDP and
    FSDP), as a DeepSpeed inference engine under DeepSpeed, on `args.teacher_device` if set, or where a
    `device_map` already put it. Under gradient accumulation every micro-batch is divided by the token count of
    the whole accumulated batch, so the update equals one step on the combined batch.

    Args:
        model: the student (a pruned model, or a `peft` model wrapping one).
        teacher: the teacher model, or a name/path loaded with `args.teacher_model_init_kwargs` (e.g. a
            `quantization_config` for a 4-bit teacher, as in the paper).
        args: a `DistillationConfig`.
        kwargs: everything else `Trainer` takes (`train_dataset`, `data_collator`, `callbacks`, ...).

    Example:

    ```python
    >>> trainer = DistillationTrainer(model=pruned, teacher=original, args=DistillationConfig("out"),  # doctest: +SKIP
    ...                               train_dataset=dataset, data_collator=PaddingCollator(tokenizer.pad_token_id))
    >>> trainer.train()  # doctest: +SKIP
    ```
    """

    # `compute_loss` divides by the token counts of the whole accumulated batch (`get_batch_samples`).
    loss_is_scaled_for_ga = True

    def __init__(
        self,
        model: nn.Module | None = None,
        teacher: nn.Module | str | os.PathLike | None = None,
        args: DistillationConfig | None = None,
        **kwargs: Any,
    ):
        require_distillation_config(args)
        if teacher is None:
            raise ValueError(
                "`teacher` is required: pass the unpruned model (or any model with the student's vocabulary), or its "
                "name or path."
            )
        super().__init__(model=model, args=args, **kwargs)
        if isinstance(teacher, (str, os.PathLike)):
            teacher = self._load_teacher(os.fspath(teacher))
        student_parameters = {id(p) for p in self.model.parameters()}
        if any(id(p) in student_parameters for p in teacher.parameters()):
            raise ValueError(
                "The teacher shares parameters with the student. Distill from a separate copy of the unpruned model "
                "(for example, keep the model loaded before pruning, or load it again by name)."
            )
        student_vocab, teacher_vocab = _vocab_size(self.model), _vocab_size(teacher)
        if None not in (student_vocab, teacher_vocab) and student_vocab != teacher_vocab:
            raise ValueError(
                f"The teacher's output vocabulary has {teacher_vocab} entries but the student's has {student_vocab}; "
                "the KL needs the same vocabulary. Use a teacher with the student's tokenizer."
            )
        teacher.eval()
        teacher.requires_grad_(False)
        self.teacher = self._place_teacher(teacher)

    # -- the teacher --------------------------------------------------------------------------------------------
    def _load_teacher(self, name: str) -> nn.Module:
        from transformers import AutoModelForCausalLM

        logger.info("Loading the teacher %s.", name)
        return AutoModelForCausalLM.from_pretrained(name, **(self.args.teacher_model_init_kwargs or {}))

    def _place_teacher(self, teacher: nn.Module) -> nn.Module:
        if self.args.teacher_device is not None:
            return teacher.to(self.args.teacher_device)
        if getattr(teacher, "hf_device_map", None) is not None:
            return teacher  # `device_map` (or a quantizer) placed it; moving it again would undo that
        if self.is_deepspeed_enabled:
            return self._deepspeed_teacher(teacher)
        # Moves it and applies mixed-precision autocast; never wraps it in DDP or shards it with FSDP.
        return self.accelerator.prepare_model(teacher, evaluation_mode=True)

    def _deepspeed_teacher(self, teacher: nn.Module) -> nn.Module:
        """A DeepSpeed inference engine: ZeRO-3 partitions the teacher like the student; other stages keep a
        replica (stage 0), since a frozen model has no gradients or optimizer state to partition."""
        import deepspeed

        config = copy.deepcopy(self.accelerator.state.deepspeed_plugin.deepspeed_config)
        config.pop("optimizer", None)
        config.pop("scheduler", None)
        zero = config.setdefault("zero_optimization", {})
        if zero.get("stage") != 3:
            zero["stage"] = 0
        hidden_size = getattr(getattr(teacher, "config", None), "hidden_size", None)
        if zero.get("stage") == 3 and hidden_size:
            for key, value in (
                ("reduce_bucket_size", hidden_size * hidden_size),
                ("stage3_param_persistence_threshold", 10 * hidden_size),
                ("stage3_prefetch_bucket_size", int(0.9 * hidden_size * hidden_size)),
            ):
                if zero.get(key) in (None, "auto"):
                    zero[key] = value
        engine, *_ = deepspeed.initialize(model=teacher, config=config)
        return engine.eval()

    def _teacher_device(self) -> torch.device:
        return next(self.teacher.parameters()).device

    @torch.no_grad()
    def teacher_logits(self, inputs: dict[str, Any]) -> torch.Tensor:
        """The teacher's logits on a batch (its `labels` are not passed: the teacher computes no loss)."""
        device = self._teacher_device()
        teacher_inputs = {
            key: value.to(device) if torch.is_tensor(value) else value
            for key, value in inputs.items()
            if key != "labels"
        }
        return self.teacher(**teacher_inputs, use_cache=False).logits

    # -- the loss -------------------------------------------------------------------------------------------------
    def get_batch_samples(self, epoch_iterator, num_batches: int, device: torch.device):
        """Fetch the micro-batches of one optimizer step and count their KL and cross-entropy tokens."""
        batches = []
        for _ in range(num_batches):
            try:
                batches.append(next(epoch_iterator))
            except StopIteration:
                break
        if not batches:
            return batches, None
        # Summed as tensors on their device: `float(...)` per micro-batch would stall the GPU every time.
        counts = torch.zeros(2, dtype=torch.float64, device=device)
        for batch in batches:
            mask = batch.get("attention_mask")
            counts[0] += mask.sum().to(counts) if mask is not None else batch["input_ids"].numel()
            labels = batch.get("labels")
            if labels is not None:
                counts[1] += (labels[..., 1:] != -100).sum().to(counts)
        gathered = bool(self.args.average_tokens_across_devices and self.args.world_size > 1)
        if gathered:
            counts = self.accelerator.gather(counts.unsqueeze(0)).sum(dim=0)
        return batches, TokenCounts(kl=counts[0].float(), ce=counts[1].float(), gathered=gathered)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        labels = inputs.get("labels")
        if self.args.alpha < 1 and labels is None:
            raise ValueError(
                f"`alpha`={self.args.alpha} mixes in the cross-entropy, but the batch has no `labels`. Use a collator "
                "that adds them (`PaddingCollator` does) or set `alpha=1.0`."
            )
        student_inputs = {key: value for key, value in inputs.items() if key != "labels"}
        outputs = model(**student_inputs, use_cache=False)
        teacher_logits = self.teacher_logits(inputs)
        counts = num_items_in_batch if isinstance(num_items_in_batch, TokenCounts) else None
        loss = distillation_loss(
            outputs.logits,
            teacher_logits,
            inputs.get("attention_mask"),
            labels=labels,
            temperature=self.args.temperature,
            alpha=self.args.alpha,
            num_kl_tokens=counts.kl.clamp_min(1.0) if counts is not None else None,
            num_ce_tokens=counts.ce.clamp_min(1.0) if counts is not None else None,
        )
        if counts is not None and counts.gathered:
            # Data parallelism averages gradients over processes; the counts already cover all of them.
            loss = loss * self.accelerator.num_processes
        return (loss, outputs) if return_outputs else loss
