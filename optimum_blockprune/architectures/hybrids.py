"""Hybrid Mamba/attention decoders: blocks differ by mixer, so each block's kind is the mixer it holds.

Every entry keeps the cache layout consistent after removal: the per-layer type list is sliced (the cache is
pre-allocated from it, one fixed type per layer) and every `layer_idx` is re-indexed by the surgery.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .base import ArchitectureAdapter
from .moe import SparseStepAdapter
from .registry import register_architecture

if TYPE_CHECKING:
    import torch.nn as nn

# transformers' per-layer cache type names -> the kinds we show (older configs used the short names).
_NEMOTRON_KINDS = {
    "linear_attention": "mamba",
    "mamba": "mamba",
    "full_attention": "attention",
    "attention": "attention",
    "mlp": "mlp",
    "moe": "moe",
}


@dataclass(frozen=True)
class NemotronHAdapter(ArchitectureAdapter):
    """Nemotron-H: each block is a norm plus exactly one mixer (Mamba-2, attention, MLP or MoE), so removing a
    sublayer *is* removing a block. `num_hidden_layers` follows `layers_block_type` (its setter is a no-op)."""

    def block_kind_of(self, block: nn.Module, index: int, config: Any) -> str:
        block_type = getattr(block, "block_type", None) or config.layers_block_type[index]
        return _NEMOTRON_KINDS.get(block_type, block_type)


@dataclass(frozen=True)
class Zamba2Adapter(ArchitectureAdapter):
    """Zamba2: Mamba layers, and hybrid layers that feed a *shared* transformer block (per-hybrid adapters looked
    up through `layer_dic`, weights tied across hybrid layers) into their Mamba layer. Mamba layers can be
    removed (the lookup and tie maps are rebuilt); hybrid layers cannot, because their adapters and the shared
    block cycle (`num_mem_blocks`) would have to be re-cut."""

    def removal_error(self, config: Any, kept: list[int], num_old: int) -> str | None:
        hybrid = set(config.hybrid_layer_ids)
        removed_hybrid = sorted(set(range(num_old)) - set(kept) & hybrid)
        if removed_hybrid:
            return (
                f"blocks {removed_hybrid} are Zamba2 hybrid layers, whose shared-transformer adapters and weight "
                "ties cannot be re-cut in a standard checkpoint. Only Mamba layers can be removed."
            )
        return None

    def after_removal(self, model: nn.Module, kept: list[int], num_old: int) -> None:
        config = self.text_config(model)
        hybrid_ids = list(config.hybrid_layer_ids)
        decoder = self.decoder(model)
        for module in decoder.modules():
            if isinstance(getattr(module, "layer_dic", None), dict):
                module.layer_dic = {layer: slot for slot, layer in enumerate(hybrid_ids)}
            if hasattr(module, "layer_block_map"):
                module.layer_block_map = hybrid_ids
        if hasattr(decoder, "layers_block_type"):
            decoder.layers_block_type = list(config.layers_block_type)
        # Hybrid layers keep their order, so the tie map keeps its shape with new layer numbers.
        old_to_new = {old: new for new, old in enumerate(kept)}
        ties = getattr(decoder, "_tied_weights_keys", None) or {}
        decoder._tied_weights_keys = {
            _renumber(source, old_to_new): _renumber(target, old_to_new) for source, target in ties.items()
        }


def _renumber(pattern: str, old_to_new: dict[int, int]) -> str:
    head, index, tail = pattern.split(".", 2)  # "layers.{i}.shared_transformer"
    return f"{head}.{old_to_new[int(index)]}.{tail}"


@dataclass(frozen=True)
class JambaAdapter(ArchitectureAdapter):
    """Jamba stores its layer pattern only as period/offset pairs (`layers_block_type` is a read-only property),
    so the only removals it can store are contiguous runs whose length is a multiple of the patterns' period."""

    def pattern_period(self, config: Any) -> int:
        return math.lcm(config.attn_layer_period, config.expert_layer_period)

    def removal_error(self, config: Any, kept: list[int], num_old: int) -> str | None:
        removed = sorted(set(range(num_old)) - set(kept))
        contiguous = removed == list(range(removed[0], removed[0] + len(removed)))
        return self.config_error(len(removed), contiguous, config)

    def config_error(self, num_to_remove: int, contiguous: bool, config: Any) -> str | None:
        period = self.pattern_period(config)
        if contiguous and num_to_remove % period == 0:
            return None
        return (
            f"Jamba can only store the removal of one contiguous run of a multiple of {period} layers "
            f"(lcm of `attn_layer_period` and `expert_layer_period`); got num_blocks_to_remove={num_to_remove}, "
            f"contiguous={contiguous}. Set `contiguous=True` and `num_blocks_to_remove` to a multiple of {period}."
        )


