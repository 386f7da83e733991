"""The ranking-method registry: every way of choosing blocks (CBO and each baseline) is one registered class.

A method declares what it needs (`needs`: the Fisher, hidden-state statistics, measured removals, next-token
predictions), what it costs, and the reference it implements, and implements one function,
`rank(problem, context) -> Ranking`, over the same constrained problem for every method. The `RankingContext`
computes estimates on demand (and keeps them, so a caller can report what was used); a method never loads
data or touches model structure itself.
"""

from __future__ import annotations

import logging
import time
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, ClassVar

from ..registry import Registry
from ..utils import choice_display, current_display

logger = logging.getLogger(__name__)

if TYPE_CHECKING:
    import numpy as np
    import torch.nn as nn

    from ..architectures import ArchitectureAdapter
    from ..config import BlockRemovalConfig
    from ..estimation.calibration import CalibrationData
    from ..estimation.fisher import FisherEstimate
    from ..estimation.measurements import MeasurementCache
    from ..estimation.statistics import ResidualStatistics
    from ..evaluation import RemovalLosses
    from ..qubo import CardinalityProblem
    from ..result import Ranking

#: What a method may need. "fisher": per-sample gate gradients (one forward + backward per batch);
#: "statistics": residual-stream statistics (forwards); "removals": removals measured through gates at 0
#: (needs gates that remove exactly); "next_token": next-token predictions (a language-model head).
NEEDS = ("fisher", "statistics", "removals", "next_token")

METHODS: Registry[RankingMethod] = Registry("method", "optimum_blockprune.methods", "method")


#: `@register_method` on a `RankingMethod` subclass registers it (duplicates refused).
register_method = METHODS.register
available_methods = METHODS.names
#: The registered method by name; an unknown name raises `ConfigurationError` listing the choices.
get_method = METHODS.get


def method_table() -> str:
    """The README's table of registered methods (what each removes, needs, costs, and implements)."""

    def needs(method: RankingMethod) -> str:
        if method.uses_energy:
            return "the energy's (table below)"
        return ", ".join(method.needs) or "nothing"

    return METHODS.table(
        {
            "what it removes": lambda m: m.description,
            "needs": needs,
            "cost": lambda m: m.cost,
            "reference": lambda m: m.reference,
        }
    )


class RankingMethod(ABC):
    """One way to rank removals. Subclass, set the class attributes, implement `rank`, decorate with
    `@register_method`; the config, CLI, ranking tables and the model card pick it up by name.

    Attributes:
        name: the `method=` value.
        label: how its states are named in tables (`label:rank`); default: the name.
        description: one line, what it removes (README table, CLI help, card).
        objective: what `RankedState.energy` holds for this method (table header).
        needs: subset of `NEEDS`.
        cost: forwards/backwards it spends, in words.
        reference: the paper or idea it implements.
        sublayers: it can rank sublayer variables (`granularity="sublayer"`).
        uses_energy: it minimises a registered energy (`config.energy`), so the card shows the energy ranking.
    """

    name: ClassVar[str]
    label: ClassVar[str] = ""
    description: ClassVar[str] = ""
    objective: ClassVar[str] = "score"
    needs: ClassVar[tuple[str, ...]] = ()
    cost: ClassVar[str] = ""
    reference: ClassVar[str] = ""
    sublayers: ClassVar[bool] = False
    uses_energy: ClassVar[bool] = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        unknown = set(cls.needs) - set(NEEDS)
        if unknown:
            raise ValueError(
                f"Method {cls.__name__} declares unknown needs {sorted(unknown)}; allowed: {list(NEEDS)}."
            )

    @property
    def display_label(self) -> str:
        return self.label or self.name

    #: The fewest calibration samples the method is defined on (checked before the model runs).
    min_samples: ClassVar[int] = 1

    def min_samples_for(self, config: BlockRemovalConfig) -> int:
        """The fewest scoring samples ranking with `config` needs (a method whose needs depend on the config
        overrides this)."""
        return self.min_samples

    def requirements(self, config: BlockRemovalConfig) -> tuple[str, ...]:
        """What ranking with `config` needs (a method whose needs depend on the config overrides this)."""
        return tuple(self.needs)

    def objective_for(self, config: BlockRemovalConfig) -> str:
        return self.objective

    @abstractmethod
    def rank(self, problem: CardinalityProblem, context: RankingContext) -> Ranking:
        """The ranked feasible states of `problem` (best first), as a `Ranking`."""

    def estimated_cost(self, problem: CardinalityProblem, context: RankingContext) -> float | None:
        """What ranking `problem` will cost, in forward-equivalents, before it runs (None: not known). A method that
        says opens one progress display for its whole choice, with an overall ETA."""
        return None

    def run(self, problem: CardinalityProblem, context: RankingContext) -> Ranking:
        """`rank`, with the ranking stamped with this method's name, label, objective (and energy); inside one
        progress display for the whole choice when the method can estimate its cost."""
        estimate = self.estimated_cost(problem, context) if context.has_model_and_data else None
        if estimate is None:
            ranking = self.rank(problem, context)
        else:
            with choice_display(
                self.display_label,
                total=estimate,
                enabled=context.config.show_progress,
                full_pass=context.full_pass(),
                start=context.stats.get("forward_equivalents", 0.0),
            ) as display:
                ranking = self.rank(problem, context)
                display.finish()
        return replace(
            ranking,
            method=self.name,
            label=self.display_label,
            objective=self.objective_for(context.config),
            energy_name=context.config.energy if self.uses_energy else None,
            stats={**ranking.stats, **context.stats},
        )

    def run_summary(self, config: BlockRemovalConfig, stats: dict[str, Any]) -> str:
        """What this run did, in a sentence for the card (a method with run-dependent work overrides this)."""
        return self.description

    def info(self, config: BlockRemovalConfig | None = None) -> dict[str, Any]:
        """What provenance and the card record about the method."""
        return {
            "name": self.name,
            "label": self.display_label,
            "description": self.description,
            "objective": self.objective_for(config) if config is not None else self.objective,
            "reference": self.reference,
            "cost": self.cost,
            "uses_energy": self.uses_energy,
        }


