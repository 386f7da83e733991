"""Architecture adapters and their registry (keyed by `config.model_type`)."""

from . import decoders, encoders, hybrids, moe  # noqa: F401, E402  (register the data entries)
from .base import ArchitectureAdapter, BlockInfo
from .registry import (
    architecture_table,
    get_adapter,
    model_type_of,
    register_architecture,
    registered_adapter,
    registered_adapters,
    supported_model_types,
)

__all__ = [
    "ArchitectureAdapter",
    "BlockInfo",
    "architecture_table",
    "get_adapter",
    "model_type_of",
    "register_architecture",
    "registered_adapter",
    "registered_adapters",
    "supported_model_types",
]
