"""Calibration data: load, render, tokenise, shuffle, truncate or pack, batch, and fingerprint."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import random
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..errors import CalibrationDataError

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)

_FILE_BUILDERS = {".txt": "text", ".json": "json", ".jsonl": "json", ".csv": "csv", ".parquet": "parquet"}
_STREAM_SHUFFLE_BUFFER = 1000  # records an `IterableDataset` is shuffled within (it cannot be shuffled whole)


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

    def summary(self) -> dict[str, Any]:
        """What a card and a ranking record about the data: source, sample and token counts, fingerprint."""
        return {
            "source": self.source,
            "num_samples": self.num_samples,
            "num_tokens": self.num_tokens,
            "fingerprint": self.fingerprint,
        }

    def subset(self, indices: Sequence[int]) -> CalibrationData:
        """The samples at `indices`, in that order (a search's low-fidelity measurements use a few of them)."""
        picked = [int(i) for i in indices]
        return CalibrationData(
            [self.samples[i] for i in picked], f"{self.source} [{len(picked)} of {self.num_samples}]"
        )

    def check_vocabulary(self, vocab_size: int) -> None:
        """Refuse token ids outside `0..vocab_size - 1` (they would index past the embedding) before any forward.

        Raises:
            CalibrationDataError: naming the sample, the id and the vocabulary size.
        """
        for index, sample in enumerate(self.samples):
            low, high = min(sample), max(sample)
            if low < 0 or high >= vocab_size:
                bad = low if low < 0 else high
                raise CalibrationDataError(
                    f"Calibration sample {index} holds token id {bad}, outside the model's vocabulary (0.."
                    f"{vocab_size - 1}). Token ids must come from this model's tokenizer; re-tokenise the data "
                    "or pass texts with the model's tokenizer."
                )

    def batches(self, batch_size: int, pad_token_id: int) -> Iterator[dict[str, torch.Tensor]]:
        """Right-padded batches with `attention_mask`, and `labels` set to -100 on padding."""
        for start in range(0, len(self.samples), batch_size):
            yield pad_token_batch(self.samples[start : start + batch_size], pad_token_id)


def padding_id(tokenizer: Any) -> int:
    """The id padding positions get in calibration batches: the tokenizer's pad, else its EOS, else 0 (padding is
    masked, so any valid id works)."""
    for name in ("pad_token_id", "eos_token_id"):
        candidate = getattr(tokenizer, name, None)
        if candidate is not None:
            return int(candidate)
    return 0


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


# -- reading every supported input into records ------------------------------------------------------------------
# A record is a text (str), a chat (a list of {"role", "content"} dicts), or token ids (a list of ints).


def _is_token_ids(value: Any) -> bool:
    if hasattr(value, "ndim") and hasattr(value, "tolist"):  # a tensor or an array
        return value.ndim == 1
    return isinstance(value, (list, tuple)) and len(value) > 0 and all(_is_int(v) for v in value)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) or type(value).__name__.startswith("int")


def _rows_from_encoding(encoding: Mapping[str, Any]) -> list[list[int]]:
    """The samples of a tokenizer's output (`{"input_ids": [[...], ...], "attention_mask": ...}`), padding cut."""
    ids = encoding["input_ids"]
    ids = ids.tolist() if hasattr(ids, "tolist") else list(ids)
    if ids and not isinstance(ids[0], (list, tuple)):
        ids = [ids]
    mask = encoding.get("attention_mask")
    if mask is None:
        return [list(row) for row in ids]
    mask = mask.tolist() if hasattr(mask, "tolist") else list(mask)
    if mask and not isinstance(mask[0], (list, tuple)):
        mask = [mask]
    return [[t for t, keep in zip(row, keep_row) if keep] for row, keep_row in zip(ids, mask)]


