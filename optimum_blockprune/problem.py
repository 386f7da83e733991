"""The removal problem and every check a request needs before calibration: pure functions of (adapter, units,
config), so `Pruner`, the CLI and the training callback share them and a bad request fails before any work."""

from __future__ import annotations

import warnings
from collections import Counter
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from .constraints import cache_holder_first, kind_limit, parameter_budget
from .errors import BlockPruneWarning, CalibrationDataError, ConfigurationError, SurgeryError
from .qubo import QUBO, CardinalityProblem

if TYPE_CHECKING:
    from .architectures import ArchitectureAdapter, BlockInfo
    from .config import BlockRemovalConfig
    from .estimation.fisher import FisherEstimate
    from .result import Ranking

#: Below this many scoring samples a ranking is noisy enough to deserve a warning (the benchmarks use 16; the
#: paper 2048).
MIN_CALIBRATION_SAMPLES = 16
#: `selection='auto'` compares states on a held-out slice; below this many samples it refuses.
MIN_SELECTION_SAMPLES = 4


def removal_problem(
    units: Sequence[dict[str, Any]],
    config: BlockRemovalConfig,
    energy: np.ndarray | None = None,
    *,
    adapter: ArchitectureAdapter | None = None,
) -> CardinalityProblem:
    """The constrained problem for `config` over the gates described by `units` (`BlockInfo.to_dict()`s).

    Pure and cheap: with `energy=None` it runs on a zero matrix (a method fills in its own objective). Besides
    `config`'s own constraints, at least one attention gate always stays (a cache with no attention layer breaks
    cached generation in transformers) and, with an `adapter`, its rules: blocks of its `unremovable_kinds` are
    never candidates, and a block of its `cacheless_kinds` never becomes the first one.

    Raises:
        ConfigurationError: the request cannot be met, with the reason and what to change.
    """
    num_gates = len(units)
    config.validate_for_model(num_gates)
    kinds = [u["kind"] for u in units]
    present = sorted(set(kinds))
    named = {*config.candidate_kinds, *config.max_removed_per_kind, *config.min_removed_per_kind}
    unknown = sorted(named - set(present))
    if unknown:
        raise ConfigurationError(
            f"Block kinds {unknown} (from `candidate_kinds` / `*_removed_per_kind`) do not occur in this model at "
            f"granularity={config.granularity!r}; its kinds are {present}."
        )
    unremovable_kinds = adapter.unremovable_kinds if adapter is not None else ()
    allowed = set(config.candidate_kinds or present) - set(unremovable_kinds)
    protected = set(config.protected_blocks)
    candidates = [i for i in range(num_gates) if i not in protected and kinds[i] in allowed]
    excluded = sorted(set(config.forced_blocks) - set(candidates))
    if excluded:
        raise ConfigurationError(
            f"`forced_blocks` {excluded} are not removable here (kinds {[kinds[i] for i in excluded]}; removable "
            f"kinds: {sorted(allowed)}, protected: {sorted(protected)})."
        )
    num_attention = kinds.count("attention")
    limits = _kind_limits(config, named, num_attention)
    constraints = [
        kind_limit(kinds, kind, at_least=low, at_most=high) for kind, (low, high) in sorted(limits.items())
    ]
    _check_forced_within_limits(config, kinds, limits, num_attention)
    if adapter is not None and adapter.cacheless_kinds:
        constraints += cache_holder_first(kinds, adapter.cacheless_kinds)
    removable_per_kind = Counter(kinds[i] for i in candidates)
    reachable = sum(
        count if limits.get(kind, [0, None])[1] is None else min(count, limits[kind][1])
        for kind, count in removable_per_kind.items()
    )
    if config.num_blocks_to_remove > reachable:
        attention_note = f" {_ONE_ATTENTION_STAYS}" if num_attention else ""
        raise ConfigurationError(
            f"`num_blocks_to_remove`={config.num_blocks_to_remove} but at most {reachable} blocks can be removed "
            f"under `candidate_kinds`={list(config.candidate_kinds)}, the per-kind limits and "
            f"`protected_blocks`={sorted(protected)}.{attention_note} Remove fewer or relax a limit."
        )
    if config.min_parameters_removed is not None or config.max_parameters_removed is not None:
        key = "num_active_parameters" if config.count_active_parameters else "num_parameters"
        constraints.append(
            parameter_budget(
                [u[key] for u in units],
                at_least=config.min_parameters_removed,
                at_most=config.max_parameters_removed,
                name="active parameters removed" if config.count_active_parameters else "parameters removed",
            )
        )
    matrix = np.zeros((num_gates, num_gates)) if energy is None else energy
    return CardinalityProblem(
        QUBO(matrix),
        config.num_blocks_to_remove,
        tuple(candidates),
        forced=config.forced_blocks,
        constraints=tuple(constraints),
        contiguous=config.contiguous,
    )


