"""Selection: rank removals with the configured method, then choose one (`selection='ground'` or `'auto'`).

`select_removal` is what `Pruner.select` runs; `rank_from_fisher` ranks from a saved Fisher with no model (the
CLI's `rank --fisher-file`, the training callback). Both return value objects and never change the model.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from .errors import CalibrationDataError, ConfigurationError
from .methods import RankingContext, get_method
from .problem import (
    MIN_SELECTION_SAMPLES,
    check_fisher,
    check_minimum_samples,
    check_sample_count,
    fisher_type,
    removal_problem,
    require_states,
    resolved_for,
)

if TYPE_CHECKING:
    import torch.nn as nn

    from .architectures import ArchitectureAdapter, BlockInfo
    from .config import BlockRemovalConfig
    from .estimation.calibration import CalibrationData
    from .estimation.fisher import FisherEstimate
    from .estimation.measurements import MeasurementCache
    from .qubo import CardinalityProblem
    from .result import RankedState, Ranking

logger = logging.getLogger(__name__)

#: Needs that read calibration data (a given Fisher spares the "fisher" one).
_DATA_NEEDS = ("statistics", "removals")


@dataclass(frozen=True)
class Selection:
    """What `select` decided: the ranking (with held-out scores under `selection='auto'`), the chosen state,
    and the estimates the method used (`"fisher"`, `"statistics"`), keyed by name."""

    ranking: Ranking
    state: RankedState
    config: BlockRemovalConfig
    estimates: dict[str, Any] = field(default_factory=dict)

    @property
    def removed_blocks(self) -> tuple[int, ...]:
        return self.state.removed_blocks

    @property
    def fisher(self) -> FisherEstimate | None:
        return self.estimates.get("fisher")


def needs_calibration_data(config: BlockRemovalConfig, *, has_fisher: bool) -> bool:
    """Whether ranking and choosing with `config` reads calibration data (a given Fisher spares a Fisher-based
    method the estimate, but not `selection='auto'`, which measures states on held-out samples)."""
    needs = get_method(config.method_name).requirements(config)
    return (
        ("fisher" in needs and not has_fisher)
        or any(need in needs for need in _DATA_NEEDS)
        or config.selection == "auto"
        # re-expansion re-estimates at partly pruned models, which a saved Fisher is not
        or bool(config.reexpansion_interval)
    )


def finish_ranking(
    ranking: Ranking, problem: CardinalityProblem, units: Sequence[dict[str, Any]], config: BlockRemovalConfig
) -> Ranking:
    """A method's ranking with the variables' granularity and kinds; refuses an empty one, naming the problem's
    constraints."""
    return replace(
        require_states(ranking, problem),
        granularity=config.granularity,
        kinds=tuple(unit["kind"] for unit in units),
    )


def rank_from_fisher(
    fisher: FisherEstimate,
    config: BlockRemovalConfig,
    *,
    adapter: ArchitectureAdapter | None = None,
    problem: CardinalityProblem | None = None,
) -> Ranking:
    """Rank with `config.method` from a Fisher estimate alone (no model): CBO's energy, Taylor, H_ii.

    `problem` (from `check_request`) spares rebuilding it from the estimate's unit metadata. The architecture's
    rules (blocks it cannot remove or must not leave first) come from `adapter`, or else from the adapter
    registered for the model type the estimate records.

    Raises:
        ConfigurationError: the method or the selection needs more than the Fisher (calibration data).
    """
    config = config.resolved(has_data=False)
    if needs_calibration_data(config, has_fisher=True):
        raise ConfigurationError(
            f"`method`={config.method!r} with `energy`={config.energy!r} and `selection`={config.selection!r} needs "
            "calibration data, not only a Fisher estimate; rank it with `Pruner.select(config, "
            "calibration_dataset)`, or rank from the Fisher alone with `energy='paper'` (or 'first_order') and "
            "`selection='ground'`."
        )
    units = check_fisher(fisher, config)
    if problem is None:
        if adapter is None:
            from .architectures import registered_adapter

            adapter = registered_adapter(fisher.metadata.get("model_type", ""))
        problem = removal_problem(units, config, adapter=adapter)
    context = RankingContext(config, estimates={"fisher": fisher})
    return finish_ranking(get_method(config.method).run(problem, context), problem, units, config)


def calibration_split(
    calibration_dataset: Any, tokenizer: Any, config: BlockRemovalConfig, *, model: nn.Module | None = None
) -> tuple[CalibrationData, CalibrationData | None]:
    """The scoring samples and, for `selection='auto'`, the held-out samples that follow them.

    The scoring part is exactly what `config` alone would prepare (same shuffle, same first samples), so a
    Fisher estimated here matches one estimated without selection.
    """
    from .estimation.calibration import CalibrationData

    if config.selection != "auto":
        return prepare_scoring_data(calibration_dataset, tokenizer, config, model=model), None
    wanted = config.num_calibration_samples + config.num_selection_samples
    prepared = prepare_scoring_data(calibration_dataset, tokenizer, config, model=model, num_samples=wanted)
    total = prepared.num_samples
    held = config.num_selection_samples if total >= wanted else min(config.num_selection_samples, total // 2)
    if held < MIN_SELECTION_SAMPLES:
        raise CalibrationDataError(
            f"`selection='auto'` compares states on held-out calibration samples, but the data gave only {total} "
            f"sample(s), {held} of which could be held out (at least {MIN_SELECTION_SAMPLES} are needed; "
            f"{wanted} asked for: `num_calibration_samples` + `num_selection_samples`). Provide more calibration "
            "data or use `selection='ground'`."
        )
    if total < wanted:
        logger.warning(
            "Only %d calibration samples: %d score the blocks and %d are held out for `selection='auto'`.",
            total,
            total - held,
            held,
        )
    source = prepared.source
    return (
        CalibrationData(prepared.samples[: total - held], source),
        CalibrationData(prepared.samples[total - held :], f"{source} (held out)"),
    )


def prepare_scoring_data(
    data: Any,
    tokenizer: Any,
    config: BlockRemovalConfig,
    *,
    model: nn.Module | None = None,
    num_samples: int | None = None,
) -> CalibrationData:
    """`config`'s calibration samples from `data` (token ids checked against `model`'s vocabulary)."""
    from .estimation.calibration import prepare_calibration_data

    vocab_size = model.get_input_embeddings().num_embeddings if model is not None else None
    prepared = prepare_calibration_data(
        data, tokenizer, vocab_size=vocab_size, **config.calibration_options(num_samples)
    )
    if config.calibration_name:  # the user's name for in-memory data (a list has none of its own)
        prepared = replace(prepared, source=config.calibration_name)
    logger.info(
        "Calibration: %d samples, %d tokens from %s.",
        prepared.num_samples,
        prepared.num_tokens,
        prepared.source,
    )
    return prepared


def add_candidates(ranking: Ranking, problem: CardinalityProblem, context: RankingContext) -> Ranking:
    """The ranking with the ground state of every `config.auto_candidates` method appended (once per distinct
    state), priced by the ranking's energy where the method left one (`context.estimates["energy_matrix"]`)."""
    import numpy as np

    from .result import RankedState

    q = context.estimates.get("energy_matrix")
    states = list(ranking.states)
    seen = {state.removed_blocks for state in states}
    for name in context.config.auto_candidates:
        if name == ranking.method:
            continue
        other = get_method(name).run(problem, context)
        if not other.states or other[0].removed_blocks in seen:
            continue
        blocks = other[0].removed_blocks
        seen.add(blocks)
        energy = float(q[np.ix_(blocks, blocks)].sum()) if q is not None else float("nan")
        states.append(RankedState(len(states), blocks, energy, proven=False, source=name))
    return replace(ranking, states=tuple(states))