def _record(item: Any, options: dict[str, Any]) -> Any:
    """One input item as a record: a {"input_ids"} / text-column / "messages" dict is unwrapped."""
    if isinstance(item, Mapping):
        if "input_ids" in item:
            (row,) = _rows_from_encoding(item)
            return row
        use_chat = options["apply_chat_template"]
        column = options["text_column"]
        if "messages" in item and (use_chat or (use_chat is None and column not in item)):
            return item["messages"]
        if column in item:
            return item[column]
        raise CalibrationDataError(
            f"A calibration record has keys {sorted(item)}; expected `input_ids`, the `text_column` "
            f"{column!r}, or `messages`. Set `text_column` to the key holding raw text."
        )
    if _is_token_ids(item):
        return item.tolist() if hasattr(item, "tolist") else list(item)
    return item


def _records_from_dataset(dataset, options: dict[str, Any]) -> list[Any]:
    columns = dataset.column_names or []
    if "input_ids" in columns:  # already tokenised (its text columns, if any, are ignored)
        if "attention_mask" in columns:
            return [_record(row, options) for row in dataset.select_columns(["input_ids", "attention_mask"])]
        return list(dataset["input_ids"])
    use_chat = options["apply_chat_template"]
    if use_chat is None:
        use_chat = "messages" in columns and options["text_column"] not in columns
    column = "messages" if use_chat else options["text_column"]
    if column not in columns:
        raise CalibrationDataError(
            f"The calibration dataset has no `{column}` column (columns: {columns}). Set `text_column` to the "
            "column holding raw text, provide a `messages` column with `apply_chat_template=True`, or an "
            "`input_ids` column of token ids."
        )
    return list(dataset[column])


def _load_file(path: str, options: dict[str, Any]) -> list[Any]:
    import datasets

    builder = _FILE_BUILDERS.get(os.path.splitext(path)[1])
    if builder is None:
        raise CalibrationDataError(
            f"Calibration file {path!r} has an unsupported extension; use one of {', '.join(_FILE_BUILDERS)}."
        )
    if os.path.getsize(path) == 0:
        raise CalibrationDataError(f"Calibration file {path!r} is empty; give it at least one text.")
    if builder == "text":
        return text_file_documents(path, options.get("tokenizer"), options.get("max_length"))
    if path.endswith(".jsonl"):
        _check_json_lines(path)
    try:
        with _quiet_datasets():
            dataset = datasets.load_dataset(builder, data_files=[path], split="train")
    except Exception as error:  # datasets wraps parse errors in several types; keep the cause attached
        cause = error.__cause__ or error
        if "corresponds to no data" in str(cause):  # datasets' words for a file with a header and no rows
            raise CalibrationDataError(
                f"Calibration file {path!r} holds no records; give it at least one text."
            ) from error
        raise CalibrationDataError(
            f"Could not read calibration file {path!r} as {builder} ({type(cause).__name__}: {cause}). Check that "
            + (
                'every line is one JSON object such as {"text": "..."}'
                if path.endswith(".jsonl")
                else f"it is valid {builder}"
            )
            + "."
        ) from error
    if len(dataset) == 0:
        raise CalibrationDataError(f"Calibration file {path!r} holds no records; give it at least one text.")
    return _records_from_dataset(dataset, options)


def _check_json_lines(path: str) -> None:
    """Name the first line of a `.jsonl` file that is not one JSON object (datasets' error names no line)."""
    with open(path, encoding="utf-8", errors="replace") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise CalibrationDataError(
                    f"Calibration file {path!r}, line {number}, is not valid JSON ({error.msg}); every line is one "
                    'JSON object such as {"text": "..."}.'
                ) from None
            if not isinstance(record, dict):
                raise CalibrationDataError(
                    f"Calibration file {path!r}, line {number}, is a JSON {type(record).__name__}; every line is "
                    'one JSON object such as {"text": "..."}.'
                )


