"""Calibration data: load, render, tokenise, shuffle, truncate or pack, batch, and fingerprint."""

from __future__ import annotations

import hashlib
import logging
import os
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..errors import CalibrationDataError

if TYPE_CHECKING:
    import torch

    from ..config import BlockRemovalConfig

logger = logging.getLogger(__name__)

_FILE_BUILDERS = {".txt": "text", ".json": "json", ".jsonl": "json", ".csv": "csv", ".parquet": "parquet"}


@dataclass
class CalibrationData:
    """Tokenised calibration samples (unpadded) and a fingerprint of exactly what the model will see."""

    samples: list[list[int]]
    source: str

    @property
    def num_samples(self) -> int:
        return len(self.samples)

    @property
    def num_tokens(self) -> int:
        return sum(len(s) for s in self.samples)

    @property
    def fingerprint(self) -> str:
        digest = hashlib.sha256()
        for sample in self.samples:
            digest.update(len(sample).to_bytes(4, "little"))
            digest.update(b"".join(int(t).to_bytes(4, "little", signed=True) for t in sample))
        return digest.hexdigest()

    def batches(self, batch_size: int, pad_token_id: int) -> Iterator[dict[str, torch.Tensor]]:
        """Right-padded batches with `attention_mask`, and `labels` set to -100 on padding."""
        for start in range(0, len(self.samples), batch_size):
            yield pad_token_batch(self.samples[start : start + batch_size], pad_token_id)


def pad_token_batch(samples: Sequence[Sequence[int]], pad_token_id: int) -> dict[str, torch.Tensor]:
    """Right-pad token lists into `input_ids`, `attention_mask` and `labels` (-100 on padding only, so a real
    token equal to the pad id, such as an EOS used as padding, keeps its label)."""
    import torch

    width = max(len(s) for s in samples)
    input_ids = torch.full((len(samples), width), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(samples), width), dtype=torch.long)
    for row, sample in enumerate(samples):
        input_ids[row, : len(sample)] = torch.as_tensor(sample, dtype=torch.long)
        attention_mask[row, : len(sample)] = 1
    labels = input_ids.masked_fill(attention_mask == 0, -100)
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


def _load_records(data: Any, config: BlockRemovalConfig) -> tuple[list[Any], str]:
    """Turn any supported input into a list of records (str, list of messages, or dict) and a description."""
    if isinstance(data, (str, os.PathLike)):
        path = os.fspath(data)
        if os.path.isfile(path):
            return _load_file(path, config), f"file:{os.path.basename(path)}"
        # A dataset repository: a Hub name, or a local directory laid out like one (same loader either way).
        label = f"local:{os.path.basename(os.path.normpath(path))}" if os.path.isdir(path) else f"hub:{path}"
        return _load_dataset_repository(path, config), label
    if isinstance(data, Sequence) and not isinstance(data, (bytes, bytearray)):
        if len(data) == 0:
            raise CalibrationDataError("`calibration_dataset` is an empty list; pass at least one text.")
        return list(data), "list"
    try:
        import datasets
    except ImportError:  # pragma: no cover - datasets is a core dependency
        datasets = None
    if datasets is not None and isinstance(data, datasets.Dataset):
        return _records_from_dataset(data, config), f"dataset:{data.info.dataset_name or 'in-memory'}"
    raise CalibrationDataError(
        f"`calibration_dataset` of type {type(data).__name__} is not supported. Pass a `datasets.Dataset` (with a "
        f"`{config.text_column}` or `messages` column), a list of strings or chat message lists, a local file "
        "(.txt, .json, .jsonl, .csv, .parquet), a dataset directory, or a Hub dataset name."
    )


def _records_from_dataset(dataset, config: BlockRemovalConfig) -> list[Any]:
    columns = dataset.column_names
    use_chat = config.apply_chat_template
    if use_chat is None:
        use_chat = "messages" in columns and config.text_column not in columns
    column = "messages" if use_chat else config.text_column
    if column not in columns:
        raise CalibrationDataError(
            f"The calibration dataset has no `{column}` column (columns: {columns}). Set `text_column` to the "
            "column holding raw text, or provide a `messages` column with `apply_chat_template=True`."
        )
    return list(dataset[column])