@dataclass
class RankingContext:
    """What a method may read: the config, the model (read only) and calibration data, and estimates.

    Estimates are computed on first use and kept in `estimates` ("fisher", "statistics"); an estimate given up
    front (a saved Fisher) is used as is, so ranking from a `FisherEstimate` needs no model at all.
    """

    config: BlockRemovalConfig
    model: nn.Module | None = None
    adapter: ArchitectureAdapter | None = None
    data: CalibrationData | None = None
    pad_token_id: int = 0
    fisher_type: str = "empirical"
    estimates: dict[str, Any] = field(default_factory=dict)
    fisher_metadata: dict[str, Any] = field(default_factory=dict)
    #: diagnostics a method or an energy reports (standard errors, shrinkage, forwards spent); kept in the ranking
    stats: dict[str, Any] = field(default_factory=dict)
    #: blocks already gone: every estimate is taken at the model without them (`partly_pruned`)
    removed: tuple[int, ...] = ()
    #: measured removals kept across rankings (the `Pruner`'s); None: measure everything asked for
    measurements: MeasurementCache | None = None
    _resumable: bool = True

    @property
    def has_model_and_data(self) -> bool:
        return self.model is not None and self.data is not None

    def partly_pruned(self, removed: tuple[int, ...]) -> RankingContext:
        """A context whose estimates (Fisher, statistics, measured removals) are taken at the model with `removed`
        gone: fresh estimates, the same stats (so forwards spent add up)."""
        return replace(self, removed=tuple(sorted(set(removed))), estimates={})

    def _require_model(self, what: str) -> None:
        if self.model is None or self.data is None:
            from ..errors import ConfigurationError

            raise ConfigurationError(
                f"`method`={self.config.method_name!r} needs {what}, which needs a model and calibration data."
            )

    @property
    def forward_options(self) -> dict[str, Any]:
        return {
            "batch_size": self.config.batch_size,
            "max_tokens_per_batch": self.config.max_tokens_per_batch,
            "pad_token_id": self.pad_token_id,
            "show_progress": self.config.show_progress,
        }

    def check_unpruned(self) -> None:
        """Measure the model as it is on one calibration sample before any ranking work: a model whose own loss
        is NaN (a broken weight, fp16 overflow) is refused at once, saying where the NaN came from."""
        from ..evaluation import check_unpruned_loss

        self._require_model("its unpruned loss")
        start = time.perf_counter()
        spent = check_unpruned_loss(self.model, self.data, self.adapter, pad_token_id=self.pad_token_id)
        self._spent("check", 0, start, spent)

    def fisher(self) -> FisherEstimate:
        """The block Fisher of the calibration data (estimated once, on first use)."""
        if "fisher" not in self.estimates:
            from ..estimation.fisher import estimate_fisher

            self._require_model("a Fisher estimate")
            start = time.perf_counter()
            self.estimates["fisher"] = estimate_fisher(
                self.model,
                self.data,
                adapter=self.adapter,
                fisher=self.fisher_type,
                granularity=self.config.granularity,
                seed=self.config.seed,
                removed=self.removed,
                metadata=self.fisher_metadata,
                gradient_checkpointing=self.config.gradient_checkpointing,
                **self.forward_options,
            )
            # a backward costs about two forwards: three block evaluations per block and token
            self._spent("fisher", self.estimates["fisher"].num_samples, start, 3 * self.full_pass())
        return self.estimates["fisher"]

    def _spent(self, kind: str, amount: int, start: float, block_evaluations: int = 0) -> None:
        """Add to the cost record in `stats`: `<kind>_samples` (Fisher: forward + backward per sample;
        statistics: forward per sample), `measured_removals`, `<kind>_seconds` of wall time, and
        `block_evaluations` (one block run on one token = 1; a backward counts as two) with its total in
        forward-equivalents (`forward_equivalents`: full forwards of the model over the calibration samples)."""
        if amount:
            key = "measured_removals" if kind == "measure" else f"{kind}_samples"
            self.stats[key] = self.stats.get(key, 0) + amount
        self.stats[f"{kind}_seconds"] = self.stats.get(f"{kind}_seconds", 0.0) + time.perf_counter() - start
        if block_evaluations:
            total = self.stats.get("block_evaluations", 0) + int(block_evaluations)
            self.stats["block_evaluations"] = total
            self.stats["forward_equivalents"] = round(total / self.full_pass(), 3)
            display = current_display()
            if display is not None:
                display.spent(total / self.full_pass())

    def full_pass(self) -> int:
        """Block evaluations of one forward of the whole model over every calibration sample."""
        return len(self.adapter.block_list(self.model)) * self.data.num_tokens

    def statistics(self, removed: tuple[int, ...] = ()) -> ResidualStatistics:
        """Residual-stream statistics with the blocks in `removed` skipped (the unpruned ones are kept)."""
        from ..estimation.statistics import collect_residual_statistics

        if not removed and "statistics" in self.estimates:
            return self.estimates["statistics"]
        self._require_model("residual-stream statistics")
        start = time.perf_counter()
        stats = collect_residual_statistics(
            self.model,
            self.data,
            adapter=self.adapter,
            removed=tuple(sorted({*self.removed, *removed})),
            **self.forward_options,
        )
        self._spent("statistics", self.data.num_samples, start, self.full_pass())
        if not removed:
            self.estimates["statistics"] = stats
        return stats

    @property
    def removal_metric(self) -> str:
        """What measured energies measure: next-token loss for a language model, the final hidden states'
        distortion (1 - cos per token) for an encoder."""
        from ..evaluation import removal_metric_for

        self._require_model("measured removals")
        return removal_metric_for(self.adapter)

    def measure(
        self,
        removals: list[tuple[int, ...]],
        metric: str | None = None,
        samples: Sequence[int] | None = None,
        *,
        phase: str = "Measured removals",
        progress: bool | None = None,
    ) -> RemovalLosses:
        """Every removal's calibration `metric` on every sample (or on the calibration `samples` given, by index:
        searches measure many states on a few samples and the best few on more), through gates at 0 (no model
        copy). At block granularity each removal re-runs only the blocks from its first removed one (falls back
        to full forwards, once, for an architecture that cannot resume from the residual stream)."""
        from ..estimation.measurements import MeasurementCache

        self._require_model("measured removals")
        metric = metric or self.removal_metric
        data = self.data if samples is None else self.data.subset(samples)
        start = time.perf_counter()
        removals = [tuple(sorted({*self.removed, *removal})) for removal in removals]
        spent = []

        def compute(todo):
            import numpy as np

            from ..finite import require_finite

            losses = self._measure(todo, metric, data, phase=phase, progress=progress)
            spent.append(losses.block_evaluations)
            bad = ~np.isfinite(losses.sums)
            if bad.any():
                row, sample = (int(i) for i in np.argwhere(bad)[0])
                which = f"removing blocks {list(todo[row])}" if todo[row] else "the unpruned model"
                what = f"The calibration {metric} of {which} on sample {sample}"
                require_finite(losses.sums[row, sample], what, model=self.model)
            return losses

        # without the pruner's cache, a call-local one still measures each distinct removal once
        cache = self.measurements if self.measurements is not None else MeasurementCache()
        measured, new = cache.measure(self.model, data, removals, self.config.granularity, metric, compute)
        self._spent("measure", new, start, sum(spent))
        if new < len(removals):
            self.stats["reused_removals"] = self.stats.get("reused_removals", 0) + len(removals) - new
        return measured

    def _measure(
        self,
        removals: list[tuple[int, ...]],
        metric: str,
        data: CalibrationData,
        *,
        phase: str = "Measured removals",
        progress: bool | None = None,
    ) -> RemovalLosses:
        from ..estimation.residual_cache import NotResumableError
        from ..evaluation import removal_losses

        # the bar names the phase ("Single removals", "Correction round 2/3", ...): a user sees what runs
        options = dict(
            metric=metric,
            adapter=self.adapter,
            granularity=self.config.granularity,
            desc=f"{phase} ({len(removals)} removals)",
        )
        forward = dict(self.forward_options)
        if progress is not None:
            forward["show_progress"] = progress and self.config.show_progress
        resume = self._resumable and self.config.granularity == "block"
        try:
            return removal_losses(self.model, data, removals, reuse_prefix=resume, **options, **forward)
        except NotResumableError as error:
            logger.warning("%s Measuring with full forwards.", error)
            self._resumable = False
            return removal_losses(self.model, data, removals, **options, **forward)

    def removal_costs(
        self, removals: list[tuple[int, ...]], metric: str = "loss", *, phase: str = "Measured removals"
    ) -> np.ndarray:
        """The calibration `metric` of each removal (token-weighted over all samples)."""
        return self.measure(removals, metric, phase=phase).mean()

    @property
    def num_gates(self) -> int:
        self._require_model("the model's gates")
        return len(self.adapter.units(self.model, self.config.granularity))

    def single_removals(self) -> RemovalLosses:
        """The model (row 0: unpruned, or without `removed`) and every single removal on top (row i + 1), per
        sample; measured once."""
        if "single_removals" not in self.estimates:
            self.estimates["single_removals"] = self.measure(
                [(), *((i,) for i in range(self.num_gates))], phase="Single removals"
            )
        return self.estimates["single_removals"]


