"""Fisher estimate of the Hessian of the calibration loss with respect to the coupling gates.

    A[s, i] = d loss_s / d alpha_i,   H = A^T A / m,   g = mean_s A[s]        (arXiv:2602.00161, eq. for E(x))

All rows of A come from one backward per batch: every sample gets its own row of alpha ([batch, N]) and
the summed per-sample losses have gradient row s = d loss_s / d alpha (METHOD.md section 6).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
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
    generator: torch.Generator | Sequence[torch.Generator] | None = None,
    workspace: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample token-mean cross-entropy [batch] and its gradient with respect to the logits, in closed form.

    d(sum_s loss_s)/d logits[s, t] = (softmax(logits[s, t]) - onehot(target)) / n_s on real tokens, 0 elsewhere.
    This replaces autograd's log-softmax forward and backward over [batch, seq, vocab] with a few in-place
    passes over one buffer; pass the same flat float32 `workspace` for every batch so that buffer is allocated
    (and page-faulted) once, not per batch. With a `generator` (or one per sample, `sample_generators`), real
    targets are first redrawn from the model's own distribution (the 'model' Fisher). Returns the same values as autograd through
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
        if isinstance(generator, torch.Generator):
            flat = probs.view(-1, probs.shape[-1])
            draws = (
                torch.multinomial(flat.cpu(), 1, generator=generator).view(targets.shape).to(targets.device)
            )
            targets = torch.where(real, draws, targets)
        elif generator is not None:  # one generator per sample: its draws do not depend on batching
            targets = targets.clone()
            for row, row_generator in enumerate(generator):
                positions = real[row].nonzero(as_tuple=True)[0]
                if len(positions):
                    drawn = torch.multinomial(probs[row, positions].cpu(), 1, generator=row_generator)
                    targets[row, positions] = drawn.view(-1).to(targets.device)
        safe = targets.clamp_min(0).unsqueeze(-1)
        weights = real.to(compute_dtype)
        counts = weights.sum(dim=1).clamp_min(1.0)
        token_loss = (log_normaliser - x.gather(-1, safe).squeeze(-1).to(compute_dtype)) * weights
        probs.scatter_add_(-1, safe, -weights.unsqueeze(-1))
        probs.mul_((weights / counts.unsqueeze(1)).unsqueeze(-1))
        return token_loss.sum(dim=1) / counts, probs.to(logits.dtype)


def output_probe_gradient(
    hidden: torch.Tensor,
    attention_mask: torch.Tensor,
    generator: torch.Generator | Sequence[torch.Generator],
) -> torch.Tensor:
    """Gradient of a Gaussian probe loss on final hidden states, for models without an LM head (encoders).

    With l_s = sum_t m_t (h_t - sg(h_t) - eps_t)^2 / (2 sqrt(n_s)) and eps ~ N(0, I), dl_s/dh_t = -m_t eps_t /
    sqrt(n_s), so the per-sample gate gradient a_s = J_s^T (dl_s/dh) satisfies E[a_s a_s^T] = (1/n_s) sum_t
    J_t^T J_t: the Gauss-Newton Hessian of the mean squared change of the output representation, the
    'model' Fisher of a unit-variance Gaussian output.
    """
    import torch

    if isinstance(generator, torch.Generator):
        noise = torch.randn(hidden.shape, generator=generator, dtype=torch.float32)
    else:  # one generator per sample, drawing for its real tokens only: independent of padding and batching
        noise = torch.zeros(hidden.shape, dtype=torch.float32)
        for row, row_generator in enumerate(generator):
            positions = attention_mask[row].nonzero(as_tuple=True)[0].cpu()
            noise[row, positions] = torch.randn(
                (len(positions), hidden.shape[-1]), generator=row_generator, dtype=torch.float32
            )
    noise = noise.to(hidden.device)
    mask = attention_mask.to(torch.float32)
    scale = mask / mask.sum(dim=1, keepdim=True).clamp_min(1.0).sqrt()
    return (-noise * scale.unsqueeze(-1)).to(hidden.dtype)


def sample_generators(seed: int, indices: Sequence[int]) -> list[torch.Generator]:
    """One generator per sample, seeded from (`seed`, sample index): the 'model' Fisher's labels and the output
    probe's noise then depend on the sample alone, not on its batch, its process or whether the run resumed."""
    import torch

    return [
        torch.Generator().manual_seed(
            int(np.random.SeedSequence([seed, int(i)]).generate_state(1, np.uint64)[0])
        )
        for i in indices
    ]


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

        from ..finite import require_finite
        from ..utils import atomic_destination, check_output_file

        path = fisher_file_path(path)
        check_output_file(path, "path", overwrite=overwrite)
        for name in ("gradients", "hessian", "mean_gradient"):
            require_finite(getattr(self, name), f"The Fisher estimate to save to {path!r} (its {name})")
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

    def __init__(self, run: GatedForward, fisher: str, seed: int, removed: tuple[int, ...] = ()):
        self.run = run
        self.fisher = fisher
        self.seed = seed
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
            generators = sample_generators(self.seed, run.indices)
            output_grad = output_probe_gradient(output, batch["attention_mask"], generators)
            losses = torch.zeros(labels.shape[0])  # the probe's distortion is 0 at alpha = 1
        else:
            output = run.logits(batch)
            if self.workspace is None or self.workspace.numel() < output.numel():
                compute_dtype = torch.promote_types(output.dtype, torch.float32)
                self.workspace = torch.empty(output.numel(), dtype=compute_dtype, device=output.device)
            losses, output_grad = loss_and_logit_gradient(
                output,
                next_token_targets(labels),
                sample_generators(self.seed, run.indices) if self.fisher == "model" else None,
                self.workspace,
            )
        output.backward(output_grad)
        return alpha.grad.detach().to(torch.float32).cpu().numpy(), losses.detach().double().cpu().numpy()


