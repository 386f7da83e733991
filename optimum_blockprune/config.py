"""`BlockRemovalConfig`: what to remove and how to score it, as a validated dataclass."""

from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any, Literal, get_args

from .errors import ConfigurationError
from .evaluation import SELECTION_METRICS, SelectionMetric
from .utils import atomic_write_text
from .version import __version__

logger = logging.getLogger(__name__)

CONFIG_NAME = "blockprune_config.json"

FisherType = Literal["auto", "empirical", "model", "output"]
Granularity = Literal["block", "sublayer"]
Selection = Literal["ground", "auto"]

FISHER_TYPES = get_args(FisherType)
GRANULARITIES = get_args(Granularity)
SELECTIONS = get_args(Selection)


#: Measure-and-correct rounds of the default CBO energy when `correction_rounds` is left unset: on the Shakespeare
#: selection benchmark they tie plain `measured_pairs` at M = 3, 6, 9 and pick better at M = 12 (README).
DEFAULT_CORRECTION_ROUNDS = 3

#: What an unset `method` becomes where it applies (`BlockRemovalConfig.resolved`): the measured search guided by
#: the QUBO, chosen on the Shakespeare selection benchmark (within 2 % of SLEB at M = 3-15 at 0.5-0.95x its cost,
#: 17 % below the measured-pairs CBO at M = 12) and confirmed on the Python reference (README).
DEFAULT_METHOD = "guided"
#: ... and where it does not (sublayer variables, no next-token predictions, gates that do not remove exactly, no
#: calibration data) or when a CBO setting is given (another energy, correction rounds, re-expansion).
FALLBACK_METHOD = "cbo"
#: The energy `method='cbo'` minimises unless told otherwise.
DEFAULT_ENERGY = "measured_pairs"


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigurationError(message)


