"""Healing a pruned model: tokenise the training data, distil from the teacher (optionally through LoRA, merged
afterwards), and return the healed model with a record of what was done (saved in provenance and the card)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch.nn as nn

    from .config import DistillationConfig

logger = logging.getLogger(__name__)


def _lora_summary(lora_config: Any) -> dict[str, Any] | None:
    if lora_config is None:
        return None
    targets = getattr(lora_config, "target_modules", None)
    return {
        "r": getattr(lora_config, "r", None),
        "lora_alpha": getattr(lora_config, "lora_alpha", None),
        "target_modules": sorted(targets) if isinstance(targets, (set, list, tuple)) else targets,
        "merged": True,
    }


def heal(
    model: nn.Module,
    train_dataset: Any,
    args: DistillationConfig,
    *,
    teacher: nn.Module | str,
    teacher_name: str | None = None,
    tokenizer: Any = None,
    pad_token_id: int = 0,
    data_options: dict[str, Any] | None = None,
    eval_dataset: Any = None,
    lora_config: Any = None,
    num_train_samples: int | None = None,
    callbacks: Sequence[Any] | None = None,
) -> tuple[nn.Module, dict[str, Any]]:
    """Distil `model` from `teacher` on `train_dataset`; returns the healed (LoRA-merged) model and the record.

    `data_options` are `prepare_calibration_data` options for text data (`BlockRemovalConfig.
    calibration_options()`); token-id data is used as it is. The held-out KL to the teacher is measured before
    and after when `eval_dataset` is given.
    """
    from .config import require_distillation_config
    from .data import PaddingCollator, tokenized_training_dataset
    from .lora import merge_lora
    from .trainer import DistillationTrainer

    require_distillation_config(args)
    options = {**(data_options or {}), "num_samples": None}  # all the data gives, unless capped
    train = tokenized_training_dataset(
        train_dataset, tokenizer, **{**options, "num_samples": num_train_samples}
    )
    held_out = (
        tokenized_training_dataset(eval_dataset, tokenizer, **options) if eval_dataset is not None else None
    )
    student = model
    if lora_config is not None:
        from peft import get_peft_model

        student = get_peft_model(model, lora_config)
    trainer = DistillationTrainer(
        model=student,
        teacher=teacher,
        args=args,
        train_dataset=train,
        eval_dataset=held_out,
        data_collator=PaddingCollator(pad_token_id),
        processing_class=tokenizer,
        callbacks=list(callbacks or []),
    )
    before = trainer.evaluate()["eval_loss"] if held_out is not None else None
    output = trainer.train()
    after = trainer.evaluate()["eval_loss"] if held_out is not None else None
    healed = merge_lora(trainer.model).eval()
    del trainer
    record = {
        **args.distillation_settings(),
        "teacher": teacher if isinstance(teacher, str) else (teacher_name or type(teacher).__name__),
        "lora": _lora_summary(lora_config),
        "train_samples": len(train),
        "train_tokens": int(sum(len(ids) for ids in train["input_ids"])),
        "steps": int(output.global_step),
        "train_loss": float(output.training_loss),
        "eval_kl_before": before,
        "eval_kl_after": after,
    }
    logger.info(
        "Distilled for %d steps (train loss %.4f%s).",
        output.global_step,
        output.training_loss,
        f"; held-out KL {before:.4f} -> {after:.4f}" if held_out is not None else "",
    )
    return healed, record
