"""One check for non-finite numbers, wherever they appear (measured losses, statistics, Fisher estimates), with one
message that says where they came from: a NaN or infinite weight, or activations overflowing a low precision."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from .errors import NonFiniteError

if TYPE_CHECKING:
    import torch.nn as nn


def first_nonfinite_parameter(model: nn.Module) -> str | None:
    """The name of the first floating-point parameter or buffer holding NaN or inf (None if all are finite)."""
    import torch

    for name, tensor in (*model.named_parameters(), *model.named_buffers()):
        if tensor.is_floating_point() and tensor.device.type != "meta" and not torch.isfinite(tensor).all():
            return name
    return None


def nonfinite_cause(model: nn.Module | None) -> str:
    """Where a NaN most likely came from, in a sentence with the fix."""
    if model is None:
        return "Re-estimate it in float32 (`--dtype float32`) if bf16/fp16 overflowed."
    name = first_nonfinite_parameter(model)
    if name is not None:
        return (
            f"The model's own weights hold NaN or inf (first in `{name}`): the checkpoint is broken, so every "
            "loss is; load an intact checkpoint."
        )
    dtype = str(next(model.parameters()).dtype).removeprefix("torch.")
    if dtype in ("float16", "bfloat16"):
        return (
            f"The weights are finite, so the activations overflowed in {dtype}: load the model in float32 "
            "(`torch_dtype=torch.float32`, `--dtype float32`)."
        )
    return (
        f"The weights are finite, yet the activations overflowed in {dtype}: the model's numerics break on this "
        "input; check the calibration data (and any custom modules) on that sample."
    )


def require_finite(values, what: str, *, model: nn.Module | None = None) -> None:
    """Refuse `values` (any array-like) holding NaN or inf.

    Raises:
        NonFiniteError: naming `what`, the first bad entry and the likely cause.
    """
    array = np.asarray(values, dtype=np.float64)
    bad = ~np.isfinite(array)
    if not bad.any():
        return
    if array.ndim == 0:
        found = f"{float(array)}"
    else:
        first = tuple(int(i) for i in np.argwhere(bad)[0])
        found = f"{array[first]} at index {first if len(first) > 1 else first[0]}"
    raise NonFiniteError(f"{what} is not finite ({found}). " + nonfinite_cause(model))