def measure_states(
    model: nn.Module,
    adapter: ArchitectureAdapter,
    ranking: Ranking,
    config: BlockRemovalConfig,
    held_out: CalibrationData,
    *,
    pad_token_id: int = 0,
) -> Ranking:
    """The ranking with every state's held-out `config.selection_metric` recorded in `RankedState.score`."""
    from .evaluation import evaluate_removals

    scores = evaluate_removals(
        model,
        held_out,
        [state.removed_blocks for state in ranking],
        metric=config.selection_metric,
        adapter=adapter,
        granularity=ranking.granularity,
        batch_size=config.batch_size,
        max_tokens_per_batch=config.max_tokens_per_batch,
        pad_token_id=pad_token_id,
        show_progress=config.show_progress,
    )
    states = tuple(replace(state, score=float(score)) for state, score in zip(ranking, scores))
    stats = {
        **ranking.stats,
        "selection_samples": held_out.num_samples,
        "selection_tokens": held_out.num_tokens,
    }
    return replace(ranking, states=states, selection_metric=config.selection_metric, stats=stats)


def choose(ranking: Ranking, config: BlockRemovalConfig) -> RankedState:
    """`ranking[config.selected_state]`, or the best measured state under `selection='auto'`."""
    if config.selection == "auto":
        state = ranking.best_scored()
        logger.info(
            "selection='auto' chose %s:%d (held-out %s %.5g; rank 0 had %.5g).",
            ranking.label,
            state.rank,
            config.selection_metric,
            state.score,
            ranking[0].score,
        )
        return state
    if config.selected_state >= len(ranking):
        raise ConfigurationError(
            f"`selected_state`={config.selected_state} but only {len(ranking)} feasible states exist."
        )
    return ranking[config.selected_state]


