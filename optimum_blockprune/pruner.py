"""`Pruner`: resolve the architecture -> estimate the Fisher -> solve the QUBO -> apply the surgery -> save."""

from __future__ import annotations

import copy
import logging
import os
import tempfile
from collections import Counter
from collections.abc import Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import numpy as np

from .architectures import BlockInfo, get_adapter, model_type_of, supported_model_types
from .architectures.base import TASKS
from .config import BlockRemovalConfig
from .constraints import kind_limit, parameter_budget
from .errors import ConfigurationError, SurgeryError
from .estimation import FisherEstimate, estimate_fisher, prepare_calibration_data
from .estimation.calibration import CalibrationData
from .hub import DEFAULT_COMMIT_MESSAGE
from .qubo import QUBO, CardinalityProblem
from .result import PruningResult, RankedState, Ranking
from .solvers import solve_ranking

if TYPE_CHECKING:
    import torch.nn as nn

    from .distillation import DistillationConfig

logger = logging.getLogger(__name__)

# `from_pretrained` kwargs that the config and tokenizer need as well as the model.
_SHARED_LOAD_KWARGS = (
    "revision",
    "token",
    "cache_dir",
    "trust_remote_code",
    "gguf_file",
    "subfolder",
    "local_files_only",
)


def _count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _is_gguf_quantized(model: nn.Module) -> bool:
    quantization_config = getattr(getattr(model, "hf_quantizer", None), "quantization_config", None)
    method = getattr(quantization_config, "quant_method", None)
    return "gguf" in str(getattr(method, "value", method)).lower()


def _without_gguf_quantizer(model: nn.Module) -> nn.Module:
    """A GGUF-loaded model is already de-quantised in memory but refuses `save_pretrained`; rebuild it as a
    plain model from its config (minus `quantization_config`) with the same weights."""
    config_dict = model.config.to_dict()
    config_dict.pop("quantization_config", None)
    config = type(model.config).from_dict(config_dict)
    plain = type(model)(config).to(dtype=next(model.parameters()).dtype)
    plain.load_state_dict(model.state_dict(), strict=True)
    plain.tie_weights()
    return plain.eval()


def _lora_summary(lora_config: Any) -> dict[str, Any] | None:
    if lora_config is None:
        return None
    targets = getattr(lora_config, "target_modules", None)
    return {
        "r": getattr(lora_config, "r", None),
        "lora_alpha": getattr(lora_config, "lora_alpha", None),
        "target_modules": sorted(targets) if isinstance(targets, (set, list, tuple)) else targets,
        "merged": True,
    }


