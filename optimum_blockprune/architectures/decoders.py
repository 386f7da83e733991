"""Data entries for standard decoders: one line per `model_type`."""

from __future__ import annotations

from .base import ArchitectureAdapter
from .registry import register_architecture

_LAYER_TYPES = ("layer_types",)

STANDARD_DECODERS = (
    ArchitectureAdapter("llama"),
    ArchitectureAdapter("mistral"),
    ArchitectureAdapter("qwen2", per_layer_config_fields=_LAYER_TYPES),
    ArchitectureAdapter("qwen3", per_layer_config_fields=_LAYER_TYPES),
    ArchitectureAdapter("phi3", notes="fused qkv and gate/up projections"),
    # Gemma adds *normalised* branches: the gate goes after the post-norms.
    ArchitectureAdapter(
        "gemma2",
        branches=("post_attention_layernorm", "post_feedforward_layernorm"),
        per_layer_config_fields=_LAYER_TYPES,
        notes="gates after the post-norms (normalised branches)",
    ),
    ArchitectureAdapter(
        "gemma3_text",
        branches=("post_attention_layernorm", "post_feedforward_layernorm"),
        per_layer_config_fields=_LAYER_TYPES,
        notes="gates after the post-norms (normalised branches)",
    ),
    ArchitectureAdapter("gpt2", layers_attribute="h", branches=("attn", "mlp")),
    ArchitectureAdapter(
        "gpt_neox", branches=("attention", "mlp"), notes="parallel residual: both branches gated"
    ),
    # OPT's feed-forward sits directly on the layer (fc1 -> act -> fc2), with no `mlp` module.
    ArchitectureAdapter("opt", branches=("self_attn", "fc2"), notes="feed-forward gated at `fc2`"),
    ArchitectureAdapter(
        "falcon",
        layers_attribute="h",
        branches=("self_attention", "mlp"),
        notes="parallel attention: both branches gated",
    ),
)

for _adapter in STANDARD_DECODERS:
    register_architecture(_adapter)