def check_given_fisher(
    fisher: FisherEstimate,
    config: BlockRemovalConfig,
    *,
    model: nn.Module,
    adapter: ArchitectureAdapter,
    num_gates: int,
) -> None:
    """A Fisher the caller passed must fit the config and the model's gates (`check_fisher`) and, unless
    `verify_fisher_model=False`, come from this model's weights (`check_fisher_identity`)."""
    check_fisher(fisher, config, num_gates)
    if config.verify_fisher_model:
        from .estimation.identity import check_fisher_identity

        check_fisher_identity(fisher, model, adapter)


def select_removal(
    problem: CardinalityProblem,
    config: BlockRemovalConfig,
    *,
    model: nn.Module,
    adapter: ArchitectureAdapter,
    units: Sequence[BlockInfo],
    calibration_dataset: Any = None,
    tokenizer: Any = None,
    fisher: FisherEstimate | None = None,
    pad_token_id: int = 0,
    fisher_metadata: dict[str, Any] | None = None,
    measurements: MeasurementCache | None = None,
) -> Selection:
    """Rank with `config.method` over `problem` (from `check_request`), choose with `config.selection`.

    Raises:
        ConfigurationError: the method needs calibration data that was not given, or a given Fisher does not
            fit the model.
    """
    config = resolved_for(adapter, config, has_data=calibration_dataset is not None)
    method = get_method(config.method)
    needs = method.requirements(config)
    unit_dicts = [unit.to_dict() for unit in units]
    if fisher is not None:
        check_given_fisher(fisher, config, model=model, adapter=adapter, num_gates=len(units))
    scoring = held_out = None
    if needs_calibration_data(config, has_fisher=fisher is not None):
        if calibration_dataset is None:
            raise ConfigurationError(
                f"`method`={config.method!r} with `selection`={config.selection!r} needs calibration data: pass "
                "`calibration_dataset=` (texts, token ids, a dataset, a file or a Hub name)"
                + (" or `fisher=`." if "fisher" in needs and config.selection != "auto" else ".")
            )
        scoring, held_out = calibration_split(calibration_dataset, tokenizer, config, model=model)
        # an energy built on H needs H of full rank; Taylor's g and the diagonal H_ii do not
        estimates_fisher = fisher is None and "fisher" in needs and method.uses_energy
        minimum = method.min_samples_for(config)
        needed_by = f"`energy`={config.energy!r}" if method.uses_energy else f"`method`={config.method!r}"
        check_minimum_samples(scoring.num_samples, minimum, needed_by, source=scoring.source, config=config)
        check_sample_count(
            scoring.num_samples, len(units), fisher=estimates_fisher, source=scoring.source, config=config
        )
    context = RankingContext(
        config,
        model=model,
        adapter=adapter,
        data=scoring,
        pad_token_id=pad_token_id,
        fisher_type=fisher_type(adapter, config) if "fisher" in needs else "empirical",
        estimates={"fisher": fisher} if fisher is not None else {},
        fisher_metadata={"max_length": config.max_length, **(fisher_metadata or {})},
        measurements=measurements,
    )
    if scoring is not None and model is not None:
        context.check_unpruned()
    ranking = finish_ranking(method.run(problem, context), problem, unit_dicts, config)
    if scoring is not None:  # named in the card whatever the method (a Fisher's metadata has its own)
        ranking.stats["calibration"] = scoring.summary()
    if config.selection == "auto":
        ranking = add_candidates(ranking, problem, context)
        ranking = measure_states(model, adapter, ranking, config, held_out, pad_token_id=pad_token_id)
    return Selection(ranking, choose(ranking, config), config, dict(context.estimates))


def resolve_state(
    state: RankedState | int | Sequence[int],
    ranking: Ranking | None,
    sublayers: Sequence[BlockInfo],
    model_type: str,
) -> tuple[tuple[int, ...], int | None]:
    """The blocks a state removes (a `RankedState`, a rank into `ranking`, or 0-based block indices; sublayer
    states mapped to whole blocks) and its rank, if it has one.

    Raises:
        ConfigurationError: a rank that `ranking` does not have.
        SurgeryError: a sublayer state that would leave part of a block.
    """
    from .problem import blocks_of_sublayers

    if isinstance(state, int):
        if ranking is None or not 0 <= state < len(ranking):
            available = len(ranking) if ranking is not None else 0
            raise ConfigurationError(
                f"`state`={state} is not a rank of the current ranking ({available} states); call `solve` first "
                "or pass the block indices to remove."
            )
        state = ranking[state]
    elif not hasattr(state, "removed_blocks"):
        from .utils import block_indices

        return block_indices(
            state, "state", num_blocks=len({s.block for s in sublayers}), non_empty=True
        ), None
    removed = state.removed_blocks
    if ranking is not None and ranking.granularity == "sublayer":
        removed = blocks_of_sublayers(sublayers, removed, model_type)
    return removed, state.rank
