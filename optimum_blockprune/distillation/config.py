"""`DistillationConfig`: `transformers.TrainingArguments` plus only the distillation fields."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from transformers import TrainingArguments

from ..errors import ConfigurationError


@dataclass
class DistillationConfig(TrainingArguments):
    """Training arguments for `DistillationTrainer`: every `TrainingArguments` field, plus the few below.

    The defaults are the paper's (arXiv:2602.00161): temperature 1 and KL only. Its retraining used a cosine
    schedule with lr 2e-5 (Llama) or 1e-4 (Qwen); set those with the usual `TrainingArguments` fields.

    Example:

    ```python
    >>> from optimum_blockprune.distillation import DistillationConfig
    >>> args = DistillationConfig(output_dir="healed", temperature=1.0, alpha=1.0, lr_scheduler_type="cosine")
    ```
    """

    temperature: float = field(
        default=1.0,
        metadata={
            "help": "Softmax temperature T of teacher and student; the KL is multiplied by T^2. Paper: 1."
        },
    )
    alpha: float = field(
        default=1.0,
        metadata={
            "help": "Weight of the KL term in [0, 1]; 1 - alpha weights the student's next-token cross-entropy on "
            "`labels`. Paper: 1 (KL only)."
        },
    )
    teacher_device: str | None = field(
        default=None,
        metadata={
            "help": "Run the teacher on this device (e.g. 'cuda:1', 'cpu') instead of the student's; its logits are "
            "moved to the student's device. None: the student's device (or wherever `device_map` placed it)."
        },
    )
    teacher_model_init_kwargs: dict[str, Any] | None = field(
        default=None,
        metadata={
            "help": "Keyword arguments for `AutoModelForCausalLM.from_pretrained` when the teacher is given as a "
            "name or path, e.g. `{'quantization_config': ..., 'dtype': 'bfloat16'}` to load it quantized."
        },
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.temperature > 0:
            raise ValueError(
                f"`temperature`={self.temperature!r} must be > 0 (1.0 is the paper's; larger values soften both "
                "distributions)."
            )
        if not 0.0 <= self.alpha <= 1.0:
            raise ValueError(
                f"`alpha`={self.alpha!r} must be in [0, 1]: 1 is KL only (the paper), 0 is cross-entropy only."
            )
        if self.teacher_model_init_kwargs is not None and not isinstance(
            self.teacher_model_init_kwargs, dict
        ):
            raise ValueError(
                f"`teacher_model_init_kwargs` must be a dict of `from_pretrained` arguments, got "
                f"{type(self.teacher_model_init_kwargs).__name__}."
            )

    def distillation_settings(self) -> dict[str, Any]:
        """The fields the model card and `blockprune_config.json` record about the retraining."""
        return {
            "temperature": self.temperature,
            "alpha": self.alpha,
            "learning_rate": self.learning_rate,
            "lr_scheduler_type": str(getattr(self.lr_scheduler_type, "value", self.lr_scheduler_type)),
            "num_train_epochs": self.num_train_epochs,
            "max_steps": self.max_steps,
            "per_device_train_batch_size": self.per_device_train_batch_size,
            "gradient_accumulation_steps": self.gradient_accumulation_steps,
            "weight_decay": self.weight_decay,
            "warmup_steps": self.warmup_steps,
            "bf16": self.bf16,
            "seed": self.seed,
        }


def require_distillation_config(args: Any) -> DistillationConfig:
    """Refuse plain `TrainingArguments` (or anything else) where the distillation fields are needed."""
    if not isinstance(args, DistillationConfig):
        raise ConfigurationError(
            f"`args` must be a `DistillationConfig` (TrainingArguments plus the distillation fields), got "
            f"{type(args).__name__}. Build one with `DistillationConfig(output_dir=..., temperature=..., alpha=...)`."
        )
    return args
