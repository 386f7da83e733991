"""The one registry of architectures, keyed by `config.model_type`."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..errors import UnsupportedArchitectureError
from .base import ArchitectureAdapter

if TYPE_CHECKING:
    import torch.nn as nn

_REGISTRY: dict[str, ArchitectureAdapter] = {}


def register_architecture(adapter: ArchitectureAdapter, *, overwrite: bool = False) -> ArchitectureAdapter:
    """Add an adapter to the registry. Refuses to replace an existing entry unless `overwrite=True`.

    Example:

    ```python
    >>> from optimum_blockprune import ArchitectureAdapter, register_architecture
    >>> register_architecture(ArchitectureAdapter("my_decoder", branches=("attn", "ffn")))  # doctest: +SKIP
    ```
    """
    if not isinstance(adapter, ArchitectureAdapter):
        raise TypeError(f"`adapter` must be an `ArchitectureAdapter`, got {type(adapter).__name__}.")
    if adapter.model_type in _REGISTRY and not overwrite:
        raise ValueError(
            f"An adapter for `model_type`={adapter.model_type!r} is already registered. "
            "Pass `overwrite=True` to replace it."
        )
    _REGISTRY[adapter.model_type] = adapter
    return adapter


def supported_model_types() -> list[str]:
    """The `model_type`s with a registered adapter, sorted."""
    return sorted(_REGISTRY)


def registered_adapters() -> list[ArchitectureAdapter]:
    return [_REGISTRY[name] for name in supported_model_types()]


def registered_adapter(model_type: str) -> ArchitectureAdapter | None:
    """The adapter registered for `model_type`, or None."""
    return _REGISTRY.get(model_type)


def model_type_of(model_or_config: Any) -> str:
    config = getattr(model_or_config, "config", model_or_config)
    get_text_config = getattr(config, "get_text_config", None)
    text_config = get_text_config() if callable(get_text_config) else config
    return getattr(text_config, "model_type", None) or getattr(config, "model_type", "")


def get_adapter(model_or_config: nn.Module | Any, *, allow_generic: bool = False) -> ArchitectureAdapter:
    """The adapter for a model or config.

    Args:
        allow_generic: for an unregistered model (not a config), guess an adapter from its structure instead of
            raising, with a `BlockPruneWarning`.

    Raises:
        UnsupportedArchitectureError: no adapter is registered for its `model_type` (and no generic one could
            be built).
    """
    model_type = model_type_of(model_or_config)
    if model_type in _REGISTRY:
        return _REGISTRY[model_type]
    if allow_generic and hasattr(model_or_config, "config"):
        from .generic import generic_adapter

        return generic_adapter(model_or_config, model_type)
    raise UnsupportedArchitectureError(
        f"`model_type`={model_type!r} is not supported by optimum-blockprune. Supported model types: "
        f"{', '.join(supported_model_types())}. To add one, register an adapter that says where its blocks "
        "live and which modules write to the residual stream: "
        "`register_architecture(ArchitectureAdapter(model_type=..., layers_attribute=..., branches=(...)))`; or, "
        "for a decoder with one block list and conventional module names, pass `allow_generic=True` to "
        "`Pruner`/`Pruner.from_pretrained` to use a guessed adapter."
    )


def architecture_table() -> str:
    """The README's supported-architecture table, generated from the registry."""

    def code(items) -> str:
        return ", ".join(f"`{item}`" for item in items) or "–"

    lines = [
        "| `model_type` | block kinds | gated branches (sublayer kind) | removable blocks | sublayer removal "
        "| config fields rewritten | notes |",
        "|---|---|---|---|---|---|---|",
    ]
    for adapter in registered_adapters():
        branches = ", ".join(f"`{b}` ({k})" for b, k in zip(adapter.branches, adapter.branch_kinds))
        removable = "any" if not adapter.unremovable_kinds else f"all but {code(adapter.unremovable_kinds)}"
        if "attention" in adapter.kinds:
            removable += "; ≥ 1 attention kept"
        fields = code((*adapter.per_layer_config_fields, *adapter.index_config_fields))
        lines.append(
            f"| `{adapter.model_type}` | {code(adapter.kinds)} | {branches} | {removable} | "
            f"{'yes (one mixer per block)' if adapter.sublayer_removal else 'refused'} | {fields} | "
            f"{adapter.notes or '–'} |"
        )
    return "\n".join(lines)