_ONE_ATTENTION_STAYS = (
    "At least one attention block always stays: removing every attention layer breaks cached generation in "
    "transformers."
)


def _kind_limits(config: BlockRemovalConfig, named: set[str], num_attention: int) -> dict[str, list]:
    limits = {
        kind: [config.min_removed_per_kind.get(kind, 0), config.max_removed_per_kind.get(kind)]
        for kind in named
    }
    if num_attention:
        cap = limits.setdefault("attention", [0, None])
        cap[1] = num_attention - 1 if cap[1] is None else min(cap[1], num_attention - 1)
    return limits


def _check_forced_within_limits(
    config: BlockRemovalConfig, kinds: list[str], limits: dict[str, list], num_attention: int
) -> None:
    for kind, (_, high) in sorted(limits.items()):
        forced = sum(kinds[i] == kind for i in config.forced_blocks)
        if high is not None and forced > high:
            why = f" ({_ONE_ATTENTION_STAYS})" if kind == "attention" and high == num_attention - 1 else ""
            raise ConfigurationError(
                f"`forced_blocks` {list(config.forced_blocks)} remove {forced} {kind} blocks, but at most {high} may "
                f"be removed{why}. Force fewer {kind} blocks."
            )


def fisher_type(adapter: ArchitectureAdapter, config: BlockRemovalConfig) -> str:
    """The Fisher type `config.fisher` resolves to on this architecture ('auto': the task's default)."""
    allowed = adapter.task_info.fisher_types
    if config.fisher == "auto":
        return allowed[0]
    if config.fisher not in allowed:
        raise ConfigurationError(
            f"`fisher`={config.fisher!r} does not suit a `{adapter.model_type}` model ({adapter.task}); "
            f"use one of {allowed} or 'auto'."
        )
    return config.fisher


def resolved_for(
    adapter: ArchitectureAdapter, config: BlockRemovalConfig, *, has_data: bool = True
) -> BlockRemovalConfig:
    """`config` with its method resolved for this model (`BlockRemovalConfig.resolved`)."""
    return config.resolved(
        task=adapter.task, exact_gates=adapter.exact_gates(config.granularity), has_data=has_data
    )