@contextlib.contextmanager
def _quiet_datasets():
    """datasets logs a failed parse with its traceback on stderr before raising (the raised error says it all),
    and draws a bar for building a local file's split."""
    import datasets

    datasets_logger = logging.getLogger("datasets")
    level, bars_were_on = datasets_logger.level, not datasets.are_progress_bars_disabled()
    datasets_logger.setLevel(logging.CRITICAL + 1)
    datasets.disable_progress_bars()  # "Generating train split" for a local file: instant, and noise in logs
    try:
        yield
    finally:
        datasets_logger.setLevel(level)
        if bars_were_on:
            datasets.enable_progress_bars()


def split_documents(text: str) -> list[str]:
    """The documents of a plain-text file: paragraphs separated by blank lines, or, in a file without blank lines,
    one document per line (pure)."""
    paragraphs = [p.strip() for p in re.split(r"\n[ \t]*\n", text) if p.strip()]
    if len(paragraphs) == 1:
        paragraphs = [line.strip() for line in paragraphs[0].splitlines() if line.strip()]
    return paragraphs


def join_short_documents(documents: Sequence[str], lengths: Sequence[int], max_length: int) -> list[str]:
    """Consecutive documents joined (by a blank line) while their token counts fit in `max_length`, so a file of
    short paragraphs gives full samples and none of its text is cut off; a longer document stays alone (pure)."""
    joined: list[str] = []
    current: list[str] = []
    used = 0
    for document, length in zip(documents, lengths):
        if current and used + length > max_length:
            joined.append("\n\n".join(current))
            current, used = [], 0
        current.append(document)
        used += length
    if current:
        joined.append("\n\n".join(current))
    return joined


def text_file_documents(path: str, tokenizer: Any = None, max_length: int | None = None) -> list[str]:
    """A `.txt` file as calibration records: its documents (`split_documents`), short ones joined in file order
    up to `max_length` tokens when a tokenizer is given (`join_short_documents`)."""
    try:
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
    except UnicodeDecodeError as error:
        raise CalibrationDataError(
            f"Calibration file {path!r} is not UTF-8 text ({error}); convert it to UTF-8 or pass the texts as a list."
        ) from None
    documents = split_documents(text)
    if not documents:
        raise CalibrationDataError(
            f"Calibration file {path!r} holds only whitespace; give it at least one text."
        )
    if tokenizer is None or max_length is None:
        return documents
    lengths = [
        len(tokenizer(d, add_special_tokens=False)["input_ids"]) + 1 for d in documents
    ]  # +1: separator
    return join_short_documents(documents, lengths, max_length - 1)  # -1: the BOS the tokenizer adds


def _load_dataset_repository(name: str, options: dict[str, Any]) -> list[Any]:
    import datasets

    split, subset = options["dataset_split"], options["dataset_config_name"]
    logger.info("Loading calibration dataset %r (split %r).", name, split)
    try:
        dataset = datasets.load_dataset(name, subset, split=split)
    except Exception as error:  # datasets raises many types; keep the cause attached
        raise CalibrationDataError(
            f"Could not load calibration dataset {name!r} (split {split!r}): {error}. Pass a local "
            "file or directory, a list of texts or token ids, a `datasets.Dataset`, or a Hub dataset name "
            "reachable from here."
        ) from error
    return _records_from_dataset(dataset, options)


def check_calibration_source(data: Any, argument: str = "calibration_dataset") -> None:
    """Fail at once, before any model is loaded or any Hub request is made, on a path that cannot be calibration
    data: a local-looking path that does not exist, or a file with an unsupported extension.

    Raises:
        CalibrationDataError: naming the argument, the path and the fix.
    """
    if not isinstance(data, (str, os.PathLike)):
        return
    path = os.fspath(data)
    if os.path.isfile(path):
        if os.path.splitext(path)[1] not in _FILE_BUILDERS:
            raise CalibrationDataError(
                f"`{argument}`={path!r} has an unsupported extension; use one of {', '.join(_FILE_BUILDERS)}."
            )
        return
    from ..utils import looks_like_local_path

    local = os.path.splitext(path)[1] in _FILE_BUILDERS or looks_like_local_path(path)
    if not os.path.exists(path) and local:
        raise CalibrationDataError(
            f"`{argument}`={path!r} does not exist (looked in {os.getcwd()!r}); fix the path. A Hub dataset is "
            "named 'name' or 'owner/name'."
        )


