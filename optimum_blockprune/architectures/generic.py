"""The opt-in fallback for an unregistered decoder: one `nn.ModuleList` of blocks under `get_decoder()`, whose
residual branches carry a conventional name. It is a guess about the model's structure, so it is only built when
the user asks for it (`allow_generic=True`) and it warns; register a proper adapter once it is verified."""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING

from ..errors import BlockPruneWarning, UnsupportedArchitectureError
from .base import ArchitectureAdapter

if TYPE_CHECKING:
    import torch.nn as nn

# Conventional names of the modules whose output a block adds to its residual stream, with their kinds.
_ATTENTION_NAMES = ("self_attn", "attn", "attention", "self_attention")
_MLP_NAMES = ("mlp", "feed_forward", "ffn", "block_sparse_moe")
# Config fields that hold layer *indices* (remapped, not sliced).
_INDEX_FIELDS = ("mlp_only_layers", "attn_layer_indices", "full_attn_idxs")


def generic_adapter(model: nn.Module, model_type: str) -> ArchitectureAdapter:
    """Guess an adapter for `model` and warn that it is a guess.

    Raises:
        UnsupportedArchitectureError: the model has no single block list or no recognisable branches.
    """
    import torch.nn as nn

    decoder = ArchitectureAdapter(model_type).decoder(model)
    lists = [(name, child) for name, child in decoder.named_children() if isinstance(child, nn.ModuleList)]
    if len(lists) != 1:
        raise UnsupportedArchitectureError(
            f"The generic fallback needs exactly one `nn.ModuleList` of blocks on `{type(decoder).__name__}`, found "
            f"{[name for name, _ in lists]}. Register an adapter for `model_type`={model_type!r} instead."
        )
    layers_attribute, blocks = lists[0]
    children = dict(blocks[0].named_children())
    attention = [name for name in _ATTENTION_NAMES if name in children]
    mlp = [name for name in _MLP_NAMES if name in children]
    if len(attention) != 1 or len(mlp) != 1:
        raise UnsupportedArchitectureError(
            f"The generic fallback cannot tell which modules of `{type(blocks[0]).__name__}` write to the residual "
            f"stream (children: {sorted(children)}). Register an adapter for `model_type`={model_type!r} with "
            "`register_architecture(ArchitectureAdapter(model_type=..., branches=(...)))`."
        )
    config = model.config.get_text_config()
    num_layers = len(blocks)
    values = config.to_dict()
    index_fields = tuple(name for name in _INDEX_FIELDS if isinstance(values.get(name), list))
    per_layer = tuple(
        name
        for name, value in values.items()
        if isinstance(value, list) and len(value) == num_layers and name not in index_fields
    )
    adapter = ArchitectureAdapter(
        model_type,
        layers_attribute=layers_attribute,
        branches=(attention[0], mlp[0]),
        per_layer_config_fields=per_layer,
        index_config_fields=index_fields,
        notes="generic fallback (guessed)",
    )
    warnings.warn(
        f"`model_type`={model_type!r} is not registered; using a guessed adapter (blocks at `{layers_attribute}`, "
        f"gates on `{attention[0]}` and `{mlp[0]}`, per-layer fields {list(per_layer)}). Check that the pruned "
        "model matches the gated original before trusting it, then register a proper adapter.",
        BlockPruneWarning,
        stacklevel=3,
    )
    return adapter