# -- estimation on a model -----------------------------------------------------------------------------------
def estimate_fisher(
    model: nn.Module,
    calibration: CalibrationData,
    *,
    adapter: ArchitectureAdapter | None = None,
    fisher: str = "empirical",
    granularity: str = "block",
    batch_size: int = 8,
    max_tokens_per_batch: int | None = None,
    gradient_checkpointing: bool = False,
    seed: int = 42,
    pad_token_id: int = 0,
    show_progress: bool = True,
    metadata: dict[str, Any] | None = None,
    removed: tuple[int, ...] | list[int] = (),
    checkpoint_dir: str | os.PathLike | None = None,
    checkpoint_every: int = 64,
) -> FisherEstimate:
    """Run the calibration data through `model` with coupling gates and collect per-sample gate gradients.

    Weights stay frozen; each batch costs one forward and one activation-only backward. `fisher` is
    'empirical' (next-token labels), 'model' (labels drawn from the model) or, for encoders, 'output' (a
    Gaussian probe on the final hidden states, see `output_probe_gradient`). `granularity` is 'block' (one
    gate per block) or 'sublayer' (one per attention/Mamba/MLP... branch group). With `removed`, the expansion
    point is the model with those gates at 0 (the others at 1): a partly pruned model, for re-expansion.

    Scale: `max_tokens_per_batch` batches length-sorted samples under a token budget instead of `batch_size`
    at a time (`batching.batch_plan`); `gradient_checkpointing` recomputes block activations in the backward.
    Under several processes (`accelerate launch`, see `parallel`) each runs its share of the batches and all
    get every row, in sample order. With `checkpoint_dir`, the rows done so far are written there every
    `checkpoint_every` samples and a rerun resumes from them (`checkpoint.FisherCheckpoint`). None of these
    change any sample's row: its labels (or probe noise) are drawn from a generator seeded by (`seed`, its index).

    Raises:
        ValueError: `fisher` does not suit the model, or `granularity` is unknown.
        CheckpointError: `checkpoint_dir` holds rows of another pass (other data, model or Fisher settings).
    """
    from ..architectures import get_adapter
    from .checkpoint import FisherCheckpoint, RowStore
    from .identity import model_identity
    from .parallel import current_processes, gather_rows

    adapter = adapter or get_adapter(model)
    allowed = adapter.task_info.fisher_types
    if fisher not in allowed:
        raise ValueError(
            f"`fisher`={fisher!r} does not suit a `{adapter.model_type}` model ({adapter.task}); use one of "
            f"{allowed} (or 'auto' in `BlockRemovalConfig`)."
        )
    identity = model_identity(model, adapter)
    removed = tuple(sorted(int(i) for i in removed))
    processes = current_processes()
    store, checkpoint = RowStore(), None
    if checkpoint_dir is not None:
        key = {
            "calibration_hash": calibration.fingerprint,
            "num_samples": calibration.num_samples,
            "fisher": fisher,
            "granularity": granularity,
            "seed": seed,
            "removed": list(removed),
            **identity,
        }
        checkpoint = FisherCheckpoint(
            checkpoint_dir,
            key,
            every=checkpoint_every,
            num_gates=len(adapter.units(model, granularity)),
            process_index=processes.process_index,
        )
        store = checkpoint.load()
        if store.rows:
            logger.info(
                "Resuming the Fisher pass from %s: %d of %d samples already done.",
                checkpoint_dir,
                len(store.rows),
                calibration.num_samples,
            )
    with GatedForward(
        model,
        calibration,
        adapter=adapter,
        granularity=granularity,
        grad=True,
        batch_size=batch_size,
        max_tokens_per_batch=max_tokens_per_batch,
        gradient_checkpointing=gradient_checkpointing,
        pad_token_id=pad_token_id,
        show_progress=show_progress,
        desc="Fisher estimation",
        shard=True,
        skip=store.rows.keys(),
    ) as run:
        num_gates, units = run.gates.num_gates, run.gates.units
        backward = _GateGradients(run, fisher, seed, removed)
        for batch in run:
            block_rows, losses = backward(batch)
            store.add(run.indices, block_rows, losses, batch["attention_mask"].sum(dim=1).cpu().numpy())
            if checkpoint is not None:
                checkpoint.update(store, len(run.indices))
        if checkpoint is not None:
            checkpoint.update(store, 0, final=True)
    arrays = store.arrays(num_gates)
    gathered, present = gather_rows(list(arrays.pop("indices")), arrays, calibration.num_samples, processes)
    gradients = gathered["rows"]
    if not present.all():  # a bug, not a user error: every sample belongs to one batch of one process
        raise RuntimeError(f"Fisher rows missing for samples {np.flatnonzero(~present)[:10].tolist()}.")
    num_samples = gradients.shape[0]
    rows64 = gradients.astype(np.float64)
    info = {
        "fisher": fisher,
        "num_samples": num_samples,
        "num_tokens": int(gathered["tokens"].sum()),
        "calibration_hash": calibration.fingerprint,
        "calibration_source": calibration.source,
        "mean_calibration_loss": float(gathered["losses"].sum()) / num_samples,
        "library_version": __version__,
        "granularity": granularity,
        "blocks": [unit.to_dict() for unit in units],
        **identity,
    }
    if removed:
        info["expanded_at_removed"] = list(removed)
    info.update(metadata or {})
    from ..finite import require_finite

    # checked where every Fisher is made (`Pruner.estimate`, a ranking's own pass, the callback)
    require_finite(gradients, "The Fisher estimate's gradients", model=model)
    logger.info(
        "Estimated the %s Fisher over %d %ss from %d samples (%d tokens); mean calibration loss %.4f.",
        fisher,
        num_gates,
        granularity,
        num_samples,
        info["num_tokens"],
        info["mean_calibration_loss"],
    )
    return FisherEstimate(
        gradients=gradients,
        hessian=rows64.T @ rows64 / num_samples,
        mean_gradient=rows64.mean(axis=0),
        metadata=info,
    )
