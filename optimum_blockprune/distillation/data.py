"""Training data for distillation: text in, padded causal-LM batches out."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..estimation.calibration import pad_token_batch, prepare_calibration_data

if TYPE_CHECKING:
    import datasets
    import torch


@dataclass
class PaddingCollator:
    """`data_collator` for token-id features: right-pads `input_ids`, adds `attention_mask` and `labels`.

    Unlike `DataCollatorForLanguageModeling`, labels are masked by position, not by value, so a model whose
    pad token is its EOS still learns to emit EOS.
    """

    pad_token_id: int

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        return pad_token_batch([feature["input_ids"] for feature in features], self.pad_token_id)


def tokenized_training_dataset(data: Any, tokenizer: Any = None, **options: Any) -> datasets.Dataset:
    """A `datasets.Dataset` with an `input_ids` column, prepared like calibration data (`options`: those of
    `prepare_calibration_data`, e.g. `**config.calibration_options(num_samples=-1)`); `num_samples` caps it
    (default, or None: all the data gives). Token-id data (an `input_ids` column, id lists, records) needs no
    tokenizer.

    A `datasets.Dataset` that already has `input_ids` is returned unchanged.
    """
    import datasets

    if isinstance(data, datasets.Dataset) and "input_ids" in data.column_names:
        return data
    if options.get("num_samples") is None:
        options["num_samples"] = -1
    prepared = prepare_calibration_data(data, tokenizer, **options)
    return datasets.Dataset.from_dict({"input_ids": prepared.samples})
