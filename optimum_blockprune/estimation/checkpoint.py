"""Resumable Fisher accumulation: the rows done so far, on disk, so a killed run resumes where it stopped.

A checkpoint directory holds one safetensors file per process (`fisher_rows.process-<i>.safetensors`): the sample
indices it finished, their gate-gradient rows, losses and token counts, and in its header the `key`, everything
the rows depend on (calibration fingerprint, model identity, Fisher type, granularity, seed, expansion point).
Every write is atomic (the previous file stays whole until the new one replaces it), so a process killed at any
moment leaves a readable checkpoint. Resuming reads every process's file, whatever the number of processes was,
and skips the samples they hold; a file whose key differs (other data, another model, another Fisher) is refused.
Per-sample rows do not depend on batching or sharding (`batching`), so the resumed A is the uninterrupted one.
"""

from __future__ import annotations

import glob
import json
import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np

CHECKPOINT_FORMAT = "optimum-blockprune-fisher-checkpoint"
_PATTERN = "fisher_rows.process-*.safetensors"


@dataclass
class RowStore:
    """Per-sample results by sample index: gate-gradient rows, the loss and the token count of each sample."""

    rows: dict[int, np.ndarray] = field(default_factory=dict)
    losses: dict[int, float] = field(default_factory=dict)
    tokens: dict[int, int] = field(default_factory=dict)

    def add(self, indices: list[int], rows: np.ndarray, losses: np.ndarray, tokens: np.ndarray) -> None:
        for k, index in enumerate(indices):
            self.rows[index] = rows[k]
            self.losses[index] = float(losses[k])
            self.tokens[index] = int(tokens[k])

    def arrays(self, num_gates: int) -> dict[str, np.ndarray]:
        """The stored samples in index order; `num_gates` shapes the rows when there are none yet."""
        indices = sorted(self.rows)
        return {
            "indices": np.asarray(indices, dtype=np.int64),
            "rows": np.stack([self.rows[i] for i in indices])
            if indices
            else np.zeros((0, num_gates), np.float32),
            "losses": np.asarray([self.losses[i] for i in indices], dtype=np.float64),
            "tokens": np.asarray([self.tokens[i] for i in indices], dtype=np.int64),
        }


class FisherCheckpoint:
    """The checkpoint directory of one Fisher pass (see the module docstring).

    Args:
        directory: created if missing.
        key: what the rows depend on; a checkpoint with another key is refused.
        every: write after at least this many new samples (and at the end).
        num_gates: the width of a row (the file of a process that has finished nothing yet still has it).
        process_index: which process's file this process writes.
    """

    def __init__(
        self,
        directory: str | os.PathLike,
        key: dict[str, Any],
        *,
        every: int,
        num_gates: int,
        process_index: int = 0,
    ):
        if every < 1:
            from ..errors import ConfigurationError

            raise ConfigurationError(f"`checkpoint_every` must be at least 1 sample, got {every}.")
        self.directory = os.fspath(directory)
        self.key = json.loads(json.dumps(key, sort_keys=True))  # normalised, as it reads back
        self.every = every
        self.num_gates = num_gates
        self.path = os.path.join(self.directory, f"fisher_rows.process-{process_index}.safetensors")
        self._unsaved = 0

    def load(self) -> RowStore:
        """Every process's finished rows in this directory (empty when there are none).

        Raises:
            CheckpointError: a file is unreadable, or was written for other data, another model or another Fisher.
        """
        from safetensors import SafetensorError, safe_open

        from ..errors import CheckpointError

        store = RowStore()
        for path in sorted(glob.glob(os.path.join(self.directory, _PATTERN))):
            try:
                with safe_open(path, framework="np") as handle:
                    header = handle.metadata() or {}
                    arrays = {name: handle.get_tensor(name) for name in handle.keys()}  # noqa: SIM118
            except (SafetensorError, OSError, ValueError) as error:
                raise CheckpointError(
                    f"Checkpoint file {path!r} is not readable ({error}); delete it to recompute its samples."
                ) from None
            if header.get("format") != CHECKPOINT_FORMAT:
                raise CheckpointError(f"{path!r} is not a Fisher checkpoint written by optimum-blockprune.")
            saved = json.loads(header.get("key", "{}"))
            if saved != self.key:
                differ = sorted(k for k in set(saved) | set(self.key) if saved.get(k) != self.key.get(k))
                raise CheckpointError(
                    f"`checkpoint_dir`={self.directory!r} holds rows of another Fisher pass (they differ in "
                    f"{', '.join(differ)}: e.g. other calibration data or another model). Use an empty directory "
                    "for this run, or delete that one to start over."
                )
            store.add([int(i) for i in arrays["indices"]], arrays["rows"], arrays["losses"], arrays["tokens"])
        return store

    def rows_on_disk(self) -> int:
        """How many distinct samples the directory's files hold, whatever their key (for progress reports)."""
        from safetensors import safe_open

        done: set[int] = set()
        for path in glob.glob(os.path.join(self.directory, _PATTERN)):
            with safe_open(path, framework="np") as handle:
                done.update(int(i) for i in handle.get_tensor("indices"))
        return len(done)

    def update(self, store: RowStore, new_samples: int, *, final: bool = False) -> None:
        """Count `new_samples` finished samples; write this process's rows once `every` have accumulated."""
        self._unsaved += new_samples
        if self._unsaved >= self.every or (final and self._unsaved):
            self.save(store)

    def save(self, store: RowStore) -> None:
        from safetensors.numpy import save_file

        from ..utils import atomic_destination

        os.makedirs(self.directory, exist_ok=True)
        with atomic_destination(self.path) as tmp:
            save_file(
                store.arrays(self.num_gates),
                tmp,
                metadata={"format": CHECKPOINT_FORMAT, "key": json.dumps(self.key, sort_keys=True)},
            )
        self._unsaved = 0
