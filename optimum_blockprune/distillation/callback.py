"""`BlockPruningCallback`: block pruning inside an existing `Trainer` run, from the batches it trains on."""

from __future__ import annotations

import json
import logging
import os
import re
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from transformers import TrainerCallback

from ..architectures import get_adapter
from ..config import BlockRemovalConfig
from ..errors import ConfigurationError, SurgeryError
from ..estimation.fisher import FisherEstimate, hessian_from_gradients
from ..estimation.forward import next_token_targets
from ..estimation.gates import CouplingGates
from ..problem import check_request, resolved_for
from ..result import PruningResult, Ranking
from ..selection import needs_calibration_data, rank_from_fisher
from ..surgery import apply_removal
from ..utils import atomic_write_text

if TYPE_CHECKING:
    import torch.nn as nn

    from ..architectures import ArchitectureAdapter, BlockInfo

logger = logging.getLogger(__name__)

RECORD_NAME = "blockprune_callback.json"
PARTIAL_FISHER_NAME = "blockprune_fisher_rank{rank}.safetensors"
CALIBRATION_NAME = "blockprune_calibration_rank{rank}.json"


def _base_model(model: nn.Module) -> nn.Module:
    """The `PreTrainedModel` under a `peft` wrapper (whose blocks are the ones to remove)."""
    get_base_model = getattr(model, "get_base_model", None)
    return get_base_model() if callable(get_base_model) else model


def _checkpoint_dir(args, step: int) -> str:
    from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

    return os.path.join(args.output_dir, f"{PREFIX_CHECKPOINT_DIR}-{step}")


def unsupported_parallelism(args) -> str | None:
    """Why the live model cannot be pruned under these training arguments, or None.

    FSDP flattens and shards parameters and DeepSpeed partitions them and their optimizer state when training
    starts; removing blocks from the module afterwards would leave those engines holding the old layout.
    """
    if args.deepspeed or os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true":
        return "DeepSpeed partitions parameters and optimizer state at start-up"
    if args.fsdp or os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true":
        return "FSDP flattens and shards the parameters at start-up"
    return None