def _load_file(path: str, config: BlockRemovalConfig) -> list[Any]:
    import datasets

    builder = _FILE_BUILDERS.get(os.path.splitext(path)[1])
    if builder is None:
        raise CalibrationDataError(
            f"Calibration file {path!r} has an unsupported extension; use one of {', '.join(_FILE_BUILDERS)}."
        )
    kwargs = {"sample_by": "document"} if builder == "text" else {}  # a .txt file is one document
    dataset = datasets.load_dataset(builder, data_files=[path], split="train", **kwargs)
    return _records_from_dataset(dataset, config)


def _load_dataset_repository(name: str, config: BlockRemovalConfig) -> list[Any]:
    import datasets

    logger.info("Loading calibration dataset %r (split %r).", name, config.dataset_split)
    try:
        dataset = datasets.load_dataset(name, config.dataset_config_name, split=config.dataset_split)
    except Exception as error:  # datasets raises many types; keep the cause attached
        raise CalibrationDataError(
            f"Could not load calibration dataset {name!r} (split {config.dataset_split!r}): {error}. Pass a local "
            "file or directory, a list of texts, a `datasets.Dataset`, or a Hub dataset name reachable from here."
        ) from error
    return _records_from_dataset(dataset, config)


def _render(record: Any, tokenizer, use_chat: bool | None) -> str:
    is_chat = isinstance(record, list) and all(isinstance(m, dict) and "role" in m for m in record)
    if isinstance(record, str) and not use_chat:
        return record
    if is_chat and use_chat is not False:
        if getattr(tokenizer, "chat_template", None) is None:
            raise CalibrationDataError(
                "The calibration data holds chat messages but the tokenizer has no `chat_template`. Pass plain texts "
                "instead, or a tokenizer with a chat template."
            )
        return tokenizer.apply_chat_template(record, tokenize=False)
    raise CalibrationDataError(
        f"Cannot use calibration record of type {type(record).__name__} with `apply_chat_template`={use_chat}: "
        "records must be strings, or lists of {'role', 'content'} messages when the chat template is applied."
    )


def prepare_calibration_data(
    data: Any, tokenizer, config: BlockRemovalConfig, *, num_samples: int | None = None
) -> CalibrationData:
    """Load, render (chat template where asked), shuffle with `config.seed`, tokenise and truncate or pack.

    Returns `config.num_calibration_samples` samples (or `num_samples`; `-1` for all the data gives) of at most
    `config.max_length` tokens each (fewer samples if the data is smaller, with a warning).

    Raises:
        CalibrationDataError: the data cannot be read, has no usable column, or yields no tokens.
    """
    if tokenizer is None:
        raise CalibrationDataError(
            "A tokenizer is needed to prepare text calibration data; pass `tokenizer=`."
        )
    wanted = config.num_calibration_samples if num_samples is None else num_samples
    if wanted < 0:
        wanted = float("inf")
    records, source = _load_records(data, config)
    if config.shuffle:
        random.Random(config.seed).shuffle(records)
    texts = [_render(r, tokenizer, config.apply_chat_template) for r in records]
    # Chat templates already contain the BOS text; don't add special tokens twice.
    add_special = not any(isinstance(r, list) for r in records)
    samples: list[list[int]] = []
    if config.pack_samples:
        separator = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
        stream: list[int] = []
        for text in texts:
            stream.extend(tokenizer(text, add_special_tokens=add_special)["input_ids"] + separator)
            while len(stream) >= config.max_length and len(samples) < wanted:
                samples.append(stream[: config.max_length])
                stream = stream[config.max_length :]
            if len(samples) >= wanted:
                break
        if len(samples) < wanted and len(stream) > 1:
            samples.append(stream)
    else:
        for text in texts:
            ids = tokenizer(
                text, add_special_tokens=add_special, truncation=True, max_length=config.max_length
            )["input_ids"]
            if len(ids) >= 2:  # one token has no next-token target
                samples.append(ids)
            if len(samples) >= wanted:
                break
    if not samples:
        raise CalibrationDataError(
            f"The calibration data from {source} produced no sample with at least 2 tokens."
        )
    if len(samples) < wanted != float("inf"):
        logger.warning("Only %d calibration samples are available (asked for %d).", len(samples), wanted)
    return CalibrationData(samples=samples, source=source)
