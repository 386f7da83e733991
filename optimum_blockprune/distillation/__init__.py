"""Healing a pruned model: the KL-distillation loss (pure), its `Trainer`, and the in-training pruning callback.

Imported lazily, like the package: `transformers.Trainer` loads only when a name that needs it is used.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

_EXPORTS = {
    "distillation_loss": "loss",
    "DistillationConfig": "config",
    "DistillationTrainer": "trainer",
    "BlockPruningCallback": "callback",
    "PaddingCollator": "data",
    "tokenized_training_dataset": "data",
    "merge_lora": "lora",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(__all__)


if TYPE_CHECKING:
    from .callback import BlockPruningCallback
    from .config import DistillationConfig
    from .data import PaddingCollator, tokenized_training_dataset
    from .lora import merge_lora
    from .loss import distillation_loss
    from .trainer import DistillationTrainer