def _records(data: Any, options: dict[str, Any]) -> tuple[Iterable[Any], str]:
    """Any supported input as an iterable of records (shuffled with the seed where asked) and a description."""
    shuffle, seed = options["shuffle"], options["seed"]

    def shuffled(records: list[Any]) -> list[Any]:
        if shuffle:
            random.Random(seed).shuffle(records)
        return records

    if isinstance(data, (str, os.PathLike)):
        check_calibration_source(data)
        path = os.fspath(data)
        if os.path.isfile(path):
            return shuffled(_load_file(path, options)), f"file:{os.path.basename(path)}"
        # A dataset repository: a Hub name, or a local directory laid out like one (same loader either way).
        label = f"local:{os.path.basename(os.path.normpath(path))}" if os.path.isdir(path) else f"hub:{path}"
        return shuffled(_load_dataset_repository(path, options)), label
    datasets = _datasets_module()
    if datasets is not None and isinstance(data, datasets.Dataset):
        label = f"dataset:{data.info.dataset_name or 'in-memory'}"
        return shuffled(_records_from_dataset(data, options)), label
    if datasets is not None and isinstance(data, datasets.IterableDataset):
        stream = data.shuffle(seed=seed, buffer_size=_STREAM_SHUFFLE_BUFFER) if shuffle else data
        return (_record(item, options) for item in stream), "iterable-dataset"
    if isinstance(data, Mapping) and "input_ids" in data:  # a tokenizer's batch output
        return shuffled(_rows_from_encoding(data)), "token ids"
    if hasattr(data, "ndim") and hasattr(data, "tolist") and data.ndim == 2:  # a [samples, tokens] tensor
        return shuffled(data.tolist()), "token ids"
    if isinstance(data, Sequence) and not isinstance(data, (bytes, bytearray)):
        if len(data) == 0:
            raise CalibrationDataError("`calibration_dataset` is an empty list; pass at least one text.")
        records = [_record(item, options) for item in data]
        return shuffled(records), _describe_records(records)
    raise CalibrationDataError(
        f"`calibration_dataset` of type {type(data).__name__} is not supported. Pass a `datasets.Dataset` or "
        f"`IterableDataset` (with a `{options['text_column']}`, `messages` or `input_ids` column), a list of "
        "strings, chat message lists, token-id lists/tensors or {'input_ids': ...} records, a tokenizer's output, "
        "`CalibrationData`, a local file (.txt, .json, .jsonl, .csv, .parquet), a dataset directory, or a Hub "
        "dataset name."
    )


def _describe_records(records: Sequence[Any]) -> str:
    """How a card names an in-memory list: 'token ids' or 'a list of 64 texts' (chats, records)."""
    if all(_is_token_ids(r) for r in records):
        return "token ids"
    if all(isinstance(r, str) for r in records):
        what = "texts"
    elif all(isinstance(r, list) for r in records):
        what = "chats"
    else:
        what = "records"
    return f"a list of {len(records)} {what}"


def _datasets_module():
    try:
        import datasets
    except ImportError:  # pragma: no cover - datasets is a core dependency
        return None
    return datasets


