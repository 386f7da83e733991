"""Residual-stream statistics at block boundaries, the inputs of the similarity baselines.

Boundary b is the residual stream entering block b; boundary N is what leaves the last block, before the
model's final norm (unlike the last entry of `output_hidden_states`). Statistics are means over real tokens:
padding never counts.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch.nn as nn

    from ..architectures import ArchitectureAdapter
    from .calibration import CalibrationData

_TOKEN_CHUNK = 256  # tokens per pairwise-angle chunk: bounds the [chunk, N+1, N+1] buffer


@dataclass(frozen=True)
class ResidualStatistics:
    """Token-averaged similarities between the residual stream at every pair of block boundaries.

    `cosine[a, b]`: mean cos(h_a, h_b); `angular[a, b]`: mean arccos(cos(h_a, h_b)) / pi (Gromov et al.'s angular
    distance, in [0, 1]); `norm_ratio[i]`: mean ||h_{i+1}|| / ||h_i||, what block i does to the stream's norm.
    """

    cosine: np.ndarray
    angular: np.ndarray
    norm_ratio: np.ndarray
    num_tokens: int

    @property
    def num_blocks(self) -> int:
        return int(self.norm_ratio.shape[0])

    @property
    def block_influence(self) -> np.ndarray:
        """ShortGPT's Block Influence BI_i = 1 - mean cos(h_i, h_{i+1}) of every block."""
        return 1.0 - np.diagonal(self.cosine, offset=1)


def collect_residual_statistics(
    model: nn.Module,
    data: CalibrationData,
    *,
    adapter: ArchitectureAdapter | None = None,
    removed: Sequence[int] = (),
    batch_size: int = 8,
    max_tokens_per_batch: int | None = None,
    pad_token_id: int = 0,
    show_progress: bool = False,
) -> ResidualStatistics:
    """Run `data` through `model` once and accumulate `ResidualStatistics` over its real tokens.

    Blocks in `removed` are skipped through their coupling gates (alpha = 0), which is how the iterative
    baselines recompute statistics after each removal without changing the model.
    """
    import torch

    from ..architectures import get_adapter
    from .forward import GatedForward
    from .parallel import sum_over_processes
    from .residual_cache import BlockInputs

    adapter = adapter or get_adapter(model)
    num_boundaries = len(adapter.block_list(model)) + 1
    cosine = np.zeros((num_boundaries, num_boundaries))
    angular = np.zeros((num_boundaries, num_boundaries))
    norm_ratio = np.zeros(num_boundaries - 1)
    num_tokens = 0
    with GatedForward(
        model,
        data,
        adapter=adapter,
        batch_size=batch_size,
        max_tokens_per_batch=max_tokens_per_batch,
        pad_token_id=pad_token_id,
        show_progress=show_progress,
        desc="Residual statistics",
        shard=True,
    ) as run:
        if removed:
            run.set_removed(removed)
        for batch in run:
            captured = BlockInputs(run, batch, head=False).inputs  # the stream only: no head
            real = batch["attention_mask"].bool()
            # [tokens, boundaries, hidden] over real tokens only, in float32
            stream = torch.stack([h[real].float() for h in captured], dim=1)
            norms = stream.norm(dim=-1).clamp_min(1e-12)
            units = stream / norms.unsqueeze(-1)
            for start in range(0, units.shape[0], _TOKEN_CHUNK):
                chunk = units[start : start + _TOKEN_CHUNK]
                cos = torch.einsum("tad,tbd->tab", chunk, chunk).clamp(-1.0, 1.0)
                cosine += cos.sum(dim=0).double().cpu().numpy()
                angular += (torch.arccos(cos) / torch.pi).sum(dim=0).double().cpu().numpy()
            norm_ratio += (norms[:, 1:] / norms[:, :-1]).sum(dim=0).double().cpu().numpy()
            num_tokens += int(real.sum())
        if run.processes.num_processes > 1:  # token sums: each process holds its batches' share
            cosine, angular, norm_ratio = (
                sum_over_processes(a, run.processes) for a in (cosine, angular, norm_ratio)
            )
            num_tokens = int(sum_over_processes(np.array([num_tokens], dtype=np.float64), run.processes)[0])
    if num_tokens == 0:
        raise ValueError("The calibration data has no real tokens.")
    return ResidualStatistics(
        cosine=cosine / num_tokens,
        angular=angular / num_tokens,
        norm_ratio=norm_ratio / num_tokens,
        num_tokens=num_tokens,
    )