class BlockPruningCallback(TrainerCallback):
    """Prune whole blocks from the model a `Trainer` is training, at a chosen optimizer step, with any registered
    method and energy (the library's default choice unless `config` says otherwise).

    **Measured choices** (the default `measured_pairs` energy, SLEB, the searches, `selection="auto"`): the
    callback keeps the token ids of the training samples it sees (up to `num_calibration_samples`, plus
    `num_selection_samples` for `selection="auto"`; duplicates from later epochs are skipped), or uses
    `calibration_dataset`. At `prune_at_step` it ranks exactly as `Pruner.select` would on the model's weights after
    that step (eval mode, no gradient, gates removed afterwards) and removes the chosen blocks. Under DDP every
    process gathers all the processes' samples, measures its share and the sums are reduced, so every rank takes
    the same decision.

    **Fisher energies** (`energy="paper"` or `"first_order"`): during the `fisher_steps` optimizer steps before
    `prune_at_step`, coupling gates sit on every block (alpha = 1, so the training math is unchanged) and each
    training batch's backward also yields every sample's gradient with respect to the gates: the rows of the block
    Fisher, at no extra forward or backward.

    Either way the chosen blocks are removed from the live model by the library's surgery, the optimizer forgets
    their parameters and state, and training continues on the smaller model. The ranking (with what measuring cost)
    is logged on the main process and written into every later checkpoint (`blockprune_callback.json`); a run
    resumed from a checkpoint taken before pruning restores the kept samples (or the partial Fisher), one taken
    after it gets its blocks removed before the checkpoint's weights load.

    Each sample's gradient is rescaled to its per-token mean (the Trainer's loss is a token mean over the batch),
    so the rows match `estimate_fisher`'s on the same samples up to one factor, which no ranking depends on.

    Refused under FSDP and DeepSpeed (their engines hold the parameter layout fixed once training starts).
    Under DDP, set `ddp_find_unused_parameters=True`: the removed blocks stay registered in DDP's reducer.

    Args:
        config: what to remove and how to choose (count, constraints, method, energy, selection).
        prune_at_step: the optimizer step after which blocks are removed (>= 1).
        fisher_steps: for Fisher energies, how many optimizer steps before it feed the Fisher (default: all).
        calibration_dataset: for measured choices, data to measure on instead of the training samples (anything
            `prepare_calibration_data` reads; texts need the Trainer's `processing_class` or `tokenizer`).
        tokenizer: tokenises `calibration_dataset` when the Trainer has no `processing_class`.

    Example:

    ```python
    >>> callback = BlockPruningCallback(BlockRemovalConfig(num_blocks_to_remove=4), prune_at_step=200)
    >>> trainer = Trainer(model=model, args=args, train_dataset=data, callbacks=[callback])  # doctest: +SKIP
    >>> trainer.train()  # doctest: +SKIP
    >>> callback.removed_blocks  # doctest: +SKIP
    (11, 14, 18, 21)
    ```
    """

    def __init__(
        self,
        config: BlockRemovalConfig,
        *,
        prune_at_step: int,
        fisher_steps: int | None = None,
        calibration_dataset: Any = None,
        tokenizer: Any = None,
    ):
        if not isinstance(prune_at_step, int) or prune_at_step < 1:
            raise ConfigurationError(
                f"`prune_at_step`={prune_at_step!r} must be an integer >= 1: the choice is made on the weights after "
                "at least one training step."
            )
        fisher_steps = prune_at_step if fisher_steps is None else fisher_steps
        if not isinstance(fisher_steps, int) or not 1 <= fisher_steps <= prune_at_step:
            raise ConfigurationError(
                f"`fisher_steps`={fisher_steps!r} must be an integer in [1, `prune_at_step`={prune_at_step}]."
            )
        self.config = config
        self.prune_at_step = prune_at_step
        self.fisher_steps = fisher_steps
        #: the choice reads calibration data (measured removals, statistics, held-out selection), not only the
        #: Fisher of the training batches
        self.measures = needs_calibration_data(config, has_fisher=True)
        self.calibration_dataset = calibration_dataset
        self.tokenizer = tokenizer
        self.num_wanted = config.num_calibration_samples + (
            config.num_selection_samples if config.selection == "auto" else 0
        )
        #: token ids of the training samples kept for measuring (this process's), in the order seen
        self.calibration_samples: list[list[int]] = []
        #: what the measured choice read (every process's samples, or `calibration_dataset`), once it has run
        self.measured_on: Any = None
        self.model: nn.Module | None = None
        self.adapter: ArchitectureAdapter | None = None
        self.units: list[BlockInfo] = []
        self.num_blocks: int | None = None
        self.fisher: FisherEstimate | None = None
        self.ranking: Ranking | None = None
        self.removed_blocks: tuple[int, ...] | None = None
        self._rows: list[np.ndarray] = []
        self._gates: CouplingGates | None = None
        self._forward_hook = None
        self._sample_hook = None
        self._seen: set[tuple[int, ...]] = set()
        self._args = None

    @property
    def is_pruned(self) -> bool:
        return self.removed_blocks is not None

    # -- Trainer events -------------------------------------------------------------------------------------------
    def on_init_end(self, args, state, control, model=None, **kwargs):
        reason = unsupported_parallelism(args)
        if reason:
            raise ConfigurationError(
                f"`BlockPruningCallback` cannot remove blocks during this run: {reason}, and removing modules from "
                "the live model would leave it inconsistent. Prune before training (`Pruner.prune`, then train the "
                "pruned model with FSDP/DeepSpeed), or train without FSDP/DeepSpeed."
            )
        if args.world_size > 1 and not args.ddp_find_unused_parameters:
            raise ConfigurationError(
                "`BlockPruningCallback` under distributed data parallelism needs `ddp_find_unused_parameters=True` "
                "in the training arguments: the removed blocks stay registered in DDP's gradient reducer and never "
                "receive gradients again."
            )
        self._args = args
        self.model = _base_model(model)
        self.adapter = get_adapter(self.model)
        self.units = self.adapter.units(self.model, self.config.granularity)
        self.num_blocks = len(self.adapter.block_list(self.model))
        self.config = resolved_for(self.adapter, self.config)  # the method an unset one becomes on this model
        self.measures = needs_calibration_data(self.config, has_fisher=True)
        # every check before any training step
        check_request(
            self.adapter,
            self.units,
            self.config,
            model_config=self.adapter.text_config(self.model),
            applying=True,
        )
        self.model.register_load_state_dict_pre_hook(self._restore_structure_before_load)
        self.tokenizer = self.tokenizer or kwargs.get("processing_class") or kwargs.get("tokenizer")
        if self.measures and self.calibration_dataset is None:
            self._sample_hook = self.model.register_forward_pre_hook(self._keep_samples, with_kwargs=True)

    def on_train_begin(self, args, state, control, **kwargs):
        if state.global_step == 0:
            return
        checkpoint = _checkpoint_dir(args, state.global_step)
        record = self._read_record(checkpoint)
        if record is None:
            if state.global_step >= self.prune_at_step and not self.is_pruned:
                raise SurgeryError(
                    f"Resuming at step {state.global_step} (pruning was due at step {self.prune_at_step}) but "
                    f"{checkpoint} has no {RECORD_NAME}; it was not written by this callback."
                )
            return
        if record["removed_blocks"] is not None:
            if not self.is_pruned:
                # The pre-load hook did not see this checkpoint's weights, so they went into the unpruned
                # structure; removing blocks now would keep the wrong ones.
                raise SurgeryError(
                    f"{checkpoint} holds a model pruned to blocks removed {record['removed_blocks']}, but its weights "
                    "were not loaded through this callback. Resume with `trainer.train(resume_from_checkpoint=...)` "
                    "on a Trainer built with this callback."
                )
            return
        path = os.path.join(checkpoint, PARTIAL_FISHER_NAME.format(rank=args.process_index))
        if os.path.isfile(path):
            self._rows = [FisherEstimate.load(path).gradients]
            logger.info("Restored %d Fisher rows from %s.", self._rows[0].shape[0], path)
        path = os.path.join(checkpoint, CALIBRATION_NAME.format(rank=args.process_index))
        if os.path.isfile(path):
            with open(path, encoding="utf-8") as handle:
                self.calibration_samples = [list(map(int, ids)) for ids in json.load(handle)["input_ids"]]
            self._seen = {tuple(ids) for ids in self.calibration_samples}
            logger.info("Restored %d calibration samples from %s.", len(self.calibration_samples), path)

    def on_step_begin(self, args, state, control, model=None, **kwargs):
        start = self.prune_at_step - self.fisher_steps
        window = start <= state.global_step < self.prune_at_step
        if not self.measures and not self.is_pruned and window and self._gates is None:
            self._install_gates()

    def on_step_end(self, args, state, control, model=None, optimizer=None, **kwargs):
        if self.is_pruned or state.global_step < self.prune_at_step:
            return
        self._remove_gates()
        if self.measures:
            self._remove_sample_hook()
            selection = self._measured_selection()
            self.ranking, state_to_apply = selection.ranking, selection.state
        else:
            self.fisher = self._gathered_fisher()
            self.ranking = rank_from_fisher(self.fisher, self.config, adapter=self.adapter)
            state_to_apply = self.ranking[self.config.selected_state]
        parameters_before = {id(p) for p in model.parameters()}
        reduction = self._remove(state_to_apply.removed_blocks).parameter_reduction
        alive = {id(p) for p in model.parameters()}
        removed = parameters_before - alive
        if optimizer is not None:
            _forget_parameters(optimizer, removed)
        self._rows = []
        if state.is_world_process_zero:
            stats = self.ranking.stats
            logger.info(
                "Step %d: removed blocks %s (%.1f%% of parameters); choosing cost %.1f s of measuring, %s block "
                "evaluations; ranking:\n%s",
                state.global_step,
                list(self.removed_blocks),
                100 * reduction,
                sum(v for k, v in stats.items() if k.endswith("_seconds") and isinstance(v, (int, float))),
                stats.get("block_evaluations", 0),
                self.ranking.to_markdown(selected_rank=state_to_apply.rank),
            )

    def on_save(self, args, state, control, **kwargs):
        checkpoint = _checkpoint_dir(args, state.global_step)
        if not os.path.isdir(checkpoint):
            return
        if not self.is_pruned and self._rows:
            self._local_fisher().save(  # part of the Trainer's checkpoint, which it rewrites as it sees fit
                os.path.join(checkpoint, PARTIAL_FISHER_NAME.format(rank=args.process_index)), overwrite=True
            )
        if not self.is_pruned and self.calibration_samples:
            atomic_write_text(
                os.path.join(checkpoint, CALIBRATION_NAME.format(rank=args.process_index)),
                json.dumps({"input_ids": self.calibration_samples}) + "\n",
            )
        if args.should_save:
            atomic_write_text(
                os.path.join(checkpoint, RECORD_NAME), json.dumps(self.record(), indent=2) + "\n"
            )

    def on_train_end(self, args, state, control, **kwargs):
        self._remove_gates()
        self._remove_sample_hook()

    # -- the record ------------------------------------------------------------------------------------------------
    def record(self) -> dict[str, Any]:
        """What checkpoints store: the request, the ranking and the removed blocks (None before pruning)."""
        return {
            "config": self.config.to_dict(),
            "prune_at_step": self.prune_at_step,
            "fisher_steps": self.fisher_steps,
            "num_blocks_before": self.num_blocks,
            "removed_blocks": list(self.removed_blocks) if self.removed_blocks is not None else None,
            "ranking": self.ranking.to_dict() if self.ranking is not None else None,
        }

    @staticmethod
    def _read_record(checkpoint: str) -> dict[str, Any] | None:
        path = os.path.join(checkpoint, RECORD_NAME)
        if not os.path.isfile(path):
            return None
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)

    def _apply_record(self, record: dict[str, Any]) -> None:
        removed = tuple(record["removed_blocks"])
        if record.get("num_blocks_before") not in (None, self.num_blocks):
            raise SurgeryError(
                f"The checkpoint was pruned from a {record['num_blocks_before']}-block model, but this model has "
                f"{self.num_blocks} blocks; resume with the model the run started from."
            )
        self.ranking = Ranking.from_dict(record["ranking"]) if record.get("ranking") else None
        self._remove(removed)

    def _remove(self, removed: tuple[int, ...]) -> PruningResult:
        """Remove the blocks (the library's surgery, the one place that changes structure) and remember them."""
        result = apply_removal(self.model, removed, self.adapter)
        self.removed_blocks = result.removed_blocks
        return result

    def _restore_structure_before_load(self, module, state_dict, prefix, *args) -> None:
        """`Trainer` loads a checkpoint with `load_state_dict(strict=False)`; a pruned checkpoint would fill the
        first blocks of the full model and silently leave the rest. Remove the same blocks first."""
        if self.is_pruned or self._args is None:
            return
        pattern = re.compile(re.escape(prefix + self.adapter.block_list_path(module)) + r"\.(\d+)\.")
        indices = {int(m.group(1)) for key in state_dict if (m := pattern.match(key))}
        if not indices or len(indices) == self.num_blocks:
            return
        records = []
        root = self._args.output_dir
        for name in sorted(os.listdir(root)) if os.path.isdir(root) else []:
            record = self._read_record(os.path.join(root, name))
            if record and record["removed_blocks"] is not None:
                records.append(record)
        matching = [r for r in records if r["num_blocks_before"] - len(r["removed_blocks"]) == len(indices)]
        if not matching:
            raise SurgeryError(
                f"The checkpoint being loaded has {len(indices)} blocks but the model has {self.num_blocks}, and "
                f"no {RECORD_NAME} under {root!r} says which blocks were removed. Resume from a checkpoint this "
                "callback wrote, in the run's `output_dir`."
            )
        self._apply_record(matching[-1])
        logger.info("Removed blocks %s before loading the pruned checkpoint.", list(self.removed_blocks))

    # -- measured choices -------------------------------------------------------------------------------------------
    def _keep_samples(self, module, args, kwargs):
        """Keep the token ids of the training samples this forward carries (real tokens only, `max_length` at most)
        until `num_wanted` distinct ones are kept."""
        if (
            len(self.calibration_samples) >= self.num_wanted
            or not module.training
            or not torch.is_grad_enabled()
        ):
            return None
        input_ids = kwargs.get("input_ids", args[0] if args else None)
        if not isinstance(input_ids, torch.Tensor):
            return None
        mask = kwargs.get("attention_mask")
        rows = input_ids.tolist()
        masks = mask.tolist() if isinstance(mask, torch.Tensor) else [None] * len(rows)
        for ids, keep in zip(rows, masks):
            real = tuple(t for t, m in zip(ids, keep) if m) if keep is not None else tuple(ids)
            real = real[: self.config.max_length]
            if len(real) >= 2 and real not in self._seen:
                self._seen.add(real)
                self.calibration_samples.append(list(real))
            if len(self.calibration_samples) >= self.num_wanted:
                break
        return None

    def _remove_sample_hook(self) -> None:
        if self._sample_hook is not None:
            self._sample_hook.remove()
            self._sample_hook = None

    def calibration_data(self) -> Any:
        """What the measured choice reads: `calibration_dataset`, or the kept training samples of every process
        (gathered in process order, so every process holds the same list)."""
        from ..estimation.calibration import CalibrationData

        if self.calibration_dataset is not None:
            return self.calibration_dataset
        samples = self.calibration_samples
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            gathered: list[Any] = [None] * torch.distributed.get_world_size()
            torch.distributed.all_gather_object(gathered, samples)
            merged: dict[tuple[int, ...], None] = {}
            for part in gathered:
                merged.update(dict.fromkeys(tuple(ids) for ids in part))
            samples = [list(ids) for ids in merged][: self.num_wanted]
        if not samples:
            raise SurgeryError(
                "No training samples were seen before `prune_at_step`, so there is nothing to measure removals on: "
                "pass `calibration_dataset=` to `BlockPruningCallback`."
            )
        return CalibrationData(samples, f"training samples seen before step {self.prune_at_step}")

    def _measured_selection(self) -> Any:
        """`Pruner.select`'s choice (`selection.select_removal`) on the live model's current weights."""
        from ..estimation.calibration import padding_id
        from ..selection import select_removal

        problem = check_request(
            self.adapter, self.units, self.config, model_config=self.model.config, applying=True
        )
        self.measured_on = self.calibration_data()
        return select_removal(
            problem,
            self.config,
            model=self.model,
            adapter=self.adapter,
            units=self.units,
            calibration_dataset=self.measured_on,
            tokenizer=self.tokenizer,
            pad_token_id=padding_id(self.tokenizer),
        )

    # -- Fisher accumulation ---------------------------------------------------------------------------------------
    def _install_gates(self) -> None:
        self._gates = CouplingGates(
            self.model, self.adapter, granularity=self.config.granularity, freeze_weights=False
        )
        self._gates.__enter__()
        self._forward_hook = self.model.register_forward_pre_hook(self._new_alpha, with_kwargs=True)

    def _remove_gates(self) -> None:
        if self._forward_hook is not None:
            self._forward_hook.remove()
            self._forward_hook = None
        if self._gates is not None:
            self._gates.__exit__(None, None, None)
            self._gates = None

    def _new_alpha(self, module, args, kwargs):
        """Give every sample of this forward its own row of gates at 1; their gradient is recorded in backward."""
        input_ids = kwargs.get("input_ids", args[0] if args else None)
        reference = input_ids if input_ids is not None else kwargs.get("inputs_embeds")
        if reference is None or not torch.is_grad_enabled():
            self._gates.alpha = None
            return None
        batch = reference.shape[0]
        labels, mask = kwargs.get("labels"), kwargs.get("attention_mask")
        if labels is not None:
            tokens = (next_token_targets(labels) != -100).sum(dim=1)
        elif mask is not None:
            tokens = mask.sum(dim=1)
        else:
            tokens = torch.full((batch,), reference.shape[1], device=reference.device)
        tokens = tokens.to(torch.float64).clamp_min(1.0)
        denominator = kwargs.get("num_items_in_batch")
        denominator = float(denominator) if denominator is not None else float(tokens.sum())
        scale = (denominator / tokens).cpu().numpy()
        alpha = torch.ones(batch, self._gates.num_gates, device=reference.device, requires_grad=True)

        def record(gradient: torch.Tensor) -> None:
            # The loss is sum_s n_s * mean_loss_s / D: undo the weight to get each sample's per-token gradient.
            self._rows.append(gradient.detach().to(torch.float64).cpu().numpy() * scale[:, None])

        alpha.register_hook(record)
        self._gates.alpha = alpha
        return None

    def _local_fisher(self) -> FisherEstimate:
        rows = np.concatenate(self._rows, axis=0)
        return FisherEstimate(
            gradients=rows,
            hessian=hessian_from_gradients(rows),
            mean_gradient=rows.mean(axis=0),
            metadata={
                "fisher": "empirical (training batches)",
                "granularity": self.config.granularity,
                "blocks": [u.to_dict() for u in self.units],
                "model_type": self.adapter.model_type,
                "num_samples": int(rows.shape[0]),
            },
        )

    def _gathered_fisher(self) -> FisherEstimate:
        """The Fisher over every process's rows, so every process solves the same problem."""
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            gathered: list[Any] = [None] * torch.distributed.get_world_size()
            torch.distributed.all_gather_object(gathered, self._rows)
            self._rows = [rows for part in gathered for rows in part]
        if not self._rows:
            raise SurgeryError(
                "No Fisher rows were collected before `prune_at_step`: the training loss did not reach the gated "
                "blocks (is the model being trained the one the Trainer was given?)."
            )
        return self._local_fisher()


def _forget_parameters(optimizer, removed: set[int]) -> None:
    """Drop removed parameters from the optimizer's groups and state (moments, step counts).

    Parameter groups themselves stay, so schedulers (which hold per-group values) need no change.
    """
    inner = getattr(
        optimizer, "optimizer", optimizer
    )  # accelerate's AcceleratedOptimizer wraps the torch one
    for group in inner.param_groups:
        keep = [i for i, p in enumerate(group["params"]) if id(p) not in removed]
        if "param_names" in group:
            group["param_names"] = [group["param_names"][i] for i in keep]
        group["params"] = [group["params"][i] for i in keep]
    for parameter in [p for p in inner.state if id(p) in removed]:
        del inner.state[parameter]
