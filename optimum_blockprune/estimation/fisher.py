"""Fisher estimate of the Hessian of the calibration loss with respect to the coupling gates.

    A[s, i] = d loss_s / d alpha_i,   H = A^T A / m,   g = mean_s A[s]        (arXiv:2602.00161, eq. for E(x))

All rows of A come from one backward per batch: every sample gets its own row of alpha ([batch, N]) and
the summed per-sample losses have gradient row s = d loss_s / d alpha (METHOD.md section 6).
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from ..version import __version__

if TYPE_CHECKING:
    import torch
    import torch.nn as nn

    from ..architectures import ArchitectureAdapter
    from .calibration import CalibrationData

logger = logging.getLogger(__name__)

FISHER_FILE_NAME = "blockprune_fisher.safetensors"


# -- pure math -------------------------------------------------------------------------------------------
def hessian_from_gradients(gradients: np.ndarray) -> np.ndarray:
    """Empirical Fisher H = A^T A / m in float64 (bf16/fp16 squares underflow)."""
    a = np.asarray(gradients, dtype=np.float64)
    return a.T @ a / a.shape[0]


def energy_matrix(hessian: np.ndarray, mean_gradient: np.ndarray | None = None) -> np.ndarray:
    """The QUBO matrix Q with E(x) = x^T Q x = x^T H x - 2 g^T x (the linear term sits on the diagonal, x_i^2 = x_i).

    E is twice the second-order Taylor estimate of the loss increase L(1 - x) - L(1); without `mean_gradient`
    it is the paper's energy x^T H x.
    """
    q = np.array(hessian, dtype=np.float64, copy=True)
    if mean_gradient is not None:
        q[np.diag_indices_from(q)] -= 2.0 * np.asarray(mean_gradient, dtype=np.float64)
    return q


def per_sample_token_mean_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Next-token cross-entropy averaged over each sample's real (label != -100) tokens: shape [batch]."""
    import torch
    import torch.nn.functional as F

    shift_logits = logits[:, :-1, :]
    shift_logits = shift_logits.to(torch.promote_types(shift_logits.dtype, torch.float32))  # bf16/fp16 -> fp32
    shift_labels = labels[:, 1:]
    token_loss = F.cross_entropy(
        shift_logits.transpose(1, 2), shift_labels, ignore_index=-100, reduction="none"
    )  # [batch, seq - 1]
    mask = (shift_labels != -100).to(token_loss.dtype)
    return (token_loss * mask).sum(dim=1) / mask.sum(dim=1).clamp_min(1.0)