def check_request(
    adapter: ArchitectureAdapter,
    units: Sequence[BlockInfo],
    config: BlockRemovalConfig,
    *,
    model_config: Any = None,
    applying: bool = False,
) -> CardinalityProblem:
    """Every check that needs only the model's structure; returns the (zero-energy) problem to rank over.

    With `applying`, also checks that the result could be stored as a standard checkpoint (`model_config`: the
    model's text config, for architectures whose config limits which removals it can express).

    Raises:
        ConfigurationError: the config cannot be met on this model, or cannot be applied to it.
    """
    from .methods import get_method

    config = resolved_for(adapter, config)
    names = (config.method, *(config.auto_candidates if config.selection == "auto" else ()))
    needs = {need for name in names for need in get_method(name).requirements(config)}
    if "fisher" in needs:
        fisher_type(adapter, config)
    choice = f"`method`={config.method!r} / `selection`={config.selection!r}"
    if config.selection == "auto" and config.auto_candidates:
        choice += f" (with `auto_candidates`={list(config.auto_candidates)})"
    if ("removals" in needs or config.selection == "auto") and not adapter.exact_gates(config.granularity):
        raise ConfigurationError(
            f"{choice} evaluate removals by setting gates to 0, which does not remove a block in "
            f"`{adapter.model_type}` models at granularity={config.granularity!r}. Use a method that measures "
            "nothing (see `available_methods()`) and `selection='ground'`."
        )
    if ("next_token" in needs or config.selection == "auto") and adapter.task != "causal-lm":
        raise ConfigurationError(
            f"{choice} need next-token predictions, which a `{adapter.model_type}` model ({adapter.task}) does not "
            "make. Use a method without next-token needs ('cbo', 'fisher_diagonal' or a hidden-state baseline) "
            "and `selection='ground'`."
        )
    problem = removal_problem([u.to_dict() for u in units], config, adapter=adapter)
    if applying:
        reason = adapter.config_error(config.num_blocks_to_remove, config.contiguous, model_config)
        if reason:
            raise ConfigurationError(reason)
        if config.granularity == "sublayer" and not adapter.sublayer_removal:
            raise ConfigurationError(
                f"`granularity='sublayer'` can score and rank `{adapter.model_type}` models, but `prune` cannot "
                "apply the result: transformers has no standard checkpoint for a layer with its attention or MLP "
                "left out (only architectures with one mixer per block, such as nemotron_h, can store it). Use "
                "`Pruner.estimate` + `Pruner.solve` to study sublayer scores, or `granularity='block'` to prune."
            )
    check_feasible(problem)
    return problem


def check_feasible(problem: CardinalityProblem, time_limit_s: float = 10.0) -> None:
    """Refuse a request no state satisfies (a parameter budget above what M blocks hold, a contiguous run that
    the protected blocks break, ...) before any calibration: a certified search for one feasible state of the
    zero-energy problem, skipped when only the count constrains (always feasible once `removal_problem` passed).

    Raises:
        ConfigurationError: the search proved that no state is feasible.
    """
    if not problem.constraints and not problem.contiguous:
        return
    from .solvers import solve_ranking

    found = solve_ranking(problem, 1, solver="exact", time_limit_s=time_limit_s)
    if not found.states and found.proven:
        require_states(found, problem)


def check_fisher(
    fisher: FisherEstimate, config: BlockRemovalConfig, num_gates: int | None = None
) -> list[dict]:
    """The units a Fisher estimate describes, after checking it fits `config` (and a model with `num_gates`).

    Raises:
        ConfigurationError: the estimate lacks its unit metadata, was made at another granularity, or on a
            model with another number of gates.
    """
    if num_gates is not None and fisher.num_gates != num_gates:
        raise ConfigurationError(
            f"The Fisher estimate covers {fisher.num_gates} gates but the model has {num_gates}; it was "
            "estimated on a different model."
        )
    if fisher.num_samples < fisher.num_gates:
        check_sample_count(fisher.num_samples, fisher.num_gates, fisher=True, source="the Fisher estimate")
    units = fisher.metadata.get("blocks") or []
    if len(units) != fisher.num_gates:
        raise ConfigurationError(
            "This Fisher estimate's metadata does not describe its gates (kinds, parameter counts); re-estimate it "
            "with this version of optimum-blockprune."
        )
    granularity = fisher.metadata.get("granularity", "block")
    if granularity != config.granularity:
        raise ConfigurationError(
            f"The Fisher estimate has granularity={granularity!r} but the config asks for {config.granularity!r}; "
            "re-estimate with the config's granularity or change it."
        )
    return units


