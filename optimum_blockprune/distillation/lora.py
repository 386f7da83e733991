"""LoRA on the pruned student, through `peft`, merged back into a plain model before saving."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch.nn as nn


def merge_lora(model: nn.Module) -> nn.Module:
    """Fold LoRA weights into the base layers and return the plain `transformers` model (unchanged if `model`
    is not a `peft` model), so `save_pretrained` writes a standard checkpoint with no adapter files."""
    merge_and_unload = getattr(model, "merge_and_unload", None)
    return merge_and_unload() if callable(merge_and_unload) else model
