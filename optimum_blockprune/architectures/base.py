"""The architecture adapter: where a model keeps its blocks and how they write to the residual stream.

A standard decoder is one `ArchitectureAdapter(...)` data entry. An architecture that data cannot express
subclasses it in a file of its own and overrides only what differs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch.nn as nn


@dataclass(frozen=True)
class BlockInfo:
    """One removable block: its 0-based index, module path, kind, parameter count, and active-parameter count
    (the parameters one token uses: for an MoE block, everything but the routed experts plus top-k of them)."""

    index: int
    name: str
    kind: str
    num_parameters: int
    num_active_parameters: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "name": self.name,
            "kind": self.kind,
            "num_parameters": self.num_parameters,
            "num_active_parameters": self.num_active_parameters,
        }


@dataclass(frozen=True)
class ArchitectureAdapter:
    """How optimum-blockprune reads and edits one `model_type`.

    Args:
        model_type: the `config.model_type` this entry serves (for multimodal models, the text config's).
        layers_attribute: name of the `nn.ModuleList` of blocks on `model.get_decoder()`.
        branches: paths, relative to a block, of the modules whose output is added to the residual stream.
            A coupling gate scales each of these outputs (first tuple element when the module returns a
            tuple). Gemma's post-norms go here instead of the attention/MLP modules, OPT's `fc2` instead of a
            missing `mlp`, and parallel-residual blocks list both parallel branches.
        per_layer_config_fields: config fields holding one entry per layer; sliced on removal.
        index_config_fields: config fields holding layer indices; remapped on removal.
        block_kind: what one block is, shown in rankings and cards.
        notes: a short remark for the README's architecture table.
    """

    model_type: str
    layers_attribute: str = "layers"
    branches: tuple[str, ...] = ("self_attn", "mlp")
    per_layer_config_fields: tuple[str, ...] = ()
    index_config_fields: tuple[str, ...] = ()
    block_kind: str = "decoder"
    notes: str = ""

    # -- reading the model -------------------------------------------------------------------------------
    def text_config(self, model: nn.Module):
        return model.config.get_text_config()

    def decoder(self, model: nn.Module) -> nn.Module:
        """The module that owns the block list (`get_decoder()` for causal LMs, the base model otherwise)."""
        get_decoder = getattr(model, "get_decoder", None)
        decoder = get_decoder() if callable(get_decoder) else None
        return decoder if decoder is not None else model.base_model

    def block_list(self, model: nn.Module) -> nn.ModuleList:
        import torch.nn as nn

        blocks = getattr(self.decoder(model), self.layers_attribute, None)
        if not isinstance(blocks, nn.ModuleList):
            raise TypeError(
                f"The `{self.model_type}` adapter expects an `nn.ModuleList` named `{self.layers_attribute}` on "
                f"`{type(self.decoder(model)).__name__}`, found {type(blocks).__name__}. The model's layout differs "
                "from the registered one; register a corrected adapter with `register_architecture(..., overwrite=True)`."
            )
        return blocks

    def block_list_path(self, model: nn.Module) -> str:
        blocks = self.block_list(model)
        for name, module in model.named_modules():
            if module is blocks:
                return name
        raise RuntimeError("The block list is not a submodule of the model.")  # unreachable for real models

    def blocks(self, model: nn.Module) -> list[BlockInfo]:
        """Describe every removable block, in order."""
        prefix = self.block_list_path(model)
        top_k = getattr(self.text_config(model), "num_experts_per_tok", None)
        infos = []
        for i, block in enumerate(self.block_list(model)):
            total = sum(p.numel() for p in block.parameters())
            # Routed experts are fused: every parameter of an `experts` module leads with the expert dimension.
            experts = [m for name, m in block.named_modules() if name.split(".")[-1] == "experts"]
            routed = sum(p.numel() for m in experts for p in m.parameters())
            if experts and top_k:
                num_experts = next(experts[0].parameters()).shape[0]
                active = total - routed + routed * min(top_k, num_experts) // num_experts
            else:
                active = total
            kind = "moe" if experts else self.block_kind
            infos.append(BlockInfo(i, f"{prefix}.{i}", kind, total, active))
        return infos

    def derived_config_fields(self, config: Any, kept: list[int], num_old: int) -> dict[str, Any]:
        """Config fields whose new value follows from the kept blocks by a rule data cannot express (layer
        patterns such as `decoder_sparse_step`); `surgery.remove_blocks` applies them. None by default."""
        return {}

    def branch_modules(self, block: nn.Module) -> list[nn.Module]:
        """The modules whose outputs a coupling gate scales, for one block."""
        return [block.get_submodule(path) for path in self.branches]