def more_samples_advice(config: BlockRemovalConfig | None) -> str:
    """How to get more calibration samples from the input the user gave: packing cuts one long text (a `.txt`
    file, a few long documents) into `max_length`-token samples; only then does a smaller `max_length` help."""
    if config is None:
        return "Give more or longer documents, or pack them (`pack_samples=True`, `--pack-samples`)."
    if config.pack_samples:
        return (
            f"Give more text, or a smaller `max_length` (now {config.max_length}; `--max-length`): packed text is "
            "cut into samples of that many tokens."
        )
    return (
        f"Give more documents, or pack them: `pack_samples=True` (`--pack-samples`) cuts long texts (a `.txt` file, "
        f"long documents) into samples of `max_length`={config.max_length} tokens, and a smaller `max_length` then "
        "gives more of them."
    )


def check_minimum_samples(
    num_samples: int, minimum: int, needed_by: str, *, source: str, config: BlockRemovalConfig | None = None
) -> None:
    """Refuse fewer scoring samples than `needed_by` (a method or energy) is defined on, before the model runs.

    Raises:
        CalibrationDataError: naming the count, the source, the minimum, who needs it, and advice for this input.
    """
    if num_samples < minimum:
        raise CalibrationDataError(
            f"{num_samples} calibration sample(s) from {source}, but {needed_by} needs at least {minimum} "
            f"(`num_calibration_samples`; {MIN_CALIBRATION_SAMPLES} or more recommended). "
            + more_samples_advice(config)
        )


def check_sample_count(
    num_samples: int,
    num_gates: int,
    *,
    fisher: bool,
    source: str = "the data",
    config: BlockRemovalConfig | None = None,
) -> None:
    """Refuse a Fisher from fewer samples than gates (H = AᵀA/m has rank at most m, so the energy cannot tell the
    removals apart); warn below `MIN_CALIBRATION_SAMPLES` for any method.

    Raises:
        CalibrationDataError: `fisher` and `num_samples < num_gates`.
    """
    if fisher and num_samples < num_gates:
        raise CalibrationDataError(
            f"{num_samples} calibration sample(s) from {source} for a Fisher over {num_gates} gates: H = AᵀA/m has "
            f"rank at most {num_samples}, so it cannot rank the removals. Give at least {num_gates} samples "
            f"(`num_calibration_samples`; {MIN_CALIBRATION_SAMPLES} or more recommended). "
            + more_samples_advice(config)
        )
    if num_samples < MIN_CALIBRATION_SAMPLES:
        warnings.warn(
            f"Only {num_samples} calibration sample(s) from {source} (fewer than {MIN_CALIBRATION_SAMPLES}): the "
            "ranking rests on very little data; give more samples before trusting it.",
            BlockPruneWarning,
            stacklevel=3,
        )


def require_states(ranking: Ranking, problem: CardinalityProblem | None = None) -> Ranking:
    if not ranking.states:
        rules = sorted({c.name for c in problem.constraints}) if problem is not None else []
        named = f"; here also: {'; '.join(rules)}" if rules else ""
        raise ConfigurationError(
            "No way to remove the requested blocks satisfies every constraint (count, protected/forced blocks, "
            f"kinds, parameter budget, contiguity{named}). Relax one of them."
        )
    return ranking


def blocks_of_sublayers(
    sublayers: Sequence[BlockInfo], removed: Sequence[int], model_type: str
) -> tuple[int, ...]:
    """The blocks a sublayer selection removes; refuses a selection that leaves part of a block behind.

    Raises:
        SurgeryError: some block would lose only part of its sublayers.
    """
    chosen = set(removed)
    by_block: dict[int, list[int]] = {}
    for unit in sublayers:
        by_block.setdefault(unit.block, []).append(unit.index)
    partial = {block: ids for block, ids in by_block.items() if chosen & set(ids) and not set(ids) <= chosen}
    if partial:
        names = [sublayers[i].name for ids in partial.values() for i in ids if i in chosen]
        raise SurgeryError(
            f"This state removes only part of blocks {sorted(partial)} ({', '.join(names)}). A `{model_type}` "
            "checkpoint cannot store a layer without its attention or MLP, so it is not applied. Apply a state "
            "that removes whole blocks, or prune with `granularity='block'`."
        )
    return tuple(sorted(block for block, ids in by_block.items() if set(ids) <= chosen))