def _token_ids(record: Any, tokenizer, options: dict[str, Any]) -> list[int]:
    """Token ids of one record: ids as they are, a text tokenised, a chat rendered with its template first."""
    if _is_token_ids(record):
        return list(record)
    is_chat = isinstance(record, list) and all(isinstance(m, dict) and "role" in m for m in record)
    use_chat = options["apply_chat_template"]
    if not (isinstance(record, str) and not use_chat) and not (is_chat and use_chat is not False):
        raise CalibrationDataError(
            f"Cannot use calibration record of type {type(record).__name__} with `apply_chat_template`={use_chat}: "
            "records must be strings, lists of {'role', 'content'} messages when the chat template is applied, "
            "or token ids."
        )
    if tokenizer is None:
        raise CalibrationDataError(
            "A tokenizer is needed to prepare text calibration data; pass `tokenizer=` (or `Pruner(model, "
            "tokenizer)`), or give the calibration data as token ids (`input_ids`)."
        )
    if is_chat:
        if getattr(tokenizer, "chat_template", None) is None:
            raise CalibrationDataError(
                "The calibration data holds chat messages but the tokenizer has no `chat_template`. Pass plain "
                "texts instead, or a tokenizer with a chat template."
            )
        # The rendered template already contains the BOS text; don't add special tokens twice.
        text = tokenizer.apply_chat_template(record, tokenize=False)
        return tokenizer(text, add_special_tokens=False)["input_ids"]
    return tokenizer(record, add_special_tokens=True)["input_ids"]


def prepare_calibration_data(
    data: Any,
    tokenizer: Any = None,
    *,
    num_samples: int = 128,
    max_length: int = 512,
    text_column: str = "text",
    apply_chat_template: bool | None = None,
    pack_samples: bool = False,
    shuffle: bool = True,
    seed: int = 42,
    dataset_split: str = "train",
    dataset_config_name: str | None = None,
    vocab_size: int | None = None,
) -> CalibrationData:
    """Load, shuffle with `seed`, render (chat template where asked), tokenise and truncate (or pack) samples.

    `data` may be texts, chat message lists, token-id lists or 1-D tensors, `{"input_ids": ...}` records, a
    tokenizer's batch output, a `datasets.Dataset` / `IterableDataset` with a `text_column`, `messages` or
    `input_ids` column, a local file (.txt, .json, .jsonl, .csv, .parquet; `.jsonl` records may hold
    `input_ids`), a dataset directory, a Hub dataset name, or `CalibrationData` (returned as it is). Token ids
    need no tokenizer. `BlockRemovalConfig.calibration_options()` gives these options from a config.

    Returns `num_samples` samples (`-1`: all the data gives) of at most `max_length` tokens each (fewer samples
    if the data is smaller, with a warning).

    Raises:
        CalibrationDataError: the data cannot be read, has no usable column, needs a tokenizer that is missing,
            holds token ids outside `vocab_size`, or yields no sample.
    """
    if isinstance(data, CalibrationData):
        if vocab_size is not None:
            data.check_vocabulary(vocab_size)
        return data
    options = {
        "text_column": text_column,
        "apply_chat_template": apply_chat_template,
        "shuffle": shuffle,
        "seed": seed,
        "dataset_split": dataset_split,
        "dataset_config_name": dataset_config_name,
        "tokenizer": tokenizer,
        "max_length": max_length,
    }
    wanted = float("inf") if num_samples < 0 else num_samples
    records, source = _records(data, options)
    samples: list[list[int]] = []
    if pack_samples:
        eos = getattr(tokenizer, "eos_token_id", None)
        separator = [eos] if eos is not None else []
        stream: list[int] = []
        for record in records:
            stream.extend(_token_ids(record, tokenizer, options) + separator)
            while len(stream) >= max_length and len(samples) < wanted:
                samples.append(stream[:max_length])
                stream = stream[max_length:]
            if len(samples) >= wanted:
                break
        if len(samples) < wanted and len(stream) > 1:
            samples.append(stream)
    else:
        for record in records:
            ids = _token_ids(record, tokenizer, options)[:max_length]
            if len(ids) >= 2:  # one token has no next-token target
                samples.append([int(t) for t in ids])
            if len(samples) >= wanted:
                break
    if not samples:
        raise CalibrationDataError(
            f"The calibration data from {source} produced no sample with at least 2 tokens."
        )
    if len(samples) < wanted != float("inf"):
        logger.warning("Only %d calibration samples are available (asked for %d).", len(samples), wanted)
    prepared = CalibrationData(samples=samples, source=source)
    if vocab_size is not None:
        prepared.check_vocabulary(vocab_size)
    return prepared
