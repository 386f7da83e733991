"""`Pruner`: resolve the architecture -> estimate the Fisher -> solve the QUBO -> apply the surgery -> save."""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from .architectures import get_adapter
from .config import BlockRemovalConfig
from .constraints import parameter_budget
from .errors import ConfigurationError, SurgeryError
from .estimation import FisherEstimate, estimate_fisher, prepare_calibration_data
from .hub import DEFAULT_COMMIT_MESSAGE
from .qubo import QUBO, CardinalityProblem
from .result import PruningResult, RankedState, Ranking
from .solvers import solve_ranking

if TYPE_CHECKING:
    import torch.nn as nn

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


def rank_from_fisher(fisher: FisherEstimate, config: BlockRemovalConfig) -> Ranking:
    """Rank the `config.num_states` lowest-energy feasible removals from a Fisher estimate alone (no model)."""
    num_blocks = fisher.num_blocks
    config.validate_for_model(num_blocks)
    protected = set(config.protected_blocks)
    constraints = []
    if config.min_parameters_removed is not None or config.max_parameters_removed is not None:
        blocks = fisher.metadata.get("blocks") or []
        if len(blocks) != num_blocks:
            raise ConfigurationError(
                "A parameter budget needs the blocks' parameter counts, which this Fisher estimate's metadata lacks; "
                "re-estimate it with this version of optimum-blockprune."
            )
        key = "num_active_parameters" if config.count_active_parameters else "num_parameters"
        constraints.append(
            parameter_budget(
                [b[key] for b in blocks],
                at_least=config.min_parameters_removed,
                at_most=config.max_parameters_removed,
                name="active parameters removed" if config.count_active_parameters else "parameters removed",
            )
        )
    problem = CardinalityProblem(
        QUBO(fisher.energy_matrix(first_order=config.first_order)),
        config.num_blocks_to_remove,
        tuple(i for i in range(num_blocks) if i not in protected),
        forced=config.forced_blocks,
        constraints=tuple(constraints),
        contiguous=config.contiguous,
    )
    ranking = solve_ranking(
        problem,
        config.num_states,
        solver=config.solver,
        time_limit_s=config.solver_time_limit_s,
        seed=config.seed,
        show_progress=config.show_progress,
    )
    if not ranking.states:
        raise ConfigurationError(
            "No way to remove the requested blocks satisfies every constraint (count, protected/forced blocks, "
            "parameter budget, contiguity). Relax one of them."
        )
    return replace(ranking, first_order=config.first_order)