def sample_model_labels(logits: torch.Tensor, labels: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Replace every real next-token label with a draw from the model's own distribution (the 'model' Fisher)."""
    import torch

    probs = torch.softmax(logits[:, :-1, :].detach().float(), dim=-1)
    flat = probs.reshape(-1, probs.shape[-1])
    draws = torch.multinomial(flat.cpu(), 1, generator=generator).view(probs.shape[:2]).to(labels.device)
    sampled = labels.clone()
    sampled[:, 1:] = torch.where(labels[:, 1:] != -100, draws, labels[:, 1:])
    return sampled


# -- the estimate object -----------------------------------------------------------------------------------
@dataclass
class FisherEstimate:
    """Per-sample gate gradients `A` [samples, blocks], Hessian `H` (float64), mean gradient `g`, and metadata.

    Estimate once, then solve for as many `num_blocks_to_remove` as you like: H does not depend on M.
    """

    gradients: np.ndarray
    hessian: np.ndarray
    mean_gradient: np.ndarray
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def num_blocks(self) -> int:
        return int(self.hessian.shape[0])

    @property
    def num_samples(self) -> int:
        return int(self.gradients.shape[0])

    def energy_matrix(self, first_order: bool = False) -> np.ndarray:
        return energy_matrix(self.hessian, self.mean_gradient if first_order else None)

    def save(self, path: str | os.PathLike) -> str:
        """Write a `.safetensors` file (arrays) with the metadata as JSON in its header; a directory gets
        `blockprune_fisher.safetensors`. Written atomically."""
        from safetensors.numpy import save_file

        path = os.fspath(path)
        if os.path.isdir(path):
            path = os.path.join(path, FISHER_FILE_NAME)
        tmp = path + ".tmp"
        save_file(
            {
                "gradients": np.ascontiguousarray(self.gradients),
                "hessian": np.ascontiguousarray(self.hessian),
                "mean_gradient": np.ascontiguousarray(self.mean_gradient),
            },
            tmp,
            metadata={"blockprune": json.dumps(self.metadata), "format": "optimum-blockprune-fisher"},
        )
        os.replace(tmp, path)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> FisherEstimate:
        from safetensors import safe_open

        path = os.fspath(path)
        if os.path.isdir(path):
            path = os.path.join(path, FISHER_FILE_NAME)
        with safe_open(path, framework="np") as handle:
            header = handle.metadata() or {}
            arrays = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118 (not a dict)
        if header.get("format") != "optimum-blockprune-fisher":
            raise ValueError(f"{path!r} is not a Fisher file written by `FisherEstimate.save`.")
        return cls(metadata=json.loads(header["blockprune"]), **arrays)


# -- estimation on a model -----------------------------------------------------------------------------------
def estimate_fisher(
    model: nn.Module,
    calibration: CalibrationData,
    *,
    adapter: ArchitectureAdapter | None = None,
    fisher: str = "empirical",
    batch_size: int = 8,
    seed: int = 42,
    pad_token_id: int = 0,
    show_progress: bool = True,
    metadata: dict[str, Any] | None = None,
) -> FisherEstimate:
    """Run the calibration data through `model` with coupling gates and collect per-sample gate gradients.

    Weights stay frozen; each batch costs one forward and one activation-only backward.

    Raises:
        ValueError: `fisher` is not 'empirical' or 'model'.
    """
    import torch

    from ..architectures import get_adapter
    from ..utils import progress_bar
    from .gates import CouplingGates

    if fisher not in ("empirical", "model"):
        raise ValueError(f"`fisher` must be 'empirical' or 'model', got {fisher!r}.")
    adapter = adapter or get_adapter(model)
    device = next(model.parameters()).device
    generator = torch.Generator().manual_seed(seed)
    was_training = model.training
    model.eval()
    rows: list[np.ndarray] = []
    hessian_sum = None
    total_loss, total_tokens = 0.0, 0
    try:
        with CouplingGates(model, adapter) as gates, progress_bar(
            total=calibration.num_samples, desc="Fisher estimation", enabled=show_progress, unit="sample"
        ) as bar:
            num_blocks = gates.num_blocks
            hessian_sum = np.zeros((num_blocks, num_blocks), dtype=np.float64)
            for batch in calibration.batches(batch_size, pad_token_id):
                batch = {k: v.to(device) for k, v in batch.items()}
                labels = batch.pop("labels")
                alpha = torch.ones(labels.shape[0], num_blocks, device=device, requires_grad=True)
                gates.alpha = alpha
                logits = model(**batch, use_cache=False).logits
                if fisher == "model":
                    labels = sample_model_labels(logits, labels, generator)
                losses = per_sample_token_mean_loss(logits, labels)
                losses.sum().backward()
                block_rows = alpha.grad.detach().to(torch.float32).cpu().numpy()
                rows.append(block_rows)
                hessian_sum += block_rows.astype(np.float64).T @ block_rows.astype(np.float64)
                total_loss += float(losses.detach().sum())
                total_tokens += int(batch["attention_mask"].sum())
                bar.update(labels.shape[0])
                del logits, losses, alpha
    finally:
        model.train(was_training)
    gradients = np.concatenate(rows, axis=0)
    num_samples = gradients.shape[0]
    info = {
        "fisher": fisher,
        "num_samples": num_samples,
        "num_tokens": total_tokens,
        "calibration_hash": calibration.fingerprint,
        "calibration_source": calibration.source,
        "mean_calibration_loss": total_loss / num_samples,
        "library_version": __version__,
        "blocks": [b.to_dict() for b in adapter.blocks(model)],
        "model_type": adapter.model_type,
    }
    info.update(metadata or {})
    logger.info(
        "Estimated the %s Fisher over %d blocks from %d samples (%d tokens); mean calibration loss %.4f.",
        fisher, num_blocks, num_samples, total_tokens, info["mean_calibration_loss"],
    )
    return FisherEstimate(
        gradients=gradients,
        hessian=hessian_sum / num_samples,
        mean_gradient=gradients.astype(np.float64).mean(axis=0),
        metadata=info,
    )
