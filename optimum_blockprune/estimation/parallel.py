"""Data parallel passes over calibration data, on the process group accelerate (or torchrun) set up.

Under `accelerate launch` (or an `Accelerator` / `PartialState` in the user's script) each process runs every
`num_processes`-th batch (`batching.shard_plan`), then the per-sample results are combined so every process holds
all of them, in sample order, exactly as one process would have computed them:

- the Fisher's gate-gradient rows: gathered (`gather_rows`);
- measured removals' per-sample loss sums and token counts: summed (`sum_over_processes`), which is exact
  because each sample's entries are non-zero on one process only.

Every process then solves the same QUBO on the same numbers and reaches the same ranking, so nothing else needs
to be coordinated. Without a process group all of this is the identity.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Processes:
    """This process's place among the ones sharing a pass."""

    process_index: int = 0
    num_processes: int = 1

    @property
    def is_main(self) -> bool:
        return self.process_index == 0


def current_processes() -> Processes:
    """The running process group: torch.distributed's when initialised; when launched by `accelerate launch` /
    `torchrun` (WORLD_SIZE > 1) but not yet initialised, accelerate's `PartialState` initialises it (gloo on CPU,
    nccl on CUDA); otherwise one process."""
    import torch.distributed as dist

    if not dist.is_available():
        return Processes()
    if not dist.is_initialized() and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        from accelerate import PartialState

        PartialState()  # initialises the process group from the launcher's environment
    if dist.is_initialized():
        # torch.distributed's ranks, not PartialState's: on CPU under torchrun accelerate reports one process
        # although it has initialised the group
        return Processes(dist.get_rank(), dist.get_world_size())
    return Processes()


def gather_rows(
    indices: list[int], columns: dict[str, np.ndarray], num_samples: int, processes: Processes
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Every process's per-sample arrays (`columns[name][k]` belongs to sample `indices[k]`) put in sample order,
    in one collective: returns each as a [num_samples, ...] array, and a boolean mask of the samples some process
    computed."""
    parts = [(list(indices), columns)]
    if processes.num_processes > 1:
        import torch.distributed as dist

        parts = [None] * processes.num_processes
        dist.all_gather_object(parts, (list(indices), {k: np.asarray(v) for k, v in columns.items()}))
    ordered = {
        name: np.zeros((num_samples, *array.shape[1:]), dtype=array.dtype) for name, array in columns.items()
    }
    present = np.zeros(num_samples, dtype=bool)
    for part_indices, part_columns in parts:
        if part_indices:
            for name, array in part_columns.items():
                ordered[name][part_indices] = array
            present[part_indices] = True
    return ordered, present


def sum_over_processes(array: np.ndarray, processes: Processes) -> np.ndarray:
    """The element-wise sum of `array` over the processes (every process gets it), in float64."""
    if processes.num_processes == 1:
        return array
    import torch
    import torch.distributed as dist

    tensor = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float64))
    if dist.get_backend() == "nccl":  # nccl reduces device tensors only
        tensor = tensor.to(torch.device("cuda", torch.cuda.current_device()))
    dist.all_reduce(tensor)
    return tensor.cpu().numpy()
