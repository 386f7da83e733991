"""The architecture adapter: where a model keeps its blocks and how they write to the residual stream.

A standard decoder is one `ArchitectureAdapter(...)` data entry. An architecture that data cannot express
subclasses it in a file of its own and overrides only what differs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch.nn as nn

GRANULARITIES = ("block", "sublayer")


@dataclass(frozen=True)
class Task:
    """What a model of one task is loaded with, published as, and which Fisher types suit it (first: default)."""

    auto_class: str
    pipeline_tag: str
    fisher_types: tuple[str, ...]


TASKS = {
    "causal-lm": Task("AutoModelForCausalLM", "text-generation", ("empirical", "model")),
    "feature-extraction": Task("AutoModel", "feature-extraction", ("output",)),
}


@dataclass(frozen=True)
class BlockInfo:
    """One optimisation variable: a whole block (`granularity="block"`) or one sublayer of a block (its attention,
    Mamba, MLP/MoE ... branch; `granularity="sublayer"`).

    Attributes:
        index: the variable's 0-based index (equal to `block` at block granularity).
        name: the module path (`model.layers.3`, or `model.layers.3.self_attn` for a sublayer).
        kind: `decoder`, `moe`, `attention`, `mamba`, `mlp`, ... (see the README's architecture table).
        num_parameters / num_active_parameters: parameters, and those one token uses (an MoE block counts its
            shared part plus top-k of its routed experts).
        block: the index of the block it belongs to.
        branches: module paths, relative to the model, whose residual writes its gate scales.
    """

    index: int
    name: str
    kind: str
    num_parameters: int
    num_active_parameters: int
    block: int = -1
    branches: tuple[str, ...] = ()

    def __post_init__(self):
        if self.block < 0:
            object.__setattr__(self, "block", self.index)

    def to_dict(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "name": self.name,
            "kind": self.kind,
            "num_parameters": self.num_parameters,
            "num_active_parameters": self.num_active_parameters,
            "block": self.block,
        }


@dataclass(frozen=True)
class ArchitectureAdapter:
    """How optimum-blockprune reads and edits one `model_type`.

    Args:
        model_type: the `config.model_type` this entry serves (for multimodal models, the text config's).
        layers_attribute: name of the `nn.ModuleList` of blocks on the decoder (`model.get_decoder()`, or the
            base model of an encoder).
        branches: paths, relative to a block, of the modules whose output is added to the residual stream.
            A coupling gate scales each of these outputs (first tuple element when the module returns a
            tuple). Gemma's post-norms go here instead of the attention/MLP modules, OPT's `fc2` instead of a
            missing `mlp`, parallel-residual blocks list both parallel branches, and hybrids list every mixer
            a block may hold (a block gates the ones it has).
        branch_kinds: the kind of each branch (same length as `branches`; default attention then mlp). The
            branches of one block with the same kind form one sublayer at `granularity="sublayer"`.
        per_layer_config_fields: config fields holding one entry per layer; sliced on removal.
        index_config_fields: config fields holding layer indices; remapped on removal.
        block_kind: what one block is, shown in rankings and cards (`moe` when it holds routed experts); `None`
            for hybrids: the kind of the block's first branch (`mamba`, `attention`, `conv`, ...).
        kinds: the block kinds this architecture's blocks can have (documentation and config checks; the test
            matrix verifies them). Default: `block_kind`, or for hybrids the mixer kinds among `branch_kinds`.
        unremovable_kinds: block kinds this adapter cannot remove (they are never candidates).
        cacheless_kinds: block kinds that own no cache slot (Nemotron-H's MLP and MoE blocks). transformers reads
            the cache's length from layer 0, so a pruned model must not start with one of these: removals that
            would leave one first are infeasible (a constraint of the problem) and refused by the surgery.
        sublayer_removal: a sublayer removal can be stored as a standard checkpoint (one mixer per block).
        task: a key of `TASKS`: `causal-lm` (decoders, `AutoModelForCausalLM`) or `feature-extraction` (encoders,
            `AutoModel`).
        block_gate: 'branches' (a block's gate scales its residual branches) or 'interpolate' (at block
            granularity one gate on the whole block, h + alpha * (block(h) - h): exactly the block removed at 0
            whatever the block's shape, for post-norm blocks such as BERT's; sublayers keep the branch gates).
        gate_zero_removes: a branch gate at 0 is exactly the block removed (False for post-norm blocks such as BERT,
            where the add-and-norm still runs).
        notes: a short remark for the README's architecture table.
    """

    model_type: str
    layers_attribute: str = "layers"
    branches: tuple[str, ...] = ("self_attn", "mlp")
    branch_kinds: tuple[str, ...] | None = None
    per_layer_config_fields: tuple[str, ...] = ()
    index_config_fields: tuple[str, ...] = ()
    block_kind: str | None = "decoder"
    kinds: tuple[str, ...] = ()
    unremovable_kinds: tuple[str, ...] = ()
    cacheless_kinds: tuple[str, ...] = ()
    sublayer_removal: bool = False
    task: str = "causal-lm"
    gate_zero_removes: bool = True
    block_gate: str = "branches"
    notes: str = ""

    def __post_init__(self):
        if self.task not in TASKS:
            raise ValueError(f"`task` must be one of {sorted(TASKS)}, got {self.task!r}.")
        if self.block_gate not in ("branches", "interpolate"):
            raise ValueError(f"`block_gate` must be 'branches' or 'interpolate', got {self.block_gate!r}.")
        kinds = self.branch_kinds
        if kinds is None:
            kinds = ("attention", "mlp") if len(self.branches) == 2 else ("residual",) * len(self.branches)
            object.__setattr__(self, "branch_kinds", kinds)
        if len(kinds) != len(self.branches):
            raise ValueError(
                f"`branch_kinds` {kinds} must name one kind per branch in `branches` {self.branches}."
            )
        if not self.kinds:
            mixers = tuple(dict.fromkeys(k for k in kinds if k != "mlp"))
            object.__setattr__(self, "kinds", (self.block_kind,) if self.block_kind else mixers)

    @property
    def task_info(self) -> Task:
        return TASKS[self.task]

    def interpolates(self, granularity: str) -> bool:
        """Whether a unit's gate at this granularity interpolates the whole block (see `block_gate`)."""
        return self.block_gate == "interpolate" and granularity == "block"

    def exact_gates(self, granularity: str) -> bool:
        """Whether a gate at 0 is exactly its unit removed at this granularity (removals can be measured)."""
        return self.gate_zero_removes or self.interpolates(granularity)

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

        owner = self.decoder(model)
        try:
            blocks = owner.get_submodule(self.layers_attribute)
        except AttributeError:
            blocks = None
        if not isinstance(blocks, nn.ModuleList):
            raise TypeError(
                f"The `{self.model_type}` adapter expects an `nn.ModuleList` at `{self.layers_attribute}` on "
                f"`{type(owner).__name__}`, found {type(blocks).__name__}. The model's layout differs from the "
                "registered one; register a corrected adapter with `register_architecture(..., overwrite=True)`."
            )
        return blocks

    def set_block_list(self, model: nn.Module, blocks: nn.ModuleList) -> None:
        owner = self.decoder(model)
        parent, _, name = self.layers_attribute.rpartition(".")
        setattr(owner.get_submodule(parent) if parent else owner, name, blocks)

    def block_list_path(self, model: nn.Module) -> str:
        blocks = self.block_list(model)
        for name, module in model.named_modules():
            if module is blocks:
                return name
        raise RuntimeError("The block list is not a submodule of the model.")  # unreachable for real models

    def present_branches(self, block: nn.Module) -> list[tuple[str, str]]:
        """`(path, kind)` of every branch this block has (hybrid blocks hold only some mixers)."""
        present = []
        for path, kind in zip(self.branches, self.branch_kinds):
            try:
                module = block.get_submodule(path)
            except AttributeError:
                continue
            if module is not None:
                present.append((path, kind))
        if not present:
            raise TypeError(
                f"A `{type(block).__name__}` block has none of the `{self.model_type}` adapter's branches "
                f"{self.branches}; the model's layout differs from the registered one."
            )
        return present

    def branch_modules(self, block: nn.Module) -> list[nn.Module]:
        """The modules whose outputs a coupling gate scales, for one block."""
        return [block.get_submodule(path) for path, _ in self.present_branches(block)]

    def block_kind_of(self, block: nn.Module, index: int, config: Any) -> str:
        if self.block_kind is None:
            return self.present_branches(block)[0][1]
        return "moe" if _has_experts(block) else self.block_kind

    def units(self, model: nn.Module, granularity: str = "block") -> list[BlockInfo]:
        """The optimisation variables, in order: one per block, or one per sublayer (branches of one kind)."""
        if granularity not in GRANULARITIES:
            raise ValueError(f"`granularity` must be one of {GRANULARITIES}, got {granularity!r}.")
        prefix = self.block_list_path(model)
        config = self.text_config(model)
        top_k = getattr(config, "num_experts_per_tok", None)
        units: list[BlockInfo] = []
        for i, block in enumerate(self.block_list(model)):
            present = self.present_branches(block)
            if (
                granularity == "block" or len({kind for _, kind in present}) == 1
            ):  # one mixer: the block itself
                groups = [(self.block_kind_of(block, i, config), [block], [p for p, _ in present], "")]
            else:
                kinds = list(dict.fromkeys(kind for _, kind in present))
                groups = []
                for kind in kinds:
                    paths = [p for p, k in present if k == kind]
                    modules = [block.get_submodule(p) for p in paths]
                    if kind == "mlp" and any(_has_experts(m) for m in modules):
                        kind = "moe"
                    groups.append((kind, modules, paths, "." + "+".join(paths)))
            for kind, modules, paths, suffix in groups:
                total, active = _parameter_counts(modules, top_k)
                units.append(
                    BlockInfo(
                        index=len(units),
                        name=f"{prefix}.{i}{suffix}",
                        kind=kind,
                        num_parameters=total,
                        num_active_parameters=active,
                        block=i,
                        branches=(f"{prefix}.{i}",)
                        if self.interpolates(granularity)
                        else tuple(f"{prefix}.{i}.{p}" for p in paths),
                    )
                )
        return units

    def blocks(self, model: nn.Module) -> list[BlockInfo]:
        """Describe every removable block, in order."""
        return self.units(model, "block")

    # -- editing hooks (used only by `surgery.remove_blocks`) -----------------------------------------------
    def derived_config_fields(self, config: Any, kept: list[int], num_old: int) -> dict[str, Any]:
        """Config fields whose new value follows from the kept blocks by a rule data cannot express (layer
        patterns such as `decoder_sparse_step`); `surgery.remove_blocks` applies them. None by default."""
        return {}

    def removal_error(self, config: Any, kept: list[int], num_old: int) -> str | None:
        """Why keeping only `kept` cannot be stored as a standard checkpoint, or None if it can."""
        return None

    def after_removal(self, model: nn.Module, kept: list[int], num_old: int) -> None:
        """Fix model state beyond the config and `layer_idx` (lookup maps, tied-weight maps). None by default."""

    def config_error(self, num_to_remove: int, contiguous: bool, config: Any) -> str | None:
        """Why a request to remove `num_to_remove` blocks can never be stored, checked before calibration."""
        return None


def _has_experts(module: nn.Module) -> bool:
    return any(name.split(".")[-1] == "experts" for name, _ in module.named_modules())


def _parameter_counts(modules: list[nn.Module], top_k: int | None) -> tuple[int, int]:
    """Total parameters and those one token uses: routed experts are fused, every parameter of an `experts`
    module leads with the expert dimension, and a token visits top-k of them."""
    seen: set[int] = set()
    total = routed = 0
    active_routed = 0
    for module in modules:
        experts = [m for name, m in module.named_modules() if name.split(".")[-1] == "experts"]
        for parameter in module.parameters():
            if id(parameter) not in seen:
                seen.add(id(parameter))
                total += parameter.numel()
        for expert_module in experts:
            count = sum(p.numel() for p in expert_module.parameters())
            routed += count
            num_experts = next(expert_module.parameters()).shape[0]
            active_routed += count * min(top_k, num_experts) // num_experts if top_k else count
    return total, total - routed + active_routed