class ImportanceMethod(RankingMethod):
    """A one-shot method: one importance score per block; ranks the feasible sets of smallest total score."""

    @abstractmethod
    def importance(self, problem: CardinalityProblem, context: RankingContext) -> np.ndarray:
        """One score per variable (lower = removed first)."""

    def rank(self, problem: CardinalityProblem, context: RankingContext) -> Ranking:
        from .rules import rank_by_importance

        config = context.config
        return rank_by_importance(
            problem,
            self.importance(problem, context),
            config.num_states,
            solver=config.solver,
            time_limit_s=config.solver_time_limit_s,
        )


class GreedyMethod(RankingMethod):
    """An iterative method: remove the feasible block of lowest `step_costs` one at a time (one state; its
    energy is the sum of the chosen costs with `accumulate`, else the last one; `stats["removal_order"]`)."""

    accumulate: ClassVar[bool] = False

    @abstractmethod
    def step_costs(self, context: RankingContext, removed: tuple[int, ...], options: list[int]) -> np.ndarray:
        """The cost of removing each of `options` next, with `removed` already gone."""

    def rank(self, problem: CardinalityProblem, context: RankingContext) -> Ranking:
        from .rules import greedy_ranking

        spent = []  # block evaluations after each step, so a caller can cost the first m steps

        def costs(removed, options):
            step = self.step_costs(context, removed, options)
            spent.append(context.stats.get("block_evaluations", 0))
            return step

        ranking = greedy_ranking(problem, costs, accumulate=self.accumulate, name=self.name)
        return replace(ranking, stats={**ranking.stats, "step_block_evaluations": spent})
