"""`Pruner`: the front door. Each method is a few lines over the modules that hold the logic:
`loading` (from_pretrained), `problem` (checks, the constrained problem), `selection` (rank + choose),
`surgery` (the only structural change), `distillation.healing` (retraining) and `hub` (save, card, push)."""

from __future__ import annotations

import copy
import logging
import os
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, replace
from typing import TYPE_CHECKING, Any

from .architectures import BlockInfo, get_adapter
from .config import BlockRemovalConfig
from .errors import ConfigurationError, SurgeryError
from .estimation.measurements import MeasurementCache
from .problem import check_request, check_sample_count, fisher_type, resolved_for
from .result import PruningResult, RankedState, Ranking
from .selection import Selection, check_given_fisher, rank_from_fisher, resolve_state, select_removal

if TYPE_CHECKING:
    import torch.nn as nn

    from .distillation import DistillationConfig
    from .estimation import FisherEstimate
    from .qubo import CardinalityProblem
    from .sweep import SpeedMeasurement, SpeedSettings, SweepResult

logger = logging.getLogger(__name__)


class Pruner:
    """Remove whole blocks from a Hugging Face model, chosen by constrained binary optimisation.

    Args:
        model: a loaded `transformers` model whose `model_type` is registered (see `supported_model_types()`).
        tokenizer: its tokenizer; needed for text calibration data (not for token ids) and saved beside the
            pruned model.
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
        #: held-out measurements of this model at each stage (`evaluate`), shown in the card
        self.evaluations: list[dict[str, Any]] = []
        #: where the weights came from when not a plain checkpoint (a GGUF file), for the card
        self.loaded_from: dict[str, Any] | None = None
        self.last_sweep: SweepResult | None = None
        self.speed_measurements: list[dict[str, Any]] = []
        #: removals measured on calibration data, reused by later selections on the same model and data
        self.measurements = MeasurementCache()

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
        """Load a model (Hub id or directory) and its tokenizer, checking the architecture before the weights
        (`loading.load_pretrained`: `auto_class` defaults to the task's, `kwargs` go to `from_pretrained`)."""
        from .loading import load_pretrained

        model, tokenizer = load_pretrained(
            model_id, tokenizer=tokenizer, auto_class=auto_class, allow_generic=allow_generic, **kwargs
        )
        pruner = cls(model, tokenizer, model_id=os.fspath(model_id), allow_generic=allow_generic)
        if kwargs.get("gguf_file"):
            from .loading import gguf_provenance

            pruner.loaded_from = gguf_provenance(os.fspath(model_id), kwargs["gguf_file"])
        return pruner

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
        from .estimation.calibration import padding_id

        return padding_id(self.tokenizer)

    # -- stages -------------------------------------------------------------------------------------------------
    def check_config(self, config: BlockRemovalConfig, *, applying: bool = True) -> CardinalityProblem:
        """Every check that needs only the model's structure (`problem.check_request`), so a bad request fails
        before calibration; returns the constrained problem the method ranks over.

        Raises:
            ConfigurationError: the config cannot be met on this model, or (with `applying`) its result could not
                be stored as a standard checkpoint.
        """
        self._check_checkpointing(config)
        return check_request(
            self.adapter,
            self.units(config.granularity),
            config,
            model_config=self.adapter.text_config(self.model),
            applying=applying,
        )

    def _check_checkpointing(self, config: BlockRemovalConfig) -> None:
        if config.gradient_checkpointing and not getattr(
            self.model, "supports_gradient_checkpointing", False
        ):
            raise ConfigurationError(
                f"`gradient_checkpointing=True`, but a `{type(self.model).__name__}` does not support activation "
                "checkpointing; bound memory with a smaller `max_tokens_per_batch` instead."
            )

    def estimate(
        self,
        calibration_dataset: Any,
        config: BlockRemovalConfig | None = None,
        *,
        checkpoint_dir: str | os.PathLike | None = None,
        checkpoint_every: int = 64,
    ) -> FisherEstimate:
        """Estimate the block Fisher (per-sample gradients A, Hessian H, mean gradient g) on calibration data.

        Uses `config`'s calibration fields (samples, length, batch size or token budget, Fisher type, seed);
        `calibration_dataset` is anything `prepare_calibration_data` reads (texts, token ids, datasets, files,
        `CalibrationData`). The result is kept on the pruner and can be saved with `FisherEstimate.save` and reused
        for any M. With `checkpoint_dir`, the rows done so far are written there every `checkpoint_every` samples;
        run the same call again after a crash and it resumes from them. Under `accelerate launch` each process
        estimates its share of the samples and every process returns the whole estimate.

        Raises:
            CheckpointError: `checkpoint_dir` holds rows of another pass (other data, model or Fisher settings).
        """
        from .estimation import estimate_fisher
        from .selection import prepare_scoring_data

        config = config or BlockRemovalConfig()
        self._refuse_if_pruned("estimate")
        self._check_checkpointing(config)
        if checkpoint_dir is not None:
            from .utils import check_output_directory

            check_output_directory(checkpoint_dir, "checkpoint_dir")
        kind = fisher_type(self.adapter, config)
        data = prepare_scoring_data(calibration_dataset, self.tokenizer, config, model=self.model)
        check_sample_count(
            data.num_samples,
            len(self.units(config.granularity)),
            fisher=True,
            source=data.source,
            config=config,
        )
        from .evaluation import check_unpruned_loss

        check_unpruned_loss(self.model, data, self.adapter, pad_token_id=self.pad_token_id)
        self.fisher = estimate_fisher(
            self.model,
            data,
            adapter=self.adapter,
            fisher=kind,
            granularity=config.granularity,
            batch_size=config.batch_size,
            seed=config.seed,
            pad_token_id=self.pad_token_id,
            show_progress=config.show_progress,
            metadata={"model": self.model_id, "max_length": config.max_length},
            max_tokens_per_batch=config.max_tokens_per_batch,
            gradient_checkpointing=config.gradient_checkpointing,
            checkpoint_dir=checkpoint_dir,
            checkpoint_every=checkpoint_every,
        )
        return self.fisher

    def solve(
        self, fisher: FisherEstimate | None = None, config: BlockRemovalConfig | None = None
    ) -> Ranking:
        """Rank the `config.num_states` best ways to remove `config.num_blocks_to_remove` blocks from a Fisher
        estimate alone (CBO's energy, or a Fisher-based baseline); the model is not run."""
        fisher = fisher if fisher is not None else self.fisher
        if fisher is None:
            raise ConfigurationError("No Fisher estimate: call `estimate(...)` first or pass `fisher=`.")
        config = config or BlockRemovalConfig()
        check_given_fisher(
            fisher,
            config,
            model=self.model,
            adapter=self.adapter,
            num_gates=len(self.units(config.granularity)),
        )
        self.ranking = rank_from_fisher(fisher, config, problem=self.check_config(config, applying=False))
        self.fisher, self.config = fisher, config
        return self.ranking

    def select(
        self,
        config: BlockRemovalConfig,
        calibration_dataset: Any = None,
        *,
        fisher: FisherEstimate | None = None,
    ) -> Selection:
        """Rank removals with `config.method` and choose one with `config.selection`; the model is not changed.

        `selection='ground'` takes `ranking[config.selected_state]`; `selection='auto'` measures each ranked state
        on `config.num_selection_samples` calibration samples held out from scoring (gates at alpha = 0) and
        takes the best. Returns a `Selection` (ranking, chosen state, estimates used); the ranking and Fisher
        are also kept as `self.ranking` / `self.fisher`.

        Raises:
            ConfigurationError: the config does not fit the model or lacks data (checked before any work).
        """
        return self._select(config, calibration_dataset, fisher, applying=False)

    def apply(self, state: Selection | RankedState | int | Sequence[int]) -> PruningResult:
        """Remove blocks from the model in place: a `Selection`, a `RankedState`, a rank into the last ranking,
        or 0-based block indices."""
        from .surgery import apply_removal

        self._refuse_if_pruned("apply")
        state = state.state if isinstance(state, Selection) else state
        removed, rank = resolve_state(state, self.ranking, self.original_sublayers, self.adapter.model_type)
        self.result = apply_removal(
            self.model, removed, self.adapter, ranking=self.ranking, selected_rank=rank
        )
        logger.info(
            "Pruned %s: removed blocks %s, %.1f%% fewer parameters.",
            self.model_id or type(self.model).__name__,
            list(self.result.removed_blocks),
            100 * self.result.parameter_reduction,
        )
        return self.result

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
        return self.apply(self._select(config, calibration_dataset, fisher, applying=True))

    def sweep(
        self,
        config: BlockRemovalConfig,
        calibration_dataset: Any,
        num_blocks: Sequence[int],
        *,
        num_eval_samples: int = 16,
        speed: bool = True,
        speed_settings: SpeedSettings | None = None,
    ) -> SweepResult:
        """How many blocks can I remove? For each M in `num_blocks`: `config.method`'s pick (on the same scoring
        samples, measurements shared across M), its held-out perplexity and per-token KL to the unpruned model on
        the `num_eval_samples` samples that follow the scoring ones in the data (never seen by the ranking), the
        parameters it removes, and (with `speed`) the prefill and decode tokens/s of the pruned architecture,
        timed where the model lives against the unpruned model in the same run. The model is left untouched; at
        most one pruned copy exists at a time, sharing the original's weights.

        Raises:
            ConfigurationError: a count that is not a distinct integer in 1..N - 1, or one the config's
                constraints cannot meet, before any calibration.
            CalibrationDataError: too little data for the scoring and held-out samples.
        """
        import numpy as np

        from .errors import CalibrationDataError
        from .estimation.forward import input_device
        from .evaluation import removal_losses
        from .selection import prepare_scoring_data
        from .surgery import pruned_copy
        from .sweep import SpeedSettings, SweepPoint, SweepResult, block_counts, check_eval_samples

        self._refuse_if_pruned("sweep")
        config = resolved_for(self.adapter, config)
        counts = block_counts(num_blocks, self.num_blocks)
        for count in counts:  # every M's constraints before any work
            self.check_config(replace(config, num_blocks_to_remove=count), applying=False)
        check_eval_samples(num_eval_samples)
        settings = speed_settings or SpeedSettings()
        start = time.perf_counter()
        wanted = config.num_calibration_samples + num_eval_samples
        prepared = prepare_scoring_data(
            calibration_dataset, self.tokenizer, config, model=self.model, num_samples=wanted
        )
        if prepared.num_samples < config.num_calibration_samples + 2:
            raise CalibrationDataError(
                f"A sweep scores on `num_calibration_samples`={config.num_calibration_samples} samples and measures "
                f"quality on the next {num_eval_samples}, but {prepared.source} gave {prepared.num_samples}: give "
                "more data or fewer `num_calibration_samples`."
            )
        scoring = prepared.subset(range(config.num_calibration_samples))
        held_out = prepared.subset(range(config.num_calibration_samples, prepared.num_samples))
        before = (self.ranking, self.config)
        picks, costs, seconds = [], [], []
        for count in counts:
            began = time.perf_counter()
            selection = self.select(replace(config, num_blocks_to_remove=count), scoring)
            picks.append(selection.removed_blocks)
            costs.append(int(selection.ranking.stats.get("block_evaluations", 0)))
            seconds.append(time.perf_counter() - began)
        self.ranking, self.config = before
        # quality through the gates (a gate at 0 is the removal, exactly), every pick in one pass per batch
        options = dict(adapter=self.adapter, pad_token_id=self.pad_token_id, batch_size=config.batch_size)
        losses = removal_losses(self.model, held_out, [(), *picks], metric="loss", **options).mean()
        kls = removal_losses(self.model, held_out, picks, metric="kl", **options).mean()
        total = sum(p.numel() for p in self.model.parameters())
        speeds: list[Any] = [None] * len(picks)
        unpruned_speed = None
        if speed:
            unpruned_speed = self._speed_of(self.model, settings)
            for index, removed in enumerate(picks):
                twin = pruned_copy(self.model, removed, self.adapter)
                speeds[index] = self._speed_of(twin, settings)
                del twin  # one pruned copy at a time
        points = [
            SweepPoint(
                num_blocks=count,
                removed_blocks=tuple(removed),
                perplexity=float(np.exp(losses[index + 1])),
                kl=float(kls[index]),
                parameters_removed=sum(self.original_blocks[b].num_parameters for b in removed) / total,
                active_parameters_removed=sum(self.original_blocks[b].num_active_parameters for b in removed)
                / total,
                block_evaluations=costs[index],
                seconds=seconds[index],
                speed=speeds[index],
            )
            for index, (count, removed) in enumerate(zip(counts, picks))
        ]
        self.last_sweep = SweepResult(
            method=config.method,
            num_blocks_total=self.num_blocks,
            unpruned_perplexity=float(np.exp(losses[0])),
            points=points,
            held_out=held_out.summary(),
            device=str(input_device(self.model)),
            speed_settings=settings if speed else None,
            unpruned_speed=unpruned_speed,
            seconds=time.perf_counter() - start,
        )
        return self.last_sweep

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
        """Heal the pruned model by KL distillation from `teacher` (`DistillationTrainer`; see
        `distillation.healing.heal` for every argument) and record the settings in provenance and the card.

        `train_dataset` / `eval_dataset` are anything calibration accepts (tokenised with this pruning's
        `max_length`/packing); `teacher` defaults to this pruner's `model_id`; `lora_config` trains merged LoRA
        adapters. Returns the record kept in `self.distillation`.
        """
        from .distillation.config import require_distillation_config
        from .distillation.healing import heal

        if self.result is None:
            raise SurgeryError("Nothing has been pruned yet; call `prune` or `apply` before `distill`.")
        require_distillation_config(args)
        if teacher is None and not self.model_id:
            raise ConfigurationError(
                "No `teacher` given and this pruner has no `model_id` to load the unpruned model from; pass "
                "`teacher=` (the original model, or its name or path)."
            )
        self.model, self.distillation = heal(
            self.model,
            train_dataset,
            args,
            teacher=self.model_id if teacher is None else teacher,
            teacher_name=self.model_id,
            tokenizer=self.tokenizer,
            pad_token_id=self.pad_token_id,
            data_options=(self.config or BlockRemovalConfig()).calibration_options(),
            eval_dataset=eval_dataset,
            lora_config=lora_config,
            num_train_samples=num_train_samples,
            callbacks=callbacks,
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
        save_directory: str | os.PathLike | None = None,
        overwrite: bool = False,
        repo_id: str | None = None,
        private: bool | None = None,
        token: str | None = None,
        **distill_kwargs: Any,
    ) -> PruningResult:
        """The one-call path: `prune`, then `distill` from the unpruned model, then save and/or push.

        Without `teacher`, a copy of the model is taken before pruning and used as the teacher (no reload).
        Everything that can be checked up front (the config against the model, the output directory, the
        training arguments) is checked before calibration. `distill_kwargs`: `eval_dataset`, `lora_config`,
        `num_train_samples` (see `distill`).
        """
        from .distillation.config import require_distillation_config
        from .hub import ensure_writable_directory

        self._refuse_if_pruned("prune_and_distill")
        self.check_config(config, applying=True)
        require_distillation_config(args)
        if save_directory is not None:
            ensure_writable_directory(save_directory, overwrite)
        teacher = copy.deepcopy(self.model) if teacher is None else teacher
        result = self.prune(config, calibration_dataset, fisher=fisher)
        self.distill(train_dataset, args, teacher=teacher, **distill_kwargs)
        if save_directory is not None:
            self.save_pretrained(save_directory, overwrite=overwrite, repo_id=repo_id)
        if repo_id is not None:
            self.push_to_hub(repo_id, private=private, token=token)
        return result

    def evaluate(
        self, data: Any, *, max_length: int = 512, batch_size: int = 8, dataset_name: str | None = None
    ) -> float:
        """Held-out next-token perplexity of the model as it is now (unpruned, pruned, or pruned and distilled),
        recorded for the model card, which shows the stages measured on the same data side by side.

        `data`: texts (tokenised in order, truncated to `max_length`) or `CalibrationData`; it should be held out
        from the calibration data. `dataset_name` names it in the card (default: its source).
        """
        from .evaluation import as_evaluation_data, evaluate_perplexity

        prepared = as_evaluation_data(data, self.tokenizer, max_length)
        value = evaluate_perplexity(
            self.model, prepared, batch_size=batch_size, pad_token_id=self.pad_token_id
        )
        stage = self._stage
        self.evaluations.append(
            {
                "metric": "perplexity",
                "stage": stage,
                "value": value,
                "dataset": dataset_name or prepared.source,
                **prepared.summary(),
            }
        )
        logger.info("Held-out perplexity (%s): %.4g on %d tokens.", stage, value, prepared.num_tokens)
        return value

    def measure_speed(self, settings: SpeedSettings | None = None) -> SpeedMeasurement:
        """Prefill and decode tokens/s of the model as it is now (unpruned or pruned), where it lives; recorded
        for the card, which shows the speed-up when both stages were measured (measure before pruning, then after).
        Medians of `settings.repeats` timings after a warm-up; timings are this machine's, and the card says so."""
        from .estimation.forward import input_device
        from .sweep import SpeedSettings

        settings = settings or SpeedSettings()
        measured = self._speed_of(self.model, settings)
        stage = self._stage
        self.speed_measurements.append(
            {
                "stage": stage,
                "device": str(input_device(self.model)),
                "prefill_tokens_per_s": measured.prefill_tokens_per_s,
                "decode_tokens_per_s": measured.decode_tokens_per_s,
                "settings": asdict(settings),
            }
        )
        logger.info(
            "Speed (%s): prefill %.0f tokens/s, decode %s tokens/s.",
            stage,
            measured.prefill_tokens_per_s,
            f"{measured.decode_tokens_per_s:.0f}" if measured.decode_tokens_per_s else "–",
        )
        return measured

    @property
    def _stage(self) -> str:
        """What the card calls the model as it is now."""
        return "unpruned" if self.result is None else "pruned + distilled" if self.distillation else "pruned"

    def _speed_of(self, model: nn.Module, settings: SpeedSettings) -> SpeedMeasurement:
        """`sweep.measure_speed` of `model` (this pruner's model, or a pruned copy of it)."""
        from .sweep import measure_speed

        return measure_speed(
            model,
            vocab_size=self.model.get_input_embeddings().num_embeddings,
            settings=settings,
            generates=self.adapter.task == "causal-lm",
        )

    # -- output ---------------------------------------------------------------------------------------------------
    def provenance(self) -> dict[str, Any]:
        """Everything `blockprune_config.json` and the model card record about how the model was pruned."""
        from .hub import base_card_metadata, pruning_provenance

        if self.result is None:
            raise SurgeryError("Nothing has been pruned yet; call `prune` or `apply` first.")
        return pruning_provenance(
            model_id=self.model_id,
            adapter=self.adapter,
            config=self.config,
            result=self.result,
            blocks=self.original_blocks,
            fisher=self.fisher,
            distillation=self.distillation,
            evaluations=self.evaluations,
            loaded_from=self.loaded_from,
            speed=self.speed_measurements,
            sweep=self.last_sweep.to_dict() if self.last_sweep is not None else None,
            base_card=base_card_metadata(self.model_id, local_weights=bool(self.loaded_from)),
        )

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

    def push_to_hub(self, repo_id: str, **kwargs: Any):
        """Save into a temporary directory (card rendered for `repo_id`) and upload it in one commit; `kwargs`
        (`private`, `token`, `revision`, `commit_message`, `create_pr`) go to `hub.push_folder_to_hub`."""
        from .hub import push_folder_to_hub

        hint = f"`pruner.save_pretrained(DIR)` (the pruned model is still in memory), then `optimum-blockprune push DIR {repo_id}`"
        with tempfile.TemporaryDirectory() as staging:
            folder = self.save_pretrained(os.path.join(staging, "model"), repo_id=repo_id)
            return push_folder_to_hub(folder, repo_id, retry_hint=hint, **kwargs)

    # -- helpers ----------------------------------------------------------------------------------------------------
    def _select(
        self, config: BlockRemovalConfig, data: Any, fisher: FisherEstimate | None, *, applying: bool
    ) -> Selection:
        self._refuse_if_pruned("prune" if applying else "select")
        config = resolved_for(self.adapter, config, has_data=data is not None)
        selection = select_removal(
            self.check_config(config, applying=applying),
            config,
            model=self.model,
            adapter=self.adapter,
            units=self.units(config.granularity),
            calibration_dataset=data,
            tokenizer=self.tokenizer,
            fisher=fisher,
            pad_token_id=self.pad_token_id,
            fisher_metadata={"model": self.model_id},
            measurements=self.measurements,
        )
        self.ranking, self.config = selection.ranking, config
        self.fisher = selection.fisher if selection.fisher is not None else self.fisher
        return selection

    def _refuse_if_pruned(self, action: str) -> None:
        if self.result is not None:
            raise SurgeryError(
                f"This pruner has already removed blocks {list(self.result.removed_blocks)}; `{action}` works on the "
                "original model. Create a new `Pruner` from the original model to prune again."
            )