_MAMBA_BRANCHES = dict(
    branches=("mamba", "self_attn", "feed_forward"), branch_kinds=("mamba", "attention", "mlp")
)

HYBRID_DECODERS = (
    NemotronHAdapter(
        "nemotron_h",
        branches=("mixer",),
        branch_kinds=("mixer",),
        per_layer_config_fields=("layers_block_type",),
        block_kind=None,
        kinds=("mamba", "attention", "mlp", "moe"),
        cacheless_kinds=("mlp", "moe"),
        sublayer_removal=True,
        notes="one mixer per block (Mamba-2, attention, MLP or MoE): sublayer removal is block removal; the "
        "first kept block is Mamba or attention (the cache reads its length from layer 0)",
    ),
    ArchitectureAdapter(
        "granitemoehybrid",
        branches=("mamba", "self_attn", "block_sparse_moe", "shared_mlp"),
        branch_kinds=("mamba", "attention", "mlp", "mlp"),
        per_layer_config_fields=("layer_types",),
        block_kind=None,
        notes="Mamba-2 or attention + MoE and shared MLP in every block",
    ),
    ArchitectureAdapter(
        "bamba",
        **_MAMBA_BRANCHES,
        index_config_fields=("attn_layer_indices",),
        block_kind=None,
        notes="Mamba-2 or attention + MLP; `attn_layer_indices` remapped",
    ),
    ArchitectureAdapter(
        "falcon_h1",
        **_MAMBA_BRANCHES,
        block_kind="hybrid",
        notes="attention and Mamba-2 in parallel in every block (three gates per block at sublayer granularity)",
    ),
    SparseStepAdapter(
        "qwen3_next",
        branches=("linear_attn", "self_attn", "mlp"),
        branch_kinds=("linear_attention", "attention", "mlp"),
        per_layer_config_fields=("layer_types",),
        block_kind=None,
        notes="gated DeltaNet or attention + MoE; `decoder_sparse_step` rewritten as `mlp_only_layers`",
    ),
    ArchitectureAdapter(
        "lfm2",
        branches=("conv", "self_attn", "feed_forward"),
        branch_kinds=("conv", "attention", "mlp"),
        per_layer_config_fields=("layer_types",),
        block_kind=None,
        notes="short convolution or attention + MLP",
    ),
    Zamba2Adapter(
        "zamba2",
        branches=("mamba", "mamba_decoder.mamba"),
        branch_kinds=("mamba", "hybrid"),
        per_layer_config_fields=("layers_block_type",),
        index_config_fields=("hybrid_layer_ids",),
        block_kind=None,
        unremovable_kinds=("hybrid",),
        notes="Mamba layers removable; hybrid layers (shared transformer) are not: their adapters are tied",
    ),
    JambaAdapter(
        "jamba",
        **_MAMBA_BRANCHES,
        block_kind=None,
        notes="only one contiguous run of a multiple of lcm(attention, expert period) layers (period/offset config)",
    ),
)

for _adapter in HYBRID_DECODERS:
    register_architecture(_adapter)
