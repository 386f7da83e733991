"""Which model an estimate belongs to: a cheap fingerprint of the weights, and the check that a Fisher file fits.

A Fisher estimated on one model says nothing about another with the same number of blocks, yet it would rank,
card and save under the wrong name without a word. The identity travels in the file's metadata and is checked
wherever a given estimate meets a model.
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import FisherFileError

if TYPE_CHECKING:
    import torch
    import torch.nn as nn

    from ..architectures import ArchitectureAdapter
    from .fisher import FisherEstimate

_VALUES_PER_TENSOR = 1024  # strided samples: the fingerprint of a 70B model costs as little as a 135M one's


def weights_fingerprint(model: nn.Module) -> str:
    """sha256 (first 16 hex digits) over every parameter's name, shape, dtype and `_VALUES_PER_TENSOR` evenly
    strided values. Tensors on the `meta` device (offloaded by accelerate) contribute their name and shape."""

    digest = hashlib.sha256()
    for name, parameter in model.named_parameters():
        digest.update(f"{name}:{tuple(parameter.shape)}:{parameter.dtype}".encode())
        if parameter.device.type == "meta" or parameter.numel() == 0:
            continue
        values = _strided_values(parameter.detach())
        if values is not None:
            digest.update(values.numpy().tobytes())
    return digest.hexdigest()[:16]


def _strided_values(tensor: torch.Tensor) -> torch.Tensor | None:
    """`_VALUES_PER_TENSOR` evenly strided values as float32 on the CPU. Quantized weight tensors (torchao,
    quanto) may not support views: their de-quantised values, or None when they have no `dequantize`."""
    import torch

    try:
        flat = tensor.reshape(-1)
        step = max(1, flat.numel() // _VALUES_PER_TENSOR)
        return flat[::step][:_VALUES_PER_TENSOR].to(device="cpu", dtype=torch.float32)
    except (NotImplementedError, RuntimeError, TypeError):
        dequantize = getattr(tensor, "dequantize", None)
        return _strided_values(dequantize()) if callable(dequantize) else None


def model_identity(model: nn.Module, adapter: ArchitectureAdapter) -> dict[str, Any]:
    """What a Fisher file records about the model it was estimated on."""
    config = model.config
    architectures = getattr(config, "architectures", None) or [type(model).__name__]
    return {
        "model_type": adapter.model_type,
        "architecture": architectures[0],
        "num_blocks": len(adapter.blocks(model)),
        "revision": getattr(config, "_commit_hash", None),
        "weights_fingerprint": weights_fingerprint(model),
        "quantization": quantization_method(model),
    }


def quantization_method(model: nn.Module) -> str | None:
    """The transformers quantizer the weights were loaded with ('quanto', 'torchao', 'bitsandbytes' ...), or None."""
    config = getattr(getattr(model, "hf_quantizer", None), "quantization_config", None)
    if config is None:
        config = getattr(model.config, "quantization_config", None)
    method = (
        getattr(config, "quant_method", None) if not isinstance(config, dict) else config.get("quant_method")
    )
    return None if method is None else str(getattr(method, "value", method))


def check_fisher_identity(fisher: FisherEstimate, model: nn.Module, adapter: ArchitectureAdapter) -> None:
    """Refuse an estimate made on another model: another architecture, block count or weights fingerprint.

    Raises:
        FisherFileError: naming what differs and how to proceed.
    """
    recorded = fisher.metadata
    current = model_identity(model, adapter)
    source = recorded.get("model") or "another model"
    for key, what in (
        ("model_type", "model type"),
        ("architecture", "architecture"),
        ("num_blocks", "number of blocks"),
        ("weights_fingerprint", "weights fingerprint"),
    ):
        if key in recorded and recorded[key] != current[key]:
            raise FisherFileError(
                f"The Fisher estimate was made on {source!r} ({what} {recorded[key]!r}), not on this model ({what} "
                f"{current[key]!r}): its energy says nothing about these blocks. Estimate it on this model "
                "(`Pruner.estimate` / `optimum-blockprune estimate`), or, if you know it fits (for example a "
                "quantized copy of these weights), pass `verify_fisher_model=False` (`--no-verify-fisher-model`)."
            )


def check_fisher_arrays(fisher: FisherEstimate, where: str) -> None:
    """The stored H and g must be what the stored rows give (H = AᵀA/m, g = mean A), and all finite.

    Raises:
        FisherFileError: a file whose arrays disagree (edited or corrupted) or hold NaN/inf.
    """
    a = np.asarray(fisher.gradients, dtype=np.float64)
    if (
        a.ndim != 2
        or fisher.hessian.shape != (a.shape[1], a.shape[1])
        or fisher.mean_gradient.shape != a.shape[1:]
    ):
        raise FisherFileError(
            f"{where}: the arrays do not fit together (gradients {a.shape}, hessian {fisher.hessian.shape}, "
            f"mean_gradient {fisher.mean_gradient.shape}); re-estimate it."
        )
    if not (np.all(np.isfinite(a)) and np.all(np.isfinite(fisher.hessian))):
        raise FisherFileError(
            f"{where} holds NaN or inf values; re-estimate it (in float32 if bf16 overflowed)."
        )
    hessian = a.T @ a / max(a.shape[0], 1)
    scale = max(float(np.abs(hessian).max()), 1e-300)
    if not (
        np.allclose(fisher.hessian, hessian, rtol=1e-5, atol=1e-7 * scale)
        and np.allclose(fisher.mean_gradient, a.mean(axis=0), rtol=1e-5, atol=1e-7 * np.sqrt(scale))
    ):
        raise FisherFileError(
            f"{where}: the stored Hessian or mean gradient is not what its per-sample gradients give (H = AᵀA/m, "
            "g = mean A); the file was edited or corrupted. Re-estimate it."
        )