def _is_count(value: Any, minimum: int) -> bool:
    """An int (not a bool) of at least `minimum`."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= minimum


@dataclass
class BlockRemovalConfig:
    """How many blocks to remove from a model and how to choose them.

    `method` ranks the feasible ways to remove exactly `num_blocks_to_remove` blocks under the constraints
    (protected, forced, kinds, parameter budget, contiguity). Unset, it is 'guided' where that applies: a measured
    search whose proposals come from a QUBO over binary ``x`` (``x_i = 1``: block ``i`` removed) corrected by every
    state it measures; elsewhere 'cbo', which minimises a registered `energy` ``E(x) = x^T H x``, e.g. the paper's
    with ``H`` a Fisher estimate of the Hessian of the calibration loss with respect to per-block coupling gates
    (Jansen et al., arXiv:2602.00161). `resolved` says which. `selection` then picks one ranked state. Block
    indices are 0-based.

    Example:

    ```python
    >>> from optimum_blockprune import BlockRemovalConfig
    >>> config = BlockRemovalConfig(num_blocks_to_remove=8, num_calibration_samples=256, max_length=512)
    >>> config.num_states
    20
    ```
    """

    num_blocks_to_remove: int = field(
        default=1, metadata={"help": "Number of blocks to remove (the paper's M). Must be at least 1."}
    )
    protected_blocks: tuple[int, ...] = field(
        default=(),
        metadata={"help": "0-based indices of blocks that must never be removed (e.g. the first block)."},
    )
    num_states: int = field(
        default=20,
        metadata={
            "help": "How many lowest-energy feasible configurations to rank (ground state + excited states)."
        },
    )
    selected_state: int = field(
        default=0,
        metadata={"help": "Which ranked state `prune` applies: 0 is the ground state (the paper's CBO:0)."},
    )
    method: str | None = field(
        default=None,
        metadata={
            "help": "How blocks are ranked: a registered method (`optimum_blockprune.methods`). 'guided' searches "
            "by measuring the states a corrected QUBO proposes and 'cbo' minimises the QUBO `energy` (this "
            "library); the others are the published baselines (ShortGPT's Block Influence, SLEB, EvoPress, ...). "
            "`available_methods()` lists them all. Unset: 'guided' for whole blocks of a language model with "
            "calibration data; 'cbo' for sublayers, encoders and a saved Fisher alone, or when a setting of cbo's is "
            "given (an `energy` other than the default, `correction_rounds`, `reexpansion_interval`)."
        },
    )
    energy: str = field(
        default=DEFAULT_ENERGY,
        metadata={
            "help": "What `method='cbo'` minimises: a registered energy (`optimum_blockprune.energies`); with "
            "`method` unset, another energy than this default chooses 'cbo'. "
            "'measured_pairs' (the default, chosen on the selection benchmark) is measured single and pair removal "
            "costs with shrunk interactions; 'paper' is the paper's xᵀHx with H the Fisher of per-sample gate "
            "gradients (needs no measured removals, so it ranks from a saved Fisher). `available_energies()` lists "
            "them all."
        },
    )
    selection: Selection = field(
        default="ground",
        metadata={
            "help": "'ground': apply `selected_state` (0, the ground state, by default). 'auto': measure each of "
            "the `num_states` ranked states on a held-out slice of the calibration data (`selection_metric`) "
            "and apply the best."
        },
    )
    correction_rounds: int | None = field(
        default=None,
        metadata={
            "help": "Measure-and-correct rounds for an energy that predicts the calibration-loss increase "
            "('measured_pairs'): each round measures the `correction_states` lowest states not yet measured on the "
            "calibration samples, corrects the QUBO so measured states carry their measured increase, and "
            "re-solves; it stops early when a round proposes nothing new or finds nothing better. 0: off. Unset: "
            f"{DEFAULT_CORRECTION_ROUNDS} for `method='cbo'` with such an energy and no re-expansion (chosen on the "
            "selection benchmark), 0 otherwise."
        },
    )
    correction_states: int = field(
        default=4, metadata={"help": "States measured per measure-and-correct round."}
    )
    reexpansion_interval: int = field(
        default=0,
        metadata={
            "help": "Iterative re-expansion for `method='cbo'`: solve, commit the `reexpansion_interval` cheapest "
            "new blocks of the ground state, re-estimate the energy at the model without the committed blocks "
            "(the expansion stays local), and repeat until the last round ranks the rest. 0: one expansion at the "
            "unpruned model."
        },
    )
    search_budget: float | None = field(
        default=None,
        metadata={
            "help": "How much a measured search (`method='guided'` or 'evopress') may spend, in "
            "forward-equivalents: one forward of the model over every calibration sample = 1 "
            "(`ranking.stats['forward_equivalents']` reports what was spent). Unset: the method's own default "
            "(guided: about what SLEB spends on its search samples, plus one pass per finalist over the samples the "
            "search left out; EvoPress: M (N - M) / 1.5 generations)."
        },
    )
    auto_candidates: tuple[str, ...] = field(
        default=("oneshot_ppl", "block_influence"),
        metadata={
            "help": "With `selection='auto'`, the ground states of these registered methods join the `num_states` "
            "ranked states as candidates, measured the same way, so the choice is not confined to one energy's "
            "lowest states (their estimates share the calibration samples and passes). Empty: the ranked states "
            "only."
        },
    )
    selection_metric: SelectionMetric = field(
        default="kl",
        metadata={
            "help": "What `selection='auto'` measures: 'kl' (KL from the unpruned model's next-token "
            "distribution, per token) or 'loss' (next-token cross-entropy)."
        },
    )
    num_selection_samples: int = field(
        default=16,
        metadata={
            "help": "Calibration samples held out for `selection='auto'` (taken after the "
            "`num_calibration_samples` used for scoring, so the two never overlap)."
        },
    )
    num_calibration_samples: int = field(
        default=128,
        metadata={"help": "Number of calibration samples (rows of the per-sample gradient matrix A)."},
    )
    max_length: int = field(
        default=512, metadata={"help": "Maximum tokens per calibration sample; longer ones are truncated."}
    )
    batch_size: int = field(
        default=8,
        metadata={"help": "Samples per forward/backward pass. Every sample still gets its own gradient row."},
    )
    max_tokens_per_batch: int | None = field(
        default=None,
        metadata={
            "help": "Batch by a token budget instead of `batch_size`: samples sorted by length and packed while "
            "rows x longest <= this many tokens, so long and short samples pad little and memory is bounded "
            "(whole conversations without truncation). Rows and measurements do not change."
        },
    )
    gradient_checkpointing: bool = field(
        default=False,
        metadata={
            "help": "Recompute block activations in the Fisher's backward instead of keeping them (about one "
            "more forward of time, far less activation memory): for very long samples."
        },
    )
    fisher: FisherType = field(
        default="auto",
        metadata={
            "help": "'empirical': labels are the data (the paper). 'model': labels sampled from the model's own "
            "next-token distribution (the true Fisher of the KL to the unpruned model). 'output': a Gaussian "
            "probe on the final hidden states (encoders, which have no next-token loss). 'auto': 'empirical' "
            "for language models, 'output' for encoders."
        },
    )
    granularity: Granularity = field(
        default="block",
        metadata={
            "help": "'block': one gate per block (the paper). 'sublayer': separate gates for the attention (or "
            "Mamba, conv ...) and the MLP/MoE branch of each block; block indices in the other fields then "
            "index these variables. Applying a sublayer removal needs an architecture that stores one mixer "
            "per block (nemotron_h), or a state that removes whole blocks."
        },
    )
    candidate_kinds: tuple[str, ...] = field(
        default=(),
        metadata={
            "help": "Only remove blocks of these kinds (e.g. ['moe'] or ['attention']; kinds are listed in the "
            "README's architecture table). Empty: every kind. The Fisher is estimated over all blocks."
        },
    )
    max_removed_per_kind: dict[str, int] = field(
        default_factory=dict,
        metadata={"help": "Remove at most this many blocks of a kind, e.g. {'attention': 1}."},
    )
    min_removed_per_kind: dict[str, int] = field(
        default_factory=dict,
        metadata={"help": "Remove at least this many blocks of a kind, e.g. {'moe': 2}."},
    )
    text_column: str = field(
        default="text",
        metadata={"help": "Column holding raw text when calibration data is a dataset or data file."},
    )
    apply_chat_template: bool | None = field(
        default=None,
        metadata={
            "help": "Render chat `messages` with the tokenizer's chat template. None: only when the data has "
            "a `messages` column."
        },
    )
    pack_samples: bool = field(
        default=False,
        metadata={
            "help": "Concatenate all texts (EOS-separated) and cut them into `max_length` windows; for long documents."
        },
    )
    shuffle: bool = field(
        default=True, metadata={"help": "Shuffle the calibration samples with `seed` before taking them."}
    )
    seed: int = field(
        default=42, metadata={"help": "Seed for shuffling, label sampling and heuristic solvers."}
    )
    calibration_name: str | None = field(
        default=None,
        metadata={
            "help": "How the card, logs and Fisher metadata name the calibration data (default: what was passed: a "
            "dataset id, a file name, or 'a list of N texts'); e.g. 'my support tickets, 2024'."
        },
    )
    dataset_split: str = field(
        default="train", metadata={"help": "Split to read when calibration data is a Hub dataset name."}
    )
    dataset_config_name: str | None = field(
        default=None, metadata={"help": "Subset of a Hub dataset, if it has several."}
    )
    verify_fisher_model: bool = field(
        default=True,
        metadata={
            "help": "Refuse a given Fisher estimate made on another model (architecture, block count, weights "
            "fingerprint). Turn off only when it fits other weights on purpose, e.g. a quantized copy."
        },
    )
    forced_blocks: tuple[int, ...] = field(
        default=(),
        metadata={
            "help": "0-based indices of blocks that must be removed (counted in `num_blocks_to_remove`)."
        },
    )
    min_parameters_removed: float | None = field(
        default=None,
        metadata={"help": "Remove at least this many parameters (a budget for blocks of different sizes)."},
    )
    max_parameters_removed: float | None = field(
        default=None, metadata={"help": "Remove at most this many parameters."}
    )
    count_active_parameters: bool = field(
        default=False,
        metadata={
            "help": "Count active parameters (MoE: shared weights plus the top-k routed experts) instead of all "
            "parameters in `min_parameters_removed` / `max_parameters_removed`."
        },
    )
    contiguous: bool = field(
        default=False,
        metadata={
            "help": "Remove one contiguous run of blocks (to compare with contiguous-window baselines)."
        },
    )
    solver: str = field(
        default="auto",
        metadata={
            "help": "A registered solver (`optimum_blockprune.solvers`). 'exact': branch and bound, certified k "
            "lowest states; 'enumerate': all C(N, M) states; 'anneal': swap-move simulated annealing; "
            "'local_search': swap descent; 'tabu', 'dimod_sa' (extra [dimod]), 'gurobi' (extra [gurobi]); "
            "'auto': exact under `solver_time_limit_s`, falling back to anneal (then marked not proven)."
        },
    )
    solver_time_limit_s: float = field(
        default=60.0,
        metadata={"help": "Time limit of the exact solver; past it the best states found are returned."},
    )
    show_progress: bool = field(
        default=True, metadata={"help": "Show progress bars on calibration and long solves."}
    )

    def __post_init__(self) -> None:
        self._normalise_blocks_and_kinds()
        self._check_counts()
        self._check_choices()

    def _normalise_blocks_and_kinds(self) -> None:
        from .utils import block_indices, distinct_names

        # the range is checked again, with the model's block count, in `validate_for_model`
        self.protected_blocks = block_indices(self.protected_blocks, "protected_blocks")
        self.forced_blocks = block_indices(self.forced_blocks, "forced_blocks")
        self.candidate_kinds = distinct_names(self.candidate_kinds, "candidate_kinds", "['moe']")
        self.auto_candidates = distinct_names(self.auto_candidates, "auto_candidates", "['oneshot_ppl']")
        for name in ("max_removed_per_kind", "min_removed_per_kind"):
            limits = getattr(self, name)
            _check(
                isinstance(limits, dict)
                and all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in limits.values()),
                f"`{name}` must map block kinds to non-negative integers, got {limits!r}. Pass e.g. "
                "`{'attention': 1}`.",
            )
            setattr(self, name, {str(k): int(v) for k, v in limits.items()})
        clash = {
            kind: (low, self.max_removed_per_kind[kind])
            for kind, low in self.min_removed_per_kind.items()
            if kind in self.max_removed_per_kind and low > self.max_removed_per_kind[kind]
        }
        _check(not clash, f"`min_removed_per_kind` exceeds `max_removed_per_kind` for {clash} (min, max).")

    @property
    def rounds_of_correction(self) -> int:
        """`correction_rounds`, or when it is unset (None) the default for the method and energy: measure-and-correct
        for CBO with an energy that predicts the loss increase and no re-expansion. Resolved when read, so a config
        changed with `dataclasses.replace` (another method or energy) gets its own default."""
        if self.correction_rounds is not None:
            return self.correction_rounds
        from .energies import get_energy
        from .methods import get_method

        corrects = get_method(self.method_name).uses_energy and get_energy(self.energy).predicts_loss
        return DEFAULT_CORRECTION_ROUNDS if corrects and not self.reexpansion_interval else 0

    def _check_counts(self) -> None:
        for name in (
            "num_blocks_to_remove",
            "num_states",
            "num_calibration_samples",
            "num_selection_samples",
            "correction_states",
            "max_length",
            "batch_size",
        ):
            value = getattr(self, name)
            _check(_is_count(value, 1), f"`{name}` must be a positive integer, got {value!r}.")
        _check(
            self.search_budget is None
            or (
                isinstance(self.search_budget, (int, float))
                and not isinstance(self.search_budget, bool)
                and math.isfinite(self.search_budget)
                and self.search_budget > 0
            ),
            f"`search_budget` must be a positive number of forward-equivalents or None (the method's default), got "
            f"{self.search_budget!r}.",
        )
        _check(
            self.max_tokens_per_batch is None or _is_count(self.max_tokens_per_batch, 1),
            f"`max_tokens_per_batch` must be a positive number of tokens or None (batches of `batch_size`), got "
            f"{self.max_tokens_per_batch!r}.",
        )
        from .problem import MIN_SELECTION_SAMPLES

        _check(
            self.selection != "auto" or self.num_selection_samples >= MIN_SELECTION_SAMPLES,
            f"`num_selection_samples`={self.num_selection_samples}: `selection='auto'` compares states on at least "
            f"{MIN_SELECTION_SAMPLES} held-out samples; raise it (default 16) or use `selection='ground'`.",
        )
        _check(
            isinstance(self.selected_state, int) and 0 <= self.selected_state < self.num_states,
            f"`selected_state` must be an integer in [0, num_states={self.num_states}), got {self.selected_state!r}. "
            "Raise `num_states` to select a higher excited state.",
        )
        both = sorted(set(self.protected_blocks) & set(self.forced_blocks))
        _check(
            not both,
            f"Blocks {both} are both in `protected_blocks` and `forced_blocks`; a block cannot be both.",
        )
        _check(
            len(self.forced_blocks) <= self.num_blocks_to_remove,
            f"`forced_blocks` has {len(self.forced_blocks)} blocks but `num_blocks_to_remove` is "
            f"{self.num_blocks_to_remove}; raise `num_blocks_to_remove` or force fewer blocks.",
        )
        _check(
            isinstance(self.solver_time_limit_s, (int, float)) and self.solver_time_limit_s > 0,
            f"`solver_time_limit_s` must be a positive number of seconds, got {self.solver_time_limit_s!r}.",
        )
        if self.min_parameters_removed is not None and self.max_parameters_removed is not None:
            _check(
                self.min_parameters_removed <= self.max_parameters_removed,
                f"`min_parameters_removed`={self.min_parameters_removed} exceeds `max_parameters_removed`="
                f"{self.max_parameters_removed}.",
            )

    def _check_choices(self) -> None:
        """Literal fields against their values; method, energy and solver against their registries."""
        _check(
            self.calibration_name is None
            or (isinstance(self.calibration_name, str) and self.calibration_name.strip() != ""),
            f"`calibration_name` must be a non-empty string or None, got {self.calibration_name!r}.",
        )
        _check(
            self.fisher in FISHER_TYPES, f"`fisher` must be one of {list(FISHER_TYPES)}, got {self.fisher!r}."
        )
        _check(
            self.granularity in GRANULARITIES,
            f"`granularity` must be one of {list(GRANULARITIES)}, got {self.granularity!r}.",
        )
        from .energies import get_energy
        from .methods import get_method
        from .solvers import solver_class

        _check(
            self.method is None or isinstance(self.method, str),
            f"`method` must be a registered method's name or None (chosen for the model), got {self.method!r}.",
        )
        method = get_method(self.method_name)
        for name in self.auto_candidates:
            get_method(name)
        energy = get_energy(self.energy)
        _check(
            self.correction_rounds is None or _is_count(self.correction_rounds, 0),
            f"`correction_rounds` must be a non-negative integer or None (the default for the energy), got "
            f"{self.correction_rounds!r}.",
        )
        _check(
            not self.correction_rounds or (method.uses_energy and energy.predicts_loss),
            f"`correction_rounds`={self.correction_rounds} corrects an energy with measured loss increases, but "
            f"`method`={self.method_name!r} / `energy`={self.energy!r} does not predict the calibration-loss increase; "
            "use `method='cbo'` with `energy='measured_pairs'`, or `correction_rounds=0`.",
        )
        _check(
            _is_count(self.reexpansion_interval, 0),
            f"`reexpansion_interval` must be a non-negative integer, got {self.reexpansion_interval!r}.",
        )
        _check(
            not self.reexpansion_interval or method.uses_energy,
            f"`reexpansion_interval`={self.reexpansion_interval} re-estimates an energy, but `method`={self.method_name!r} "
            "has none; use `method='cbo'` or `reexpansion_interval=0`.",
        )
        _check(
            not (self.reexpansion_interval and self.correction_rounds),
            "`reexpansion_interval` and `correction_rounds` cannot be combined (measured corrections belong to one "
            "expansion point); set one of them to 0.",
        )
        solver_class(self.solver).check_available()
        _check(
            self.selection in SELECTIONS,
            f"`selection` must be one of {list(SELECTIONS)}, got {self.selection!r}.",
        )
        _check(
            self.selection_metric in SELECTION_METRICS,
            f"`selection_metric` must be one of {list(SELECTION_METRICS)}, got {self.selection_metric!r}.",
        )
        _check(
            self.selection != "auto" or self.selected_state == 0,
            f"`selected_state`={self.selected_state} picks a state by hand, but `selection='auto'` picks the best "
            "measured one; set `selection='ground'` to apply a chosen state, or leave `selected_state` at 0.",
        )
        _check(
            method.sublayers or self.granularity == "block",
            f"`method`={self.method_name!r} ranks whole blocks; use `granularity='block'` (sublayer scores need a "
            "method that ranks sublayers, such as 'cbo').",
        )
        _check(
            self.apply_chat_template in (None, True, False),
            f"`apply_chat_template` must be True, False or None, got {self.apply_chat_template!r}.",
        )

    def fallback_reason(
        self, *, task: str = "causal-lm", exact_gates: bool = True, has_data: bool = True
    ) -> str | None:
        """Why an unset `method` becomes `FALLBACK_METHOD` rather than `DEFAULT_METHOD` here (None: it does not)."""
        if self.energy != DEFAULT_ENERGY:
            return f"`energy`={self.energy!r} is minimised by 'cbo'"
        if self.correction_rounds is not None or self.reexpansion_interval:
            return "`correction_rounds` / `reexpansion_interval` are settings of 'cbo'"
        if self.granularity != "block":
            return f"{DEFAULT_METHOD!r} ranks whole blocks, not `granularity`={self.granularity!r}"
        if task != "causal-lm":
            return f"{DEFAULT_METHOD!r} measures next-token predictions, which a {task} model does not make"
        if not exact_gates:
            return f"{DEFAULT_METHOD!r} measures removals through gates, which do not remove a block exactly here"
        if not has_data:
            return f"{DEFAULT_METHOD!r} measures removals on calibration data, and none was given"
        return None

    @property
    def method_name(self) -> str:
        """`method`, or what an unset one becomes on a language model with calibration data (`resolved` says for a
        given model)."""
        if self.method is not None:
            return self.method
        return FALLBACK_METHOD if self.fallback_reason() else DEFAULT_METHOD

    def resolved(
        self, *, task: str = "causal-lm", exact_gates: bool = True, has_data: bool = True
    ) -> BlockRemovalConfig:
        """This config with `method` set: itself when it is, else `DEFAULT_METHOD` where it applies (whole blocks
        of a `task='causal-lm'` model whose gates remove exactly, calibration data given, no setting of cbo's) and
        `FALLBACK_METHOD` otherwise. A result records the resolved config, so rerunning it repeats the choice."""
        if self.method is not None:
            return self
        reason = self.fallback_reason(task=task, exact_gates=exact_gates, has_data=has_data)
        if reason:
            logger.info("`method` unset: using %r (%s).", FALLBACK_METHOD, reason)
        return replace(self, method=FALLBACK_METHOD if reason else DEFAULT_METHOD)

    def validate_for_model(self, num_blocks: int) -> None:
        """Checks that need the model's block count; `Pruner` runs them before any calibration.

        Raises:
            ConfigurationError: a protected index is out of range or too few removable blocks remain.
        """
        from .utils import block_indices

        for name in ("protected_blocks", "forced_blocks"):
            block_indices(getattr(self, name), name, num_blocks=num_blocks)
        removable = num_blocks - len(self.protected_blocks)
        _check(
            self.num_blocks_to_remove < num_blocks,
            f"`num_blocks_to_remove` is {self.num_blocks_to_remove}, but the model has only {num_blocks} blocks; "
            f"at least one must remain. Choose a value in 1..{num_blocks - 1}.",
        )
        _check(
            self.num_blocks_to_remove <= removable,
            f"`num_blocks_to_remove` is {self.num_blocks_to_remove}, but only {removable} of {num_blocks} blocks are "
            f"removable once `protected_blocks`={list(self.protected_blocks)} are excluded. Protect fewer blocks "
            "or remove fewer.",
        )

    def calibration_options(self, num_samples: int | None = None) -> dict[str, Any]:
        """The keyword arguments of `prepare_calibration_data` this config sets (`num_samples` overrides
        `num_calibration_samples`)."""
        return {
            "num_samples": self.num_calibration_samples if num_samples is None else num_samples,
            "max_length": self.max_length,
            "text_column": self.text_column,
            "apply_chat_template": self.apply_chat_template,
            "pack_samples": self.pack_samples,
            "shuffle": self.shuffle,
            "seed": self.seed,
            "dataset_split": self.dataset_split,
            "dataset_config_name": self.dataset_config_name,
        }

    # -- serialisation -------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["protected_blocks"] = list(self.protected_blocks)
        data["forced_blocks"] = list(self.forced_blocks)
        data["candidate_kinds"] = list(self.candidate_kinds)
        data["auto_candidates"] = list(self.auto_candidates)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BlockRemovalConfig:
        known = {f.name for f in fields(cls)}
        data = dict(data)
        if "first_order" in data:  # configs saved before energies were registered: a flag for the energy
            data.setdefault("energy", "first_order" if data.pop("first_order") else "paper")
        unknown = sorted(set(data) - known - {"library_version"})
        if unknown:
            raise ConfigurationError(
                f"Unknown `BlockRemovalConfig` keys {unknown}; allowed keys are {sorted(known)}."
            )
        return cls(**{k: v for k, v in data.items() if k in known})

    def save_pretrained(self, save_directory: str | os.PathLike) -> str:
        """Write the config alone to `save_directory/blockprune_config.json` (the library version is stamped in)."""
        os.makedirs(save_directory, exist_ok=True)
        path = os.path.join(save_directory, CONFIG_NAME)
        payload = {"config": self.to_dict(), "library_version": __version__}
        atomic_write_text(path, json.dumps(payload, indent=2) + "\n")
        return path

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike) -> BlockRemovalConfig:
        """Read a config from a directory (or file) written by `save_pretrained` or by `Pruner.save_pretrained`."""
        file = os.path.join(path, CONFIG_NAME) if os.path.isdir(path) else str(path)
        with open(file, encoding="utf-8") as handle:
            payload = json.load(handle)
        return cls.from_dict(payload["config"])