class Pruner:
    """Remove whole blocks from a Hugging Face model, chosen by constrained binary optimisation.

    Args:
        model: a loaded `transformers` model whose `model_type` is registered (see `supported_model_types()`).
        tokenizer: its tokenizer; needed for text calibration data and saved beside the pruned model.
        model_id: the model's Hub id or path, recorded as `base_model` in the card.

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

    def __init__(self, model: nn.Module, tokenizer: Any | None = None, *, model_id: str | None = None):
        self.adapter = get_adapter(model)
        self.model = model
        self.tokenizer = tokenizer
        self.model_id = model_id or getattr(model.config, "_name_or_path", None) or None
        self.original_blocks = self.adapter.blocks(model)
        self.fisher: FisherEstimate | None = None
        self.ranking: Ranking | None = None
        self.config: BlockRemovalConfig | None = None
        self.result: PruningResult | None = None

    # -- loading --------------------------------------------------------------------------------------------
    @classmethod
    def from_pretrained(
        cls,
        model_id: str | os.PathLike,
        *,
        tokenizer: Any | None = None,
        auto_class: Any | None = None,
        **kwargs: Any,
    ) -> Pruner:
        """Load a model (and its tokenizer) with `from_pretrained`, checking the architecture before the weights.

        Args:
            model_id: Hub id or local directory.
            tokenizer: a tokenizer to use instead of loading one from `model_id`.
            auto_class: the `transformers` auto class (default `AutoModelForCausalLM`).
            kwargs: passed to `from_pretrained` (e.g. `dtype`, `device_map`, `revision`, `gguf_file`).
        """
        from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

        model_id = os.fspath(model_id)
        shared = {k: kwargs[k] for k in _SHARED_LOAD_KWARGS if k in kwargs}
        get_adapter(AutoConfig.from_pretrained(model_id, **shared))  # fail before loading any weights
        model = (auto_class or AutoModelForCausalLM).from_pretrained(model_id, **kwargs)
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
        return cls(model, tokenizer, model_id=model_id)

    # -- properties ---------------------------------------------------------------------------------------------
    @property
    def num_blocks(self) -> int:
        """Number of blocks of the original (unpruned) model."""
        return len(self.original_blocks)

    @property
    def is_pruned(self) -> bool:
        return self.result is not None

    # -- stages -------------------------------------------------------------------------------------------------
    def estimate(self, calibration_dataset: Any, config: BlockRemovalConfig | None = None) -> FisherEstimate:
        """Estimate the block Fisher (per-sample gradients A, Hessian H, mean gradient g) on calibration data.

        Uses `config`'s calibration fields (samples, length, batch size, Fisher type, seed). The result is
        kept on the pruner and can be saved with `FisherEstimate.save` and reused for any number of blocks.
        """
        config = config or BlockRemovalConfig()
        self._refuse_if_pruned("estimate")
        calibration = prepare_calibration_data(calibration_dataset, self.tokenizer, config)
        logger.info(
            "Calibration: %d samples, %d tokens from %s.",
            calibration.num_samples,
            calibration.num_tokens,
            calibration.source,
        )
        pad = None
        if self.tokenizer is not None:
            pad = (
                self.tokenizer.pad_token_id
                if self.tokenizer.pad_token_id is not None
                else self.tokenizer.eos_token_id
            )
        self.fisher = estimate_fisher(
            self.model,
            calibration,
            adapter=self.adapter,
            fisher=config.fisher,
            batch_size=config.batch_size,
            seed=config.seed,
            pad_token_id=pad if pad is not None else 0,
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
        if fisher.num_blocks != self.num_blocks:
            raise ConfigurationError(
                f"The Fisher estimate covers {fisher.num_blocks} blocks but the model has {self.num_blocks}; it was "
                "estimated on a different model."
            )
        self.ranking = rank_from_fisher(fisher, config)
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

    def prune(
        self,
        config: BlockRemovalConfig,
        calibration_dataset: Any = None,
        *,
        fisher: FisherEstimate | None = None,
    ) -> PruningResult:
        """Estimate (unless `fisher` is given) -> solve -> apply `config.selected_state`; return the result.

        Raises:
            ConfigurationError: the config does not fit the model (checked before any calibration).
        """
        self._refuse_if_pruned("prune")
        config.validate_for_model(self.num_blocks)
        if fisher is None:
            if calibration_dataset is None:
                raise ConfigurationError(
                    "Pass `calibration_dataset=` (texts, a dataset, a file or a Hub name) or `fisher=`."
                )
            fisher = self.estimate(calibration_dataset, config)
        self.fisher = fisher
        ranking = self.solve(fisher, config)
        if config.selected_state >= len(ranking):
            raise ConfigurationError(
                f"`selected_state`={config.selected_state} but only {len(ranking)} feasible states exist."
            )
        return self.apply(ranking[config.selected_state])

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
            "pipeline_tag": "text-generation" if hasattr(self.model, "generate") else None,
            "config": self.config.to_dict() if self.config is not None else None,
            "result": self.result.to_dict(),
            "blocks": [b.to_dict() for b in self.original_blocks],
            "fisher": fisher_info,
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

    def _refuse_if_pruned(self, action: str) -> None:
        if self.result is not None:
            raise SurgeryError(
                f"This pruner has already removed blocks {list(self.result.removed_blocks)}; `{action}` works on the "
                "original model. Create a new `Pruner` from the original model to prune again."
            )
