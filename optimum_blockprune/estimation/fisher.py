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
from .forward import GatedForward, next_token_targets

if TYPE_CHECKING:
    import torch
    import torch.nn as nn

    from ..architectures import ArchitectureAdapter
    from .calibration import CalibrationData

logger = logging.getLogger(__name__)

FISHER_FILE_NAME = "blockprune_fisher.safetensors"
FISHER_FORMAT = "optimum-blockprune-fisher"


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

    batch, length, vocab = logits.shape
    # Shift the labels, not the logits: slicing [batch, seq, vocab] logits costs a copy forward and a zero-filled
    # copy backward, and a transposed cross-entropy runs its softmax over a strided dimension. Both dominated
    # the Fisher pass on large vocabularies.
    targets = next_token_targets(labels)
    flat_logits = logits.reshape(batch * length, vocab)
    flat_logits = flat_logits.to(torch.promote_types(flat_logits.dtype, torch.float32))  # bf16/fp16 -> fp32
    token_loss = F.cross_entropy(flat_logits, targets.reshape(-1), ignore_index=-100, reduction="none")
    mask = (targets != -100).to(token_loss.dtype)
    return (token_loss.view(batch, length) * mask).sum(dim=1) / mask.sum(dim=1).clamp_min(1.0)


def loss_and_logit_gradient(
    logits: torch.Tensor,
    targets: torch.Tensor,
    generator: torch.Generator | None = None,
    workspace: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample token-mean cross-entropy [batch] and its gradient with respect to the logits, in closed form.

    d(sum_s loss_s)/d logits[s, t] = (softmax(logits[s, t]) - onehot(target)) / n_s on real tokens, 0 elsewhere.
    This replaces autograd's log-softmax forward and backward over [batch, seq, vocab] with a few in-place
    passes over one buffer; pass the same flat float32 `workspace` for every batch so that buffer is allocated
    (and page-faulted) once, not per batch. With a `generator`, real targets are first redrawn from the
    model's own distribution (the 'model' Fisher). Returns the same values as autograd through
    `per_sample_token_mean_loss` (tested).
    """
    import torch

    with torch.no_grad():
        x = logits.detach()
        compute_dtype = torch.promote_types(x.dtype, torch.float32)
        size = x.numel()
        if workspace is not None and workspace.dtype == compute_dtype and workspace.numel() >= size:
            probs = workspace[:size].view(x.shape)
        else:
            probs = torch.empty(x.shape, dtype=compute_dtype, device=x.device)
        row_max = x.amax(dim=-1, keepdim=True).to(compute_dtype)
        torch.sub(x, row_max, out=probs)
        probs.exp_()
        row_sum = probs.sum(dim=-1, keepdim=True)
        probs.div_(row_sum)  # softmax
        log_normaliser = (row_max + row_sum.log()).squeeze(-1)
        real = targets != -100
        if generator is not None:
            flat = probs.view(-1, probs.shape[-1])
            draws = (
                torch.multinomial(flat.cpu(), 1, generator=generator).view(targets.shape).to(targets.device)
            )
            targets = torch.where(real, draws, targets)
        safe = targets.clamp_min(0).unsqueeze(-1)
        weights = real.to(compute_dtype)
        counts = weights.sum(dim=1).clamp_min(1.0)
        token_loss = (log_normaliser - x.gather(-1, safe).squeeze(-1).to(compute_dtype)) * weights
        probs.scatter_add_(-1, safe, -weights.unsqueeze(-1))
        probs.mul_((weights / counts.unsqueeze(1)).unsqueeze(-1))
        return token_loss.sum(dim=1) / counts, probs.to(logits.dtype)


def output_probe_gradient(
    hidden: torch.Tensor, attention_mask: torch.Tensor, generator: torch.Generator
) -> torch.Tensor:
    """Gradient of a Gaussian probe loss on final hidden states, for models without an LM head (encoders).

    With l_s = sum_t m_t (h_t - sg(h_t) - eps_t)^2 / (2 sqrt(n_s)) and eps ~ N(0, I), dl_s/dh_t = -m_t eps_t /
    sqrt(n_s), so the per-sample gate gradient a_s = J_s^T (dl_s/dh) satisfies E[a_s a_s^T] = (1/n_s) sum_t
    J_t^T J_t: the Gauss-Newton Hessian of the mean squared change of the output representation, the
    'model' Fisher of a unit-variance Gaussian output.
    """
    import torch

    noise = torch.randn(hidden.shape, generator=generator, dtype=torch.float32).to(hidden.device)
    mask = attention_mask.to(torch.float32)
    scale = mask / mask.sum(dim=1, keepdim=True).clamp_min(1.0).sqrt()
    return (-noise * scale.unsqueeze(-1)).to(hidden.dtype)


# -- the estimate object -----------------------------------------------------------------------------------
@dataclass
class FisherEstimate:
    """Per-sample gate gradients `A` [samples, gates], Hessian `H` (float64), mean gradient `g`, and metadata
    (`metadata["blocks"]` describes each gate: a block, or a sublayer with `granularity="sublayer"`).

    Estimate once, then solve for as many `num_blocks_to_remove` as you like: H does not depend on M.
    """

    gradients: np.ndarray
    hessian: np.ndarray
    mean_gradient: np.ndarray
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def num_gates(self) -> int:
        """Number of variables: blocks, or sublayers with `granularity="sublayer"`."""
        return int(self.hessian.shape[0])

    @property
    def num_samples(self) -> int:
        return int(self.gradients.shape[0])

    def energy_matrix(self, first_order: bool = False) -> np.ndarray:
        return energy_matrix(self.hessian, self.mean_gradient if first_order else None)

    def save(self, path: str | os.PathLike, *, overwrite: bool = False) -> str:
        """Write a `.safetensors` file (arrays) with the metadata as JSON in its header; a directory gets
        `blockprune_fisher.safetensors`. Written atomically; an existing file is replaced only with `overwrite`.

        Raises:
            OutputExistsError: the file exists and `overwrite` is False.
            OutputPathError: its directory is missing or not writable.
        """
        from safetensors.numpy import save_file

        from ..utils import atomic_destination, check_output_file

        path = fisher_file_path(path)
        check_output_file(path, "path", overwrite=overwrite)
        with atomic_destination(path) as tmp:
            save_file(
                {
                    "gradients": np.ascontiguousarray(self.gradients),
                    "hessian": np.ascontiguousarray(self.hessian),
                    "mean_gradient": np.ascontiguousarray(self.mean_gradient),
                },
                tmp,
                metadata={"blockprune": json.dumps(self.metadata), "format": FISHER_FORMAT},
            )
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> FisherEstimate:
        """Read a file written by `save`, checking that its arrays agree (H = AᵀA/m, g = mean A) and are finite.

        Raises:
            FisherFileError: the file is missing, not a safetensors file (truncated, garbage), not written by
                `save`, or its arrays disagree.
        """
        from safetensors import SafetensorError, safe_open

        from ..errors import FisherFileError
        from .identity import check_fisher_arrays

        path = fisher_file_path(path)
        if not os.path.isfile(path):
            raise FisherFileError(
                f"Fisher file {path!r} does not exist; write one with `optimum-blockprune estimate MODEL --dataset "
                "DATA --output FILE` (or `Pruner.estimate(...).save(FILE)`), or fix the path."
            )
        try:
            with safe_open(path, framework="np") as handle:
                header = handle.metadata() or {}
                arrays = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118 (not a dict)
        except (SafetensorError, OSError, ValueError) as error:
            raise FisherFileError(
                f"Fisher file {path!r} is not a readable safetensors file ({error}): it may be truncated or not a "
                "Fisher file at all. Re-estimate it."
            ) from None
        if header.get("format") != FISHER_FORMAT:
            raise FisherFileError(f"{path!r} is not a Fisher file written by `FisherEstimate.save`.")
        try:
            estimate = cls(metadata=json.loads(header["blockprune"]), **arrays)
        except (KeyError, TypeError, json.JSONDecodeError) as error:
            raise FisherFileError(
                f"Fisher file {path!r} lacks part of what `FisherEstimate.save` writes ({error}); re-estimate it."
            ) from None
        check_fisher_arrays(estimate, f"Fisher file {path!r}")
        return estimate


def fisher_file_path(path: str | os.PathLike) -> str:
    """The file a Fisher path means: `path` itself, or `blockprune_fisher.safetensors` inside a directory."""
    path = os.fspath(path)
    return os.path.join(path, FISHER_FILE_NAME) if os.path.isdir(path) else path


class _GateGradients:
    """One batch's per-sample gate gradients [batch, gates] (and per-sample losses) from one backward.

    Keeps one reusable buffer for the [batch, seq, vocab] logit gradient across batches."""

    def __init__(
        self, run: GatedForward, fisher: str, generator: torch.Generator, removed: tuple[int, ...] = ()
    ):
        self.run = run
        self.fisher = fisher
        self.generator = generator
        self.removed = list(removed)
        self.workspace: torch.Tensor | None = None

    def __call__(self, batch: dict[str, torch.Tensor]) -> tuple[np.ndarray, torch.Tensor]:
        import torch

        run, labels = self.run, batch["labels"]
        alpha = torch.ones(labels.shape[0], run.gates.num_gates, device=run.device)
        alpha[:, self.removed] = 0.0  # the expansion point: the model with `removed` gone
        alpha.requires_grad_()
        run.gates.alpha = alpha
        if self.fisher == "output":
            output = run.outputs(batch).last_hidden_state
            output_grad = output_probe_gradient(output, batch["attention_mask"], self.generator)
            losses = torch.zeros(labels.shape[0])  # the probe's distortion is 0 at alpha = 1
        else:
            output = run.logits(batch)
            if self.workspace is None or self.workspace.numel() < output.numel():
                compute_dtype = torch.promote_types(output.dtype, torch.float32)
                self.workspace = torch.empty(output.numel(), dtype=compute_dtype, device=output.device)
            losses, output_grad = loss_and_logit_gradient(
                output,
                next_token_targets(labels),
                self.generator if self.fisher == "model" else None,
                self.workspace,
            )
        output.backward(output_grad)
        return alpha.grad.detach().to(torch.float32).cpu().numpy(), losses


# -- estimation on a model -----------------------------------------------------------------------------------
def estimate_fisher(
    model: nn.Module,
    calibration: CalibrationData,
    *,
    adapter: ArchitectureAdapter | None = None,
    fisher: str = "empirical",
    granularity: str = "block",
    batch_size: int = 8,
    seed: int = 42,
    pad_token_id: int = 0,
    show_progress: bool = True,
    metadata: dict[str, Any] | None = None,
    removed: tuple[int, ...] | list[int] = (),
) -> FisherEstimate:
    """Run the calibration data through `model` with coupling gates and collect per-sample gate gradients.

    Weights stay frozen; each batch costs one forward and one activation-only backward. `fisher` is
    'empirical' (next-token labels), 'model' (labels drawn from the model) or, for encoders, 'output' (a
    Gaussian probe on the final hidden states, see `output_probe_gradient`). `granularity` is 'block' (one
    gate per block) or 'sublayer' (one per attention/Mamba/MLP... branch group). With `removed`, the expansion
    point is the model with those gates at 0 (the others at 1): a partly pruned model, for re-expansion.

    Raises:
        ValueError: `fisher` does not suit the model, or `granularity` is unknown.
    """
    import torch

    from ..architectures import get_adapter
    from .identity import model_identity

    adapter = adapter or get_adapter(model)
    allowed = adapter.task_info.fisher_types
    if fisher not in allowed:
        raise ValueError(
            f"`fisher`={fisher!r} does not suit a `{adapter.model_type}` model ({adapter.task}); use one of "
            f"{allowed} (or 'auto' in `BlockRemovalConfig`)."
        )
    generator = torch.Generator().manual_seed(seed)
    rows: list[np.ndarray] = []
    total_loss, total_tokens = 0.0, 0
    with GatedForward(
        model,
        calibration,
        adapter=adapter,
        granularity=granularity,
        grad=True,
        batch_size=batch_size,
        pad_token_id=pad_token_id,
        show_progress=show_progress,
        desc="Fisher estimation",
    ) as run:
        num_gates, units = run.gates.num_gates, run.gates.units
        hessian_sum = np.zeros((num_gates, num_gates), dtype=np.float64)
        backward = _GateGradients(run, fisher, generator, tuple(int(i) for i in removed))
        for batch in run:
            block_rows, losses = backward(batch)
            rows.append(block_rows)
            hessian_sum += block_rows.astype(np.float64).T @ block_rows.astype(np.float64)
            total_loss += float(losses.sum())
            total_tokens += int(batch["attention_mask"].sum())
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
        "granularity": granularity,
        "blocks": [unit.to_dict() for unit in units],
        **model_identity(model, adapter),
    }
    if len(removed):
        info["expanded_at_removed"] = sorted(int(i) for i in removed)
    info.update(metadata or {})
    logger.info(
        "Estimated the %s Fisher over %d %ss from %d samples (%d tokens); mean calibration loss %.4f.",
        fisher,
        num_gates,
        granularity,
        num_samples,
        total_tokens,
        info["mean_calibration_loss"],
    )
    return FisherEstimate(
        gradients=gradients,
        hessian=hessian_sum / num_samples,
        mean_gradient=gradients.astype(np.float64).mean(axis=0),
        metadata=info,
    )
