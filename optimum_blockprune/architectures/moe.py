"""Mixture-of-experts decoders. Most are plain data entries; two keep a layer pattern in the config that must be
rewritten after removal, so they get a small adapter class each."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .base import ArchitectureAdapter
from .registry import register_architecture


@dataclass(frozen=True)
class SparseStepAdapter(ArchitectureAdapter):
    """Qwen MoE: layer i is dense if i is in `mlp_only_layers` or (i + 1) % `decoder_sparse_step` != 0. Removing
    blocks breaks the modular pattern, so the dense layers become an explicit list and the step becomes 1."""

    def derived_config_fields(self, config: Any, kept: list[int], num_old: int) -> dict[str, Any]:
        step = getattr(config, "decoder_sparse_step", 1) or 1
        dense_only = set(getattr(config, "mlp_only_layers", None) or [])
        dense = [i for i in range(num_old) if i in dense_only or (i + 1) % step != 0]
        position = {old: new for new, old in enumerate(kept)}
        return {"mlp_only_layers": [position[i] for i in dense if i in position], "decoder_sparse_step": 1}


@dataclass(frozen=True)
class DensePrefixAdapter(ArchitectureAdapter):
    """DeepSeek-V3: the first `first_k_dense_replace` layers are dense; they stay a prefix after removal. The
    multi-token-prediction layer (hub weights after the last block) is not built by transformers, so the pruned
    checkpoint does not carry it and says so with `num_nextn_predict_layers = 0`; other runtimes would otherwise
    look for it at the new, shorter layer index."""

    def derived_config_fields(self, config: Any, kept: list[int], num_old: int) -> dict[str, Any]:
        dense = getattr(config, "first_k_dense_replace", 0) or 0
        fields = {"first_k_dense_replace": sum(i < dense for i in kept)}
        if getattr(config, "num_nextn_predict_layers", None):
            fields["num_nextn_predict_layers"] = 0
        return fields


MOE_DECODERS = (
    ArchitectureAdapter("mixtral", kinds=("moe",), notes="MoE (experts fused in memory, per-expert on disk)"),
    ArchitectureAdapter("olmoe", kinds=("moe",), notes="MoE"),
    ArchitectureAdapter(
        "gpt_oss", per_layer_config_fields=("layer_types",), kinds=("moe",), notes="MoE with attention sinks"
    ),
    SparseStepAdapter(
        "qwen2_moe",
        per_layer_config_fields=("layer_types",),
        kinds=("decoder", "moe"),
        notes="MoE; `decoder_sparse_step` pattern rewritten as an explicit `mlp_only_layers`",
    ),
    SparseStepAdapter(
        "qwen3_moe",
        kinds=("decoder", "moe"),
        notes="MoE; `decoder_sparse_step` pattern rewritten as an explicit `mlp_only_layers`",
    ),
    DensePrefixAdapter(
        "deepseek_v3",
        kinds=("decoder", "moe"),
        notes="MLA attention, MoE; `first_k_dense_replace` recounted; MTP layer dropped (`num_nextn_predict_layers` = 0)",
    ),
)

for _adapter in MOE_DECODERS:
    register_architecture(_adapter)
