"""Held-out quality of a (pruned) model: token-weighted perplexity over real tokens only."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch.nn as nn

    from .estimation.calibration import CalibrationData


def evaluate_perplexity(
    model: nn.Module,
    data: CalibrationData,
    *,
    batch_size: int = 8,
    pad_token_id: int = 0,
    show_progress: bool = False,
) -> float:
    """exp(total next-token NLL / number of predicted tokens) over `data`, ignoring padding.

    Every real token after the first of each sample is predicted once, so the value does not depend on
    `batch_size` or padding.
    """
    import torch
    import torch.nn.functional as F

    from .utils import progress_bar

    device = next(model.parameters()).device
    total_nll, total_tokens = 0.0, 0
    was_training = model.training
    model.eval()
    try:
        with (
            torch.no_grad(),
            progress_bar(
                total=data.num_samples, desc="Perplexity", enabled=show_progress, unit="sample"
            ) as bar,
        ):
            for batch in data.batches(batch_size, pad_token_id):
                labels = batch.pop("labels").to(device)
                logits = model(**{k: v.to(device) for k, v in batch.items()}, use_cache=False).logits
                shift_logits = logits[:, :-1].float()
                shift_labels = labels[:, 1:]
                total_nll += float(
                    F.cross_entropy(
                        shift_logits.transpose(1, 2), shift_labels, ignore_index=-100, reduction="sum"
                    )
                )
                total_tokens += int((shift_labels != -100).sum())
                bar.update(labels.shape[0])
    finally:
        model.train(was_training)
    return math.exp(total_nll / total_tokens)
