"""The only module that changes model structure: remove blocks, fix the config, re-index caches.

After `remove_blocks` the in-memory model runs cached generation correctly (every `layer_idx` is
contiguous again) and `save_pretrained` writes a config that plain transformers rebuilds with exactly the
kept blocks (a stale `num_hidden_layers` would silently re-add random layers on reload).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import TYPE_CHECKING

from .architectures import ArchitectureAdapter, get_adapter
from .errors import SurgeryError

if TYPE_CHECKING:
    import torch.nn as nn

    from .result import PruningResult, Ranking

logger = logging.getLogger(__name__)


def kept_after_removal(num_blocks: int, removed: Iterable[int]) -> list[int]:
    """The 0-based indices that remain, in order, after removing `removed`; validates the request.

    Raises:
        SurgeryError: an index is out of range, or nothing would remain.
    """
    removed = sorted(set(int(i) for i in removed))
    bad = [i for i in removed if not 0 <= i < num_blocks]
    if bad:
        raise SurgeryError(
            f"Cannot remove blocks {bad}: the model has {num_blocks} blocks (indices 0..{num_blocks - 1})."
        )
    if len(removed) >= num_blocks:
        raise SurgeryError(f"Cannot remove all {num_blocks} blocks; at least one must remain.")
    gone = set(removed)
    return [i for i in range(num_blocks) if i not in gone]


def _update_config(config, adapter: ArchitectureAdapter, kept: list[int], num_old: int) -> None:
    for name in adapter.per_layer_config_fields:
        values = getattr(config, name, None)
        if values is None:
            continue
        if len(values) != num_old:
            raise SurgeryError(
                f"`config.{name}` has {len(values)} entries but the model has {num_old} blocks; refusing to guess."
            )
        setattr(config, name, [values[i] for i in kept])
    new_position = {old: new for new, old in enumerate(kept)}
    for name in adapter.index_config_fields:
        values = getattr(config, name, None)
        if values is not None:
            setattr(config, name, [new_position[i] for i in values if i in new_position])
    for name, value in adapter.derived_config_fields(config, kept, num_old).items():
        setattr(config, name, value)
    config.num_hidden_layers = len(kept)


def _attention_error(model: nn.Module, adapter: ArchitectureAdapter, kept: list[int]) -> str | None:
    kinds = [unit.kind for unit in adapter.blocks(model)]
    if "attention" in kinds and not any(kinds[i] == "attention" for i in kept):
        return (
            "it would remove every attention block of this hybrid model, and cached generation in transformers "
            "needs at least one attention layer in the cache. Keep at least one attention block."
        )
    return None


def _first_block_error(model: nn.Module, adapter: ArchitectureAdapter, kept: list[int]) -> str | None:
    kinds = [unit.kind for unit in adapter.blocks(model)]
    cacheless = set(adapter.cacheless_kinds)
    if kept and kinds[kept[0]] in cacheless and kinds[0] not in cacheless:
        holders = sorted(set(kinds) - cacheless)
        return (
            f"the pruned model would start with block {kept[0]}, a {kinds[kept[0]]} block with no cache slot "
            f"(layout {[kinds[i] for i in kept]}), and cached generation in transformers reads the cache's "
            f"length from layer 0. Keep a block of kind {' or '.join(holders)} before it."
        )
    return None


def _reindex_layer_idx(blocks: nn.ModuleList) -> None:
    # Every module that owns a KV/SSM cache slot carries an int `layer_idx`; the cache has one slot per block.
    for new_index, block in enumerate(blocks):
        for module in block.modules():
            if isinstance(module.__dict__.get("layer_idx"), int):
                module.layer_idx = new_index


def remove_blocks(
    model: nn.Module, removed: Iterable[int], adapter: ArchitectureAdapter | None = None
) -> list[int]:
    """Remove the blocks with the given 0-based indices from `model` in place; return the kept indices.

    Slices every per-layer config field, remaps index fields, sets the layer count, re-indexes every
    `layer_idx`, and validates the config. Removing nothing leaves the model untouched.

    Raises:
        SurgeryError: invalid indices, or a config that no longer validates (the model is then restored).
    """
    import torch.nn as nn

    adapter = adapter or get_adapter(model)
    old_blocks = adapter.block_list(model)
    num_old = len(old_blocks)
    kept = kept_after_removal(num_old, removed)
    if len(kept) == num_old:
        return kept
    config = adapter.text_config(model)
    reason = (
        adapter.removal_error(config, kept, num_old)
        or _attention_error(model, adapter, kept)
        or _first_block_error(model, adapter, kept)
    )
    if reason:
        raise SurgeryError(f"Cannot remove blocks {sorted(set(range(num_old)) - set(kept))}: {reason}")
    touched = (
        "num_hidden_layers",
        *adapter.per_layer_config_fields,
        *adapter.index_config_fields,
        *adapter.derived_config_fields(config, list(range(num_old)), num_old),
    )
    snapshot = {name: getattr(config, name) for name in touched if hasattr(config, name)}
    adapter.set_block_list(model, nn.ModuleList([old_blocks[i] for i in kept]))
    try:
        _update_config(config, adapter, kept, num_old)
        config.validate()
    except Exception as error:
        adapter.set_block_list(model, old_blocks)
        for name, value in snapshot.items():
            setattr(config, name, value)
        raise SurgeryError(f"The pruned config does not validate, so nothing was changed: {error}") from error
    _reindex_layer_idx(adapter.block_list(model))
    adapter.after_removal(model, kept, num_old)
    logger.info(
        "Removed %d of %d blocks: %s.", num_old - len(kept), num_old, sorted(set(range(num_old)) - set(kept))
    )
    return kept


def pruned_copy(
    model: nn.Module, removed: Iterable[int], adapter: ArchitectureAdapter | None = None
) -> nn.Module:
    """A copy of `model` with the blocks in `removed` really gone, sharing every parameter and buffer with the
    original (no weight is copied: only modules and config), which stays untouched. What a sweep times: the
    pruned architecture itself, not a gated stand-in, at the memory cost of module objects."""
    import copy

    shared = {id(tensor): tensor for tensor in (*model.parameters(), *model.buffers())}
    twin = copy.deepcopy(model, shared)
    remove_blocks(twin, removed, adapter)
    return twin


def apply_removal(
    model: nn.Module,
    removed: Iterable[int],
    adapter: ArchitectureAdapter | None = None,
    *,
    ranking: Ranking | None = None,
    selected_rank: int | None = None,
) -> PruningResult:
    """`remove_blocks`, recorded: the removed and kept blocks, parameter counts before and after, and the
    ranking the state came from (when it came from one)."""
    from .result import PruningResult

    removed = tuple(sorted(set(int(i) for i in removed)))
    before = sum(p.numel() for p in model.parameters())
    kept = remove_blocks(model, removed, adapter)
    return PruningResult(
        ranking=ranking if selected_rank is not None else None,
        selected_rank=selected_rank,
        removed_blocks=removed,
        kept_blocks=tuple(kept),
        num_parameters_before=before,
        num_parameters_after=sum(p.numel() for p in model.parameters()),
    )