def removal_problem(
    units: Sequence[dict[str, Any]],
    config: BlockRemovalConfig,
    energy: np.ndarray | None = None,
    *,
    unremovable_kinds: Sequence[str] = (),
) -> CardinalityProblem:
    """The constrained problem for `config` over the gates described by `units` (`BlockInfo.to_dict()`s).

    Pure and cheap: with `energy=None` it runs on a zero matrix, which is how `Pruner` checks a config before
    any calibration. Besides `config`'s own constraints, at least one attention gate always stays (a cache with
    no attention layer breaks cached generation in transformers), and blocks of `unremovable_kinds` are never
    candidates.

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
    allowed = set(config.candidate_kinds or present) - set(unremovable_kinds)
    protected = set(config.protected_blocks)
    candidates = [i for i in range(num_gates) if i not in protected and kinds[i] in allowed]
    excluded = sorted(set(config.forced_blocks) - set(candidates))
    if excluded:
        raise ConfigurationError(
            f"`forced_blocks` {excluded} are not removable here (kinds {[kinds[i] for i in excluded]}; removable "
            f"kinds: {sorted(allowed)}, protected: {sorted(protected)})."
        )
    constraints = []
    num_attention = kinds.count("attention")
    limits = {
        kind: [config.min_removed_per_kind.get(kind, 0), config.max_removed_per_kind.get(kind)]
        for kind in named
    }
    if num_attention:
        cap = limits.setdefault("attention", [0, None])
        cap[1] = num_attention - 1 if cap[1] is None else min(cap[1], num_attention - 1)
    for kind, (low, high) in sorted(limits.items()):
        forced = sum(kinds[i] == kind for i in config.forced_blocks)
        if high is not None and forced > high:
            why = (
                " (one attention block always stays: removing every attention layer breaks cached generation in "
                "transformers)"
                if kind == "attention" and high == num_attention - 1
                else ""
            )
            raise ConfigurationError(
                f"`forced_blocks` {list(config.forced_blocks)} remove {forced} {kind} blocks, but at most {high} may "
                f"be removed{why}. Force fewer {kind} blocks."
            )
        constraints.append(kind_limit(kinds, kind, at_least=low, at_most=high))
    removable_per_kind = Counter(kinds[i] for i in candidates)
    reachable = sum(
        count if limits.get(kind, [0, None])[1] is None else min(count, limits[kind][1])
        for kind, count in removable_per_kind.items()
    )
    if config.num_blocks_to_remove > reachable:
        attention_note = (
            " At least one attention block always stays: removing every attention layer breaks cached generation "
            "in transformers."
            if num_attention
            else ""
        )
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


def _require_states(ranking: Ranking) -> Ranking:
    if not ranking.states:
        raise ConfigurationError(
            "No way to remove the requested blocks satisfies every constraint (count, protected/forced blocks, "
            "kinds, parameter budget, contiguity). Relax one of them."
        )
    return ranking


def rank_from_fisher(
    fisher: FisherEstimate, config: BlockRemovalConfig, *, unremovable_kinds: Sequence[str] = ()
) -> Ranking:
    """Rank the `config.num_states` lowest-energy feasible removals from a Fisher estimate alone (no model)."""
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
    problem = removal_problem(
        units,
        config,
        fisher.energy_matrix(first_order=config.first_order),
        unremovable_kinds=unremovable_kinds,
    )
    ranking = solve_ranking(
        problem,
        config.num_states,
        solver=config.solver,
        time_limit_s=config.solver_time_limit_s,
        seed=config.seed,
        show_progress=config.show_progress,
    )
    return replace(
        _require_states(ranking),
        first_order=config.first_order,
        granularity=granularity,
        kinds=tuple(u["kind"] for u in units),
    )


class Pruner:
    """Remove whole blocks from a Hugging Face model, chosen by constrained binary optimisation.

    Args:
        model: a loaded `transformers` model whose `model_type` is registered (see `supported_model_types()`).
        tokenizer: its tokenizer; needed for text calibration data and saved beside the pruned model.
        model_id: the model's Hub id or path, recorded as `base_model` in the card.
        allow_generic: for an unregistered decoder, guess an adapter from its structure (one block list under
            `get_decoder()`, conventional branch names) instead of refusing; warns.

    Raises:
        UnsupportedArchitectureError: the model's architecture is not registered (before any work).

    Example:

    ```python
    >>> from optimum_blockprune import BlockRemovalConfig, Pruner
    >>> pruner = Pruner.from_pretrained("HuggingFaceTB/SmolLM2-135M-Instruct")  # doctest: +SKIP
    >>> result = pruner.prune(BlockRemovalConfig(num_blocks_to_remove=6), calibration_dataset=texts)  # doctest: +SKIP
    >>> result.removed_blocks  # doctest: +SKIP
    (13, 17, 19, 21, 23, 25)
    >>> pruner.save_pretrained("smollm2-pruned")  # doctest: +SKIP
    ```
    """

    def __init__(
        self,
        model: nn.Module,
        tokenizer: Any | None = None,
        *,
        model_id: str | None = None,
        allow_generic: bool = False,
    ):
        self.adapter = get_adapter(model, allow_generic=allow_generic)
        self.model = model
        self.tokenizer = tokenizer
        self.model_id = model_id or getattr(model.config, "_name_or_path", None) or None
        self.original_blocks = self.adapter.blocks(model)
        self.original_sublayers = self.adapter.units(model, "sublayer")
        self.fisher: FisherEstimate | None = None
        self.ranking: Ranking | None = None
        self.config: BlockRemovalConfig | None = None
        self.result: PruningResult | None = None
        self.distillation: dict[str, Any] | None = None

    # -- loading --------------------------------------------------------------------------------------------
    @classmethod
    def from_pretrained(
        cls,
        model_id: str | os.PathLike,
        *,
        tokenizer: Any | None = None,
        auto_class: Any | None = None,
        allow_generic: bool = False,
        **kwargs: Any,
    ) -> Pruner:
        """Load a model (and its tokenizer) with `from_pretrained`, checking the architecture before the weights.

        Args:
            model_id: Hub id or local directory.
            tokenizer: a tokenizer to use instead of loading one from `model_id`.
            auto_class: the `transformers` auto class (default `AutoModelForCausalLM` for decoders, `AutoModel`
                for encoders).
            allow_generic: use a guessed adapter for an unregistered decoder (see `Pruner`).
            kwargs: passed to `from_pretrained` (e.g. `dtype`, `device_map`, `revision`, `gguf_file`).
        """
        import transformers
        from transformers import AutoConfig, AutoTokenizer

        model_id = os.fspath(model_id)
        shared = {k: kwargs[k] for k in _SHARED_LOAD_KWARGS if k in kwargs}
        model_config = AutoConfig.from_pretrained(model_id, **shared)
        task = "causal-lm"
        if not allow_generic or model_type_of(model_config) in supported_model_types():
            task = get_adapter(model_config).task  # fails before loading any weights
        if auto_class is None:
            auto_class = getattr(transformers, TASKS[task].auto_class)
        model = auto_class.from_pretrained(model_id, **kwargs)
        if _is_gguf_quantized(model):
            model = _without_gguf_quantizer(model)
        if tokenizer is None:
            try:
                tokenizer = AutoTokenizer.from_pretrained(model_id, **shared)
            except (OSError, ValueError) as error:
                logger.warning(
                    "No tokenizer could be loaded from %s (%s); pass `tokenizer=` for text data.",
                    model_id,
                    error,
                )
        return cls(model, tokenizer, model_id=model_id, allow_generic=allow_generic)

    # -- properties ---------------------------------------------------------------------------------------------
    @property
    def num_blocks(self) -> int:
        """Number of blocks of the original (unpruned) model."""
        return len(self.original_blocks)

    def units(self, granularity: str = "block") -> list[BlockInfo]:
        """The optimisation variables of the original model: its blocks, or their sublayers."""
        return list(self.original_blocks if granularity == "block" else self.original_sublayers)

    @property
    def is_pruned(self) -> bool:
        return self.result is not None

    @property
    def pad_token_id(self) -> int:
        """The id padding positions get in calibration batches (they are masked, so any valid id works)."""
        if self.tokenizer is None:
            return 0
        for candidate in (self.tokenizer.pad_token_id, self.tokenizer.eos_token_id):
            if candidate is not None:
                return int(candidate)
        return 0

    # -- stages -------------------------------------------------------------------------------------------------
    def estimate(self, calibration_dataset: Any, config: BlockRemovalConfig | None = None) -> FisherEstimate:
        """Estimate the block Fisher (per-sample gradients A, Hessian H, mean gradient g) on calibration data.

        Uses `config`'s calibration fields (samples, length, batch size, Fisher type, seed); `calibration_dataset`
        may also be already prepared `CalibrationData`. The result is kept on the pruner and can be saved with
        `FisherEstimate.save` and reused for any number of blocks.
        """
        config = config or BlockRemovalConfig()
        self._refuse_if_pruned("estimate")
        fisher_type = self._fisher_type(config)
        calibration = (
            calibration_dataset
            if isinstance(calibration_dataset, CalibrationData)
            else self._prepare(calibration_dataset, config)
        )
        self.fisher = estimate_fisher(
            self.model,
            calibration,
            adapter=self.adapter,
            fisher=fisher_type,
            granularity=config.granularity,
            batch_size=config.batch_size,
            seed=config.seed,
            pad_token_id=self.pad_token_id,
            show_progress=config.show_progress,
            metadata={"model": self.model_id, "max_length": config.max_length},
        )
        return self.fisher

    def solve(
        self, fisher: FisherEstimate | None = None, config: BlockRemovalConfig | None = None
    ) -> Ranking:
        """Rank the `config.num_states` lowest-energy ways to remove `config.num_blocks_to_remove` blocks."""
        fisher = fisher if fisher is not None else self.fisher
        if fisher is None:
            raise ConfigurationError("No Fisher estimate: call `estimate(...)` first or pass `fisher=`.")
        config = config or BlockRemovalConfig()
        expected = len(self.units(fisher.metadata.get("granularity", "block")))
        if fisher.num_gates != expected:
            raise ConfigurationError(
                f"The Fisher estimate covers {fisher.num_gates} gates but the model has {expected}; it was "
                "estimated on a different model."
            )
        self.check_config(config, applying=False)
        self.ranking = rank_from_fisher(fisher, config, unremovable_kinds=self.adapter.unremovable_kinds)
        self.config = config
        return self.ranking

    def apply(self, state: RankedState | int | Sequence[int]) -> PruningResult:
        """Remove blocks from the model in place: a `RankedState`, a rank into the last ranking, or 0-based indices."""
        self._refuse_if_pruned("apply")
        selected_rank: int | None = None
        if isinstance(state, RankedState):
            removed, selected_rank = state.removed_blocks, state.rank
        elif isinstance(state, int):
            if self.ranking is None or not 0 <= state < len(self.ranking):
                available = len(self.ranking) if self.ranking is not None else 0
                raise ConfigurationError(
                    f"`state`={state} is not a rank of the current ranking ({available} states); call `solve` first "
                    "or pass the block indices to remove."
                )
            removed, selected_rank = self.ranking[state].removed_blocks, state
        else:
            removed = tuple(sorted(int(i) for i in state))
        if selected_rank is not None and self.ranking.granularity == "sublayer":
            removed = self._blocks_of_sublayers(removed)
        before = _count_parameters(self.model)
        from .surgery import remove_blocks

        kept = remove_blocks(self.model, removed, self.adapter)
        self.result = PruningResult(
            ranking=self.ranking if selected_rank is not None else None,
            selected_rank=selected_rank,
            removed_blocks=tuple(sorted(set(removed))),
            kept_blocks=tuple(kept),
            num_parameters_before=before,
            num_parameters_after=_count_parameters(self.model),
        )
        logger.info(
            "Pruned %s: removed blocks %s, %.1f%% fewer parameters.",
            self.model_id or type(self.model).__name__,
            list(self.result.removed_blocks),
            100 * self.result.parameter_reduction,
        )
        return self.result

    def select(
        self,
        config: BlockRemovalConfig,
        calibration_dataset: Any = None,
        *,
        fisher: FisherEstimate | None = None,
    ) -> RankedState:
        """Rank removals with `config.method` and choose one with `config.selection`; the model is not changed.

        'cbo' ranks by the QUBO energy (estimating the Fisher unless `fisher` is given); a baseline ranks by its
        own rule (`optimum_blockprune.baselines`). `selection='ground'` returns `ranking[config.selected_state]`;
        `selection='auto'` measures each ranked state on `config.num_selection_samples` calibration samples held
        out from scoring (gates at alpha = 0, unpruned logits reused) and returns the best. The ranking, with
        the measured scores, is kept as `self.ranking`.

        Raises:
            ConfigurationError: the config does not fit the model or lacks data (checked before any work).
        """
        from .baselines import METHOD_INFO, needs_calibration_data, rank_baseline

        self._refuse_if_pruned("select")
        self.check_config(config, applying=False)
        info = METHOD_INFO[config.method]
        scoring, held_out = None, None
        if needs_calibration_data(config, has_fisher=fisher is not None):
            if calibration_dataset is None:
                raise ConfigurationError(
                    f"`method`={config.method!r} with `selection`={config.selection!r} needs calibration data: pass "
                    "`calibration_dataset=` (texts, a dataset, a file or a Hub name)"
                    + (" or `fisher=`." if info.needs_fisher and config.selection != "auto" else ".")
                )
            scoring, held_out = self._calibration_split(calibration_dataset, config)
        if info.needs_fisher:
            fisher = fisher if fisher is not None else self.estimate(scoring, config)
            self.fisher = fisher
        if config.method == "cbo":
            ranking = self.solve(fisher, config)
        else:
            problem = removal_problem(
                [u.to_dict() for u in self.units(config.granularity)],
                config,
                unremovable_kinds=self.adapter.unremovable_kinds,
            )
            ranking = rank_baseline(
                problem,
                config,
                model=self.model,
                adapter=self.adapter,
                data=scoring,
                fisher=fisher,
                pad_token_id=self.pad_token_id,
            )
            ranking = replace(
                _require_states(ranking),
                granularity=config.granularity,
                kinds=tuple(u.kind for u in self.units(config.granularity)),
            )
        if config.selection == "auto":
            ranking = self._measure_states(ranking, config, held_out)
            state = ranking.best_scored()
            logger.info(
                "selection='auto' chose %s:%d (held-out %s %.5g; rank 0 had %.5g).",
                ranking.label,
                state.rank,
                config.selection_metric,
                state.score,
                ranking[0].score,
            )
        else:
            if config.selected_state >= len(ranking):
                raise ConfigurationError(
                    f"`selected_state`={config.selected_state} but only {len(ranking)} feasible states exist."
                )
            state = ranking[config.selected_state]
        self.ranking, self.config = ranking, config
        return state

    def prune(
        self,
        config: BlockRemovalConfig,
        calibration_dataset: Any = None,
        *,
        fisher: FisherEstimate | None = None,
    ) -> PruningResult:
        """`select` (rank with `config.method`, choose with `config.selection`) -> `apply`; return the result.

        Raises:
            ConfigurationError: the config does not fit the model (checked before any calibration).
        """
        self._refuse_if_pruned("prune")
        self.check_config(config, applying=True)
        return self.apply(self.select(config, calibration_dataset, fisher=fisher))

    # -- healing ---------------------------------------------------------------------------------------------------
    def distill(
        self,
        train_dataset: Any,
        args: DistillationConfig,
        *,
        teacher: nn.Module | str | None = None,
        eval_dataset: Any = None,
        lora_config: Any = None,
        num_train_samples: int | None = None,
        callbacks: Sequence[Any] | None = None,
    ) -> dict[str, Any]:
        """Heal the pruned model by KL distillation from `teacher` (`DistillationTrainer`); record the settings.

        Args:
            train_dataset: texts, a dataset, a file or a Hub name (tokenised like calibration data, with this
                pruning's `max_length`/packing), or a `datasets.Dataset` that already has `input_ids`.
            args: a `DistillationConfig` (`TrainingArguments` + temperature, alpha, teacher placement).
            teacher: the unpruned model, or its name/path (loaded with `args.teacher_model_init_kwargs`).
                Default: this pruner's `model_id`.
            eval_dataset: held-out data like `train_dataset`; its KL to the teacher is measured before and after.
            lora_config: a `peft.LoraConfig`: train LoRA adapters on the pruned model, then merge them, so the model
                stays a plain `transformers` model.
            num_train_samples: cap on the training samples taken from `train_dataset`.
            callbacks: extra `TrainerCallback`s.

        Returns:
            The record kept in `self.distillation` (settings, steps, losses) and saved in `blockprune_config.json`
            and the model card.
        """
        from .distillation import DistillationTrainer, PaddingCollator, merge_lora
        from .distillation.config import require_distillation_config
        from .distillation.data import tokenized_training_dataset

        if self.result is None:
            raise SurgeryError("Nothing has been pruned yet; call `prune` or `apply` before `distill`.")
        require_distillation_config(args)
        if teacher is None:
            if not self.model_id:
                raise ConfigurationError(
                    "No `teacher` given and this pruner has no `model_id` to load the unpruned model from; pass "
                    "`teacher=` (the original model, or its name or path)."
                )
            teacher = self.model_id
        data_config = self.config or BlockRemovalConfig()
        train = tokenized_training_dataset(
            train_dataset, self.tokenizer, data_config, num_samples=num_train_samples
        )
        held_out = (
            tokenized_training_dataset(eval_dataset, self.tokenizer, data_config)
            if eval_dataset is not None
            else None
        )
        student = self.model
        if lora_config is not None:
            from peft import get_peft_model

            student = get_peft_model(self.model, lora_config)
        trainer = DistillationTrainer(
            model=student,
            teacher=teacher,
            args=args,
            train_dataset=train,
            eval_dataset=held_out,
            data_collator=PaddingCollator(self.pad_token_id),
            processing_class=self.tokenizer,
            callbacks=list(callbacks or []),
        )
        before = trainer.evaluate()["eval_loss"] if held_out is not None else None
        output = trainer.train()
        after = trainer.evaluate()["eval_loss"] if held_out is not None else None
        self.model = merge_lora(trainer.model).eval()
        del trainer
        self.distillation = {
            **args.distillation_settings(),
            "teacher": teacher if isinstance(teacher, str) else (self.model_id or type(teacher).__name__),
            "lora": _lora_summary(lora_config),
            "train_samples": len(train),
            "train_tokens": int(sum(len(ids) for ids in train["input_ids"])),
            "steps": int(output.global_step),
            "train_loss": float(output.training_loss),
            "eval_kl_before": before,
            "eval_kl_after": after,
        }
        logger.info(
            "Distilled for %d steps (train loss %.4f%s).",
            output.global_step,
            output.training_loss,
            f"; held-out KL {before:.4f} -> {after:.4f}" if held_out is not None else "",
        )
        return self.distillation

    def prune_and_distill(
        self,
        config: BlockRemovalConfig,
        calibration_dataset: Any,
        train_dataset: Any,
        args: DistillationConfig,
        *,
        fisher: FisherEstimate | None = None,
        teacher: nn.Module | str | None = None,
        eval_dataset: Any = None,
        lora_config: Any = None,
        num_train_samples: int | None = None,
        save_directory: str | os.PathLike | None = None,
        overwrite: bool = False,
        repo_id: str | None = None,
        private: bool | None = None,
        token: str | None = None,
    ) -> PruningResult:
        """The one-call path: `prune`, then `distill` from the unpruned model, then save and/or push.

        Without `teacher`, a copy of the model is taken before pruning and used as the teacher (no reload).
        Everything that can be checked up front (the config against the model, the output directory, the
        training arguments) is checked before calibration.
        """
        from .distillation.config import require_distillation_config
        from .hub import ensure_writable_directory

        self._refuse_if_pruned("prune_and_distill")
        self.check_config(config, applying=True)
        require_distillation_config(args)
        if save_directory is not None:
            ensure_writable_directory(save_directory, overwrite)
        if teacher is None:
            teacher = copy.deepcopy(self.model)
        result = self.prune(config, calibration_dataset, fisher=fisher)
        self.distill(
            train_dataset,
            args,
            teacher=teacher,
            eval_dataset=eval_dataset,
            lora_config=lora_config,
            num_train_samples=num_train_samples,
        )
        if save_directory is not None:
            self.save_pretrained(save_directory, overwrite=overwrite, repo_id=repo_id)
        if repo_id is not None:
            self.push_to_hub(repo_id, private=private, token=token)
        return result

    # -- output ---------------------------------------------------------------------------------------------------
    def provenance(self) -> dict[str, Any]:
        """Everything `blockprune_config.json` and the model card record about how the model was pruned."""
        if self.result is None:
            raise SurgeryError("Nothing has been pruned yet; call `prune` or `apply` first.")
        fisher_info = None
        if self.fisher is not None and self.result.ranking is not None:
            fisher_info = {k: v for k, v in self.fisher.metadata.items() if k != "blocks"}
        return {
            "base_model": self.model_id,
            "model_type": self.adapter.model_type,
            "pipeline_tag": self.adapter.task_info.pipeline_tag,
            "auto_class": self.adapter.task_info.auto_class,
            "config": self.config.to_dict() if self.config is not None else None,
            "result": self.result.to_dict(),
            "blocks": [b.to_dict() for b in self.original_blocks],
            "fisher": fisher_info,
            "distillation": self.distillation,
        }

    def save_pretrained(
        self,
        save_directory: str | os.PathLike,
        *,
        overwrite: bool = False,
        repo_id: str | None = None,
        **kwargs: Any,
    ) -> str:
        """Save a standard checkpoint + tokenizer + `blockprune_config.json` + `README.md` model card.

        Raises:
            OutputExistsError: `save_directory` is not empty and `overwrite` is False.
        """
        from .hub import save_pruned_model

        return save_pruned_model(
            save_directory,
            self.model,
            self.tokenizer,
            self.provenance(),
            overwrite=overwrite,
            repo_id=repo_id,
            **kwargs,
        )

    def push_to_hub(
        self,
        repo_id: str,
        *,
        private: bool | None = None,
        token: str | None = None,
        revision: str | None = None,
        commit_message: str = DEFAULT_COMMIT_MESSAGE,
        create_pr: bool = False,
    ):
        """Save into a temporary directory (card rendered for `repo_id`) and upload it in one commit."""
        from .hub import push_folder_to_hub

        with tempfile.TemporaryDirectory() as staging:
            folder = self.save_pretrained(os.path.join(staging, "model"), repo_id=repo_id)
            return push_folder_to_hub(
                folder,
                repo_id,
                private=private,
                token=token,
                revision=revision,
                commit_message=commit_message,
                create_pr=create_pr,
            )

    def check_config(self, config: BlockRemovalConfig, *, applying: bool = True) -> None:
        """Every check that needs only the model's structure, so a bad request fails before calibration.

        Raises:
            ConfigurationError: the config cannot be met on this model, or (with `applying`) its result could not
                be stored as a standard checkpoint.
        """
        from .baselines import METHOD_INFO

        info = METHOD_INFO[config.method]
        if info.needs_fisher:
            self._fisher_type(config)
        evaluates = info.evaluates_removals or config.selection == "auto"
        if evaluates and not self.adapter.gate_zero_removes:
            raise ConfigurationError(
                f"`method`={config.method!r} / `selection`={config.selection!r} evaluate removals by setting gates "
                f"to 0, which does not remove a block in `{self.adapter.model_type}` models (post-norm blocks). Use "
                "a one-shot method and `selection='ground'`."
            )
        if (info.needs_loss or config.selection == "auto") and self.adapter.task != "causal-lm":
            raise ConfigurationError(
                f"`method`={config.method!r} / `selection`={config.selection!r} need next-token predictions, which a "
                f"`{self.adapter.model_type}` model ({self.adapter.task}) does not make. Use 'cbo', "
                "'fisher_diagonal' or a hidden-state baseline with `selection='ground'`."
            )
        removal_problem(
            [u.to_dict() for u in self.units(config.granularity)],
            config,
            unremovable_kinds=self.adapter.unremovable_kinds,
        )
        if not applying:
            return
        reason = self.adapter.config_error(
            config.num_blocks_to_remove, config.contiguous, self.adapter.text_config(self.model)
        )
        if reason:
            raise ConfigurationError(reason)
        if config.granularity == "sublayer" and not self.adapter.sublayer_removal:
            raise ConfigurationError(
                f"`granularity='sublayer'` can score and rank `{self.adapter.model_type}` models, but `prune` cannot "
                "apply the result: transformers has no standard checkpoint for a layer with its attention or MLP "
                "left out (only architectures with one mixer per block, such as nemotron_h, can store it). Use "
                "`Pruner.estimate` + `Pruner.solve` to study sublayer scores, or `granularity='block'` to prune."
            )

    def _fisher_type(self, config: BlockRemovalConfig) -> str:
        allowed = self.adapter.task_info.fisher_types
        if config.fisher == "auto":
            return allowed[0]
        if config.fisher not in allowed:
            raise ConfigurationError(
                f"`fisher`={config.fisher!r} does not suit a `{self.adapter.model_type}` model ({self.adapter.task}); "
                f"use one of {allowed} or 'auto'."
            )
        return config.fisher

    def _blocks_of_sublayers(self, removed: Sequence[int]) -> tuple[int, ...]:
        """The blocks a sublayer selection removes; refuses a selection that leaves part of a block behind."""
        chosen = set(removed)
        by_block: dict[int, list[int]] = {}
        for unit in self.original_sublayers:
            by_block.setdefault(unit.block, []).append(unit.index)
        partial = {
            block: ids for block, ids in by_block.items() if chosen & set(ids) and not set(ids) <= chosen
        }
        if partial:
            names = [self.original_sublayers[i].name for ids in partial.values() for i in ids if i in chosen]
            raise SurgeryError(
                f"This state removes only part of blocks {sorted(partial)} ({', '.join(names)}). A `"
                f"{self.adapter.model_type}` checkpoint cannot store a layer without its attention or MLP, so it is "
                "not applied. Apply a state that removes whole blocks, or prune with `granularity='block'`."
            )
        return tuple(sorted(block for block, ids in by_block.items() if set(ids) <= chosen))

    def _prepare(self, calibration_dataset: Any, config: BlockRemovalConfig) -> CalibrationData:
        calibration = prepare_calibration_data(calibration_dataset, self.tokenizer, config)
        logger.info(
            "Calibration: %d samples, %d tokens from %s.",
            calibration.num_samples,
            calibration.num_tokens,
            calibration.source,
        )
        return calibration

    def _calibration_split(
        self, calibration_dataset: Any, config: BlockRemovalConfig
    ) -> tuple[CalibrationData, CalibrationData | None]:
        """The scoring samples and, for `selection='auto'`, the held-out samples that follow them.

        The scoring part is exactly what `config` alone would prepare (same shuffle, same first samples), so a
        Fisher estimated here matches one estimated without selection.
        """
        if config.selection != "auto":
            return self._prepare(calibration_dataset, config), None
        wanted = config.num_calibration_samples + config.num_selection_samples
        prepared = self._prepare(calibration_dataset, replace(config, num_calibration_samples=wanted))
        total = prepared.num_samples
        held = (
            config.num_selection_samples if total >= wanted else min(config.num_selection_samples, total // 2)
        )
        if held < 1:
            raise ConfigurationError(
                f"`selection='auto'` holds calibration samples out for measuring states, but the data gave only "
                f"{total} sample(s). Provide more calibration data or use `selection='ground'`."
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

    def _measure_states(
        self, ranking: Ranking, config: BlockRemovalConfig, held_out: CalibrationData
    ) -> Ranking:
        """The ranking with every state's held-out `config.selection_metric` recorded in `RankedState.score`."""
        from .evaluation import evaluate_removals

        scores = evaluate_removals(
            self.model,
            held_out,
            [state.removed_blocks for state in ranking],
            metric=config.selection_metric,
            adapter=self.adapter,
            granularity=ranking.granularity,
            batch_size=config.batch_size,
            pad_token_id=self.pad_token_id,
            show_progress=config.show_progress,
        )
        states = tuple(replace(state, score=float(score)) for state, score in zip(ranking, scores))
        return replace(
            ranking,
            states=states,
            selection_metric=config.selection_metric,
            stats={
                **ranking.stats,
                "selection_samples": held_out.num_samples,
                "selection_tokens": held_out.num_tokens,
            },
        )

    def _refuse_if_pruned(self, action: str) -> None:
        if self.result is not None:
            raise SurgeryError(
                f"This pruner has already removed blocks {list(self.result.removed_blocks)}; `{action}` works on the "
                "original model. Create a new `Pruner` from the original model to prune again."
            )
