"""Command line: `optimum-blockprune {prune,rank,estimate,push}` (also `optimum-cli blockprune ...`).

Every `BlockRemovalConfig` field is an option (`num_blocks_to_remove` -> `--num-blocks-to-remove`), so the
command line and the Python API cannot drift apart.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import traceback
from collections.abc import Sequence
from dataclasses import MISSING, fields, replace
from typing import Any, Literal, get_args, get_origin, get_type_hints

from .config import BlockRemovalConfig
from .errors import BlockPruneError
from .version import __version__

logger = logging.getLogger("optimum_blockprune")

# Fields typed as a Literal become options with those choices.
_CHOICES = {
    name: get_args(hint)
    for name, hint in get_type_hints(BlockRemovalConfig).items()
    if get_origin(hint) is Literal
}
# Fields whose choices are a registry's names (read when the parser is built, so a newly registered entry is there).
_REGISTRY_CHOICES = {
    "method": ("optimum_blockprune.methods", "available_methods", "get_method"),
    "energy": ("optimum_blockprune.energies", "available_energies", "get_energy"),
    "solver": ("optimum_blockprune.solvers", "available_solvers", None),
}
# Fields whose default (None) does not reveal their type.
_TYPES = {
    "min_parameters_removed": float,
    "max_parameters_removed": float,
    "dataset_config_name": str,
    "correction_rounds": int,
    "max_tokens_per_batch": int,
}


def _index_list(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in text.replace(" ", "").split(",") if part)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated 0-based block indices like '0,31', got {text!r}"
        ) from None


def _name_list(text: str) -> tuple[str, ...]:
    return tuple(part for part in text.replace(" ", "").split(",") if part)


def _kind_counts(text: str) -> dict[str, int]:
    counts = {}
    for part in _name_list(text):
        kind, _, value = part.partition("=")
        if not kind or not value.isdigit():
            raise argparse.ArgumentTypeError(
                f"expected comma-separated kind=count pairs like 'attention=1,moe=2', got {text!r}"
            )
        counts[kind] = int(value)
    return counts


def add_config_arguments(
    parser: argparse.ArgumentParser,
    *,
    exclude: Sequence[str] = (),
    overrides: dict[str, dict[str, Any]] | None = None,
) -> None:
    group = parser.add_argument_group("block removal (BlockRemovalConfig fields)")
    for field in fields(BlockRemovalConfig):
        if field.name in exclude:
            continue
        option = "--" + field.name.replace("_", "-")
        if field.default is not MISSING:
            default = field.default
        elif field.default_factory is not MISSING:
            default = field.default_factory()
        else:
            default = None
        kwargs = {"default": default, "help": field.metadata["help"] + f" (default: {default!r})"}
        if overrides and field.name in overrides:
            group.add_argument(option, **{**kwargs, **overrides[field.name]})
            continue
        if field.name in ("protected_blocks", "forced_blocks"):
            kwargs.update(type=_index_list, metavar="I,J,...")
        elif field.name == "candidate_kinds":
            kwargs.update(type=_name_list, metavar="KIND,...")
        elif field.name == "auto_candidates":
            kwargs.update(type=_name_list, metavar="METHOD,...")
        elif field.name in ("max_removed_per_kind", "min_removed_per_kind"):
            kwargs.update(type=_kind_counts, metavar="KIND=N,...")
        elif isinstance(default, bool) or field.name == "apply_chat_template":
            kwargs["action"] = argparse.BooleanOptionalAction
        elif field.name in _CHOICES:
            kwargs["choices"] = _CHOICES[field.name]
        elif field.name in _REGISTRY_CHOICES:
            kwargs["choices"], described = _registry_choices(field.name)
            kwargs["help"] = f"{kwargs['help']} Registered: {described}."
        elif field.name in _TYPES:
            kwargs["type"] = _TYPES[field.name]
        elif isinstance(default, (int, float)):
            kwargs["type"] = type(default)
        group.add_argument(option, **kwargs)


def _registry_choices(name: str) -> tuple[list[str], str]:
    """The registered names for a field, and their one-line descriptions for the help text."""
    import importlib

    module_name, list_names, get_entry = _REGISTRY_CHOICES[name]
    module = importlib.import_module(module_name)
    names = getattr(module, list_names)()
    if get_entry is None:
        return names, ", ".join(names)
    entries = [getattr(module, get_entry)(n) for n in names]
    return names, "; ".join(f"{e.name}: {e.description}" for e in entries)


def config_from_args(args: argparse.Namespace) -> BlockRemovalConfig:
    values = {f.name: getattr(args, f.name) for f in fields(BlockRemovalConfig) if hasattr(args, f.name)}
    return BlockRemovalConfig(**values)


def _add_model_arguments(
    parser: argparse.ArgumentParser, *, required: bool = True, quantization: bool = True
) -> None:
    parser.add_argument("model", nargs=None if required else "?", help="Hub model id or local directory.")
    group = parser.add_argument_group("model loading (passed to from_pretrained)")
    group.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"])
    group.add_argument(
        "--device-map", default=None, help="e.g. 'cpu', 'cuda', 'auto' (accelerate placement)."
    )
    group.add_argument("--revision", default=None)
    if (
        quantization
    ):  # `estimate` and `rank` only: `prune` saves the model, which must be the full-precision one
        group.add_argument(
            "--quantization",
            default=None,
            choices=sorted(QUANTIZATIONS),
            help="Load frozen quantized weights (transformers' quantizers) for the Fisher and measured removals; "
            "apply the ranking to the full-precision checkpoint afterwards (README: Large models).",
        )
    group.add_argument("--gguf-file", default=None, help="Load a GGUF file from the model directory/repo.")
    group.add_argument("--trust-remote-code", action="store_true")


def _add_dataset_argument(parser: argparse.ArgumentParser, required: bool) -> None:
    parser.add_argument(
        "--dataset",
        required=required,
        help="Calibration data: a local file (.txt/.json/.jsonl/.csv/.parquet; .jsonl/.json records may hold "
        "`input_ids` token ids, which need no tokenizer), a dataset directory, or a Hub dataset name (see "
        "--dataset-split, --dataset-config-name, --text-column).",
    )


def add_prune_arguments(parser: argparse.ArgumentParser) -> None:
    _add_model_arguments(parser, quantization=False)
    _add_dataset_argument(parser, required=False)
    parser.add_argument("--output-dir", required=True, help="Where to write the pruned checkpoint and card.")
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="Save into a non-empty --output-dir, replacing only the files a save writes (other files stay), and "
        "replace an existing --save-fisher.",
    )
    parser.add_argument("--fisher-file", default=None, help="Reuse a Fisher estimate saved by `estimate`.")
    parser.add_argument("--save-fisher", default=None, help="Also save the Fisher estimate to this file.")
    parser.add_argument(
        "--push-to-hub", default=None, metavar="REPO_ID", help="Upload the result to this repo."
    )
    parser.add_argument("--private", action="store_true", help="Create the Hub repo as private.")
    sweep = parser.add_argument_group("how many blocks: `--num-blocks-to-remove auto` sweeps, then prunes")
    sweep.add_argument(
        "--sweep-num-blocks",
        type=_block_count_list,
        default=None,
        metavar="START:STOP[:STEP]",
        help="The M's to try with --num-blocks-to-remove auto (e.g. 2:16:2); the largest within the budget is "
        "pruned, and the sweep's table and picture go into the card.",
    )
    _add_sweep_quality_arguments(sweep)
    parser.add_argument(
        "--measure-speed",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="Time prefill and decode before and after pruning (1 x 128 tokens, 32 decoded, median of 5) for the "
        "card's speed-up (default: on).",
    )
    add_config_arguments(
        parser,
        overrides={
            "num_blocks_to_remove": dict(
                type=_count_or_auto,
                metavar="M|auto",
                help="How many blocks to remove, or 'auto': sweep --sweep-num-blocks and take the largest M within "
                "--max-perplexity-increase / --max-kl (default: 8).",
            )
        },
    )
    parser.set_defaults(handler=run_prune)


def _count_or_auto(text: str) -> int | str:
    if text == "auto":
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of blocks or 'auto', got {text!r}") from None


def add_rank_arguments(parser: argparse.ArgumentParser) -> None:
    _add_model_arguments(parser, required=False)
    _add_dataset_argument(parser, required=False)
    parser.add_argument(
        "--fisher-file", default=None, help="Rank from a saved Fisher estimate (no model needed)."
    )
    parser.add_argument("--json", default=None, metavar="PATH", help="Also write the ranking as JSON.")
    parser.add_argument("--overwrite", action="store_true", help="Replace an existing --json file.")
    add_config_arguments(parser, exclude=("selected_state",))
    parser.set_defaults(handler=run_rank)


def add_estimate_arguments(parser: argparse.ArgumentParser) -> None:
    _add_model_arguments(parser)
    _add_dataset_argument(parser, required=True)
    parser.add_argument("--output", required=True, help="Fisher file to write (.safetensors).")
    parser.add_argument("--overwrite", action="store_true", help="Replace an existing --output file.")
    parser.add_argument(
        "--checkpoint-dir",
        default=None,
        help="Write the rows done so far here; rerun the same command after a crash to resume from them.",
    )
    parser.add_argument(
        "--checkpoint-every", type=int, default=64, help="Samples between checkpoint writes (default: 64)."
    )
    add_config_arguments(
        parser,
        exclude=(
            "num_blocks_to_remove",
            "protected_blocks",
            "forced_blocks",
            "min_parameters_removed",
            "max_parameters_removed",
            "count_active_parameters",
            "contiguous",
            "num_states",
            "selected_state",
            "energy",
            "solver",
            "solver_time_limit_s",
            "method",
            "selection",
            "selection_metric",
            "num_selection_samples",
            "verify_fisher_model",
        ),
    )
    parser.set_defaults(handler=run_estimate)


def _block_count_list(text: str) -> list[int]:
    """`2:16:2` (start:stop:step, stop excluded, as `range`), `2:16` (step 1) or `2,4,6`."""
    try:
        if ":" in text:
            parts = [int(part) for part in text.split(":")]
            if len(parts) not in (2, 3):
                raise ValueError
            return list(range(*parts))
        return [int(part) for part in text.replace(" ", "").split(",") if part]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected START:STOP[:STEP] (as range: STOP excluded) or a comma list like '2,4,6', got {text!r}"
        ) from None


def _add_sweep_quality_arguments(group) -> None:
    """The held-out slice and the quality budget, the same for `sweep` and `prune --num-blocks-to-remove auto`."""
    group.add_argument(
        "--num-eval-samples",
        type=int,
        default=16,
        help="Held-out samples (after the scoring ones in the data) for perplexity and KL (default: 16).",
    )
    group.add_argument(
        "--max-perplexity-increase",
        type=float,
        default=None,
        help="A quality budget, e.g. 0.1 for +10 %% held-out perplexity: the largest M within it.",
    )
    group.add_argument(
        "--max-kl", type=float, default=None, help="A budget in per-token KL to the unpruned model."
    )


def _sweep_request(args: argparse.Namespace, counts: list[int]) -> dict[str, float | None]:
    """Check a sweep's counts, held-out slice and budget before the model loads; return the budget."""
    from .sweep import block_counts, check_budget, check_eval_samples

    block_counts(counts)  # the model's block count bounds them again once it is loaded
    check_eval_samples(args.num_eval_samples)
    budget = dict(max_perplexity_increase=args.max_perplexity_increase, max_kl=args.max_kl)
    check_budget(**budget)
    return budget


def add_sweep_arguments(parser: argparse.ArgumentParser) -> None:
    _add_model_arguments(parser, quantization=False)
    _add_dataset_argument(parser, required=True)
    parser.add_argument(
        "--num-blocks",
        type=_block_count_list,
        required=True,
        metavar="START:STOP[:STEP]",
        help="How many blocks to remove at each point: 2:16:2 is 2, 4, ..., 14 (as range), or a list 2,4,6.",
    )
    parser.add_argument("--no-speed", action="store_true", help="Skip timing the pruned models.")
    parser.add_argument(
        "--speed-batch-size", type=int, default=1, help="Batch for the speed timing (default: 1)."
    )
    parser.add_argument(
        "--prompt-length", type=int, default=128, help="Prefill tokens per sequence (default: 128)."
    )
    parser.add_argument(
        "--new-tokens", type=int, default=32, help="Decoded tokens per sequence (default: 32)."
    )
    parser.add_argument(
        "--repeats", type=int, default=5, help="Timed runs per model; the median counts (default: 5)."
    )
    _add_sweep_quality_arguments(parser)
    parser.add_argument("--json", default=None, metavar="PATH", help="Write the sweep as JSON.")
    parser.add_argument(
        "--plot", default=None, metavar="PATH", help="Write the quality and speed picture (PNG)."
    )
    parser.add_argument("--overwrite", action="store_true", help="Replace existing --json / --plot files.")
    add_config_arguments(parser, exclude=("num_blocks_to_remove", "selected_state"))
    parser.set_defaults(handler=run_sweep)


def add_push_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("directory", help="A directory written by `prune` (or `Pruner.save_pretrained`).")
    parser.add_argument("repo_id", help="The Hub repository to upload to (created if missing).")
    parser.add_argument("--private", action="store_true", help="Create the Hub repo as private.")
    parser.add_argument("--revision", default=None, help="Branch to commit to.")
    parser.add_argument("--create-pr", action="store_true", help="Open a pull request instead of committing.")
    parser.set_defaults(handler=run_push)


SUBCOMMANDS = {
    "prune": (
        "Estimate, rank, remove the chosen blocks, and save a standard checkpoint with its card.",
        add_prune_arguments,
    ),
    "rank": (
        "Print the ranking of block removals (CBO energy or a baseline's) without modifying any model.",
        add_rank_arguments,
    ),
    "estimate": (
        "Estimate the block Fisher once and save it, to rank or prune later for any M.",
        add_estimate_arguments,
    ),
    "sweep": (
        "How many blocks can I remove? Each M's pick, its held-out quality and the pruned model's measured speed.",
        add_sweep_arguments,
    ),
    "push": (
        "Upload a saved pruned model to the Hub (again: a retry re-sends only what the Hub lacks).",
        add_push_arguments,
    ),
}


def _load_pruner(args: argparse.Namespace):
    from .pruner import Pruner

    kwargs = {"dtype": args.dtype}
    for name in ("device_map", "revision", "gguf_file"):
        if getattr(args, name) is not None:
            kwargs[name] = getattr(args, name)
    if args.trust_remote_code:
        kwargs["trust_remote_code"] = True
    if getattr(args, "quantization", None):
        kwargs["quantization_config"] = quantization_config(args.quantization)
    return Pruner.from_pretrained(args.model, **kwargs)


#: `--quantization` values: the quantizer and its weight type (quanto and torchao run on CPU; bitsandbytes on CUDA)
QUANTIZATIONS = {
    "quanto-int8": "optimum-quanto",
    "quanto-int4": "optimum-quanto",
    "torchao-int8": "torchao",
    "bnb-nf4": "bitsandbytes",
}


def quantization_config(name: str):
    """The transformers quantization config a `--quantization` value names (its package imported only now)."""
    import transformers

    if name.startswith("quanto-"):
        return transformers.QuantoConfig(weights=name.removeprefix("quanto-"))
    if name == "torchao-int8":
        from torchao.quantization import Int8WeightOnlyConfig

        return transformers.TorchAoConfig(Int8WeightOnlyConfig())
    import torch

    return transformers.BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.bfloat16
    )


def _require_data(args: argparse.Namespace, command: str, config: BlockRemovalConfig) -> None:
    """Fail before loading the model when the method or the selection needs data that was not given."""
    from .methods import get_method
    from .selection import needs_calibration_data

    config = config.resolved(has_data=args.dataset is not None)  # what the library will resolve without data
    if args.dataset is not None or not needs_calibration_data(
        config, has_fisher=args.fisher_file is not None
    ):
        return
    if needs_calibration_data(config, has_fisher=True):  # a Fisher file would not be enough
        raise BlockPruneError(
            f"`{command}` with --method {config.method} --energy {config.energy} --selection {config.selection} "
            "needs calibration data: pass `--dataset PATH_OR_NAME`"
            + (
                ", or rank from the Fisher file alone with `--energy paper`."
                if args.fisher_file and get_method(config.method_name).uses_energy
                else "."
            )
        )
    raise BlockPruneError(
        f"`{command}` needs calibration data: pass `--dataset PATH_OR_NAME` or `--fisher-file FILE`."
    )


def _check_inputs(args: argparse.Namespace):
    """What can fail without the model, checked before it loads: the data path, the Fisher file (read here)."""
    from .estimation import FisherEstimate
    from .estimation.calibration import check_calibration_source

    if getattr(args, "dataset", None) is not None:
        check_calibration_source(args.dataset, "--dataset")
    fisher_file = getattr(args, "fisher_file", None)
    return FisherEstimate.load(fisher_file) if fisher_file else None


def _is_main_process() -> bool:
    """Under several processes (`accelerate launch`, `torchrun`) all compute the same result; the first writes."""
    from .estimation.parallel import current_processes

    return current_processes().is_main


def run_prune(args: argparse.Namespace) -> int:
    from .estimation.fisher import fisher_file_path
    from .hub import ensure_writable_directory, push_folder_to_hub
    from .methods import get_method
    from .utils import check_output_directory, check_output_file

    auto = args.num_blocks_to_remove == "auto"
    if auto:
        if args.sweep_num_blocks is None or (args.max_perplexity_increase is None and args.max_kl is None):
            raise BlockPruneError(
                "--num-blocks-to-remove auto needs the M's to try (--sweep-num-blocks, e.g. 2:16:2) and a budget "
                "(--max-perplexity-increase, e.g. 0.1, or --max-kl)."
            )
        budget = _sweep_request(args, args.sweep_num_blocks)
        if args.dataset is None:
            raise BlockPruneError(
                "--num-blocks-to-remove auto measures quality on held-out data: pass --dataset."
            )
        args.num_blocks_to_remove = min(args.sweep_num_blocks)  # checked now; the sweep picks the real one
    config = config_from_args(args)
    _require_data(args, "prune", config)
    if args.save_fisher and "fisher" not in get_method(config.method_name).requirements(config):
        raise BlockPruneError(
            f"--save-fisher saves the Fisher the ranking estimates, but --method {config.method_name} --energy "
            f"{config.energy} estimates none: add --energy paper (or a Fisher-based method), or drop --save-fisher."
        )
    # every output location before any expensive work
    check_output_directory(args.output_dir, "--output-dir")
    ensure_writable_directory(args.output_dir, args.overwrite)
    if args.save_fisher:
        check_output_file(fisher_file_path(args.save_fisher), "--save-fisher", overwrite=args.overwrite)
    fisher = _check_inputs(args)
    pruner = _load_pruner(args)
    if auto:
        sweep = pruner.sweep(
            config,
            args.dataset,
            args.sweep_num_blocks,
            num_eval_samples=args.num_eval_samples,
            speed=args.measure_speed,
        )
        print(sweep.to_markdown())
        chosen = sweep.choose(**budget)
        if chosen is None:
            raise BlockPruneError(
                f"No M of {args.sweep_num_blocks} keeps within the budget (smallest: M = {sweep.points[0].num_blocks}, "
                f"held-out perplexity {sweep.points[0].perplexity:.2f} vs {sweep.unpruned_perplexity:.2f} "
                "unpruned); nothing was pruned or saved. Try smaller M's or relax the budget."
            )
        print(f"\nLargest M within the budget: {chosen}.")
        config = replace(config, num_blocks_to_remove=chosen)
    pruner.check_config(config, applying=True)  # what `prune` checks: the result must be storable
    selection = pruner.select(config, args.dataset, fisher=fisher)
    if args.measure_speed:  # right before and after the surgery, so both timings see the same machine load
        pruner.measure_speed()
    result = pruner.apply(selection)
    if args.measure_speed:
        pruner.measure_speed()
    if not _is_main_process():  # under `accelerate launch` every process holds the result; one writes it
        return 0
    if args.save_fisher:
        pruner.fisher.save(args.save_fisher, overwrite=args.overwrite)
    print(pruner.ranking.describe(selected_rank=result.selected_rank))
    print(
        f"\nRemoved blocks (0-based): {list(result.removed_blocks)}; parameters "
        f"{result.num_parameters_before:,} -> {result.num_parameters_after:,} ({100 * result.parameter_reduction:.1f}% fewer)"
    )
    _save_or_fall_back(pruner, args.output_dir, overwrite=args.overwrite, repo_id=args.push_to_hub)
    print(f"Saved to {args.output_dir}")
    if args.push_to_hub:  # the saved directory itself: a failed upload leaves it as it is, ready to retry
        push_folder_to_hub(args.output_dir, args.push_to_hub, private=args.private or None)
        print(f"Pushed to https://huggingface.co/{args.push_to_hub}")
    return 0


def _save_or_fall_back(pruner, output_dir: str, **options) -> None:
    """Save; if that fails after the work (the disk filled, the directory went away), save to a fresh directory
    under the system's temporary directory instead, so minutes of pruning are not lost, and say where.

    Raises:
        OutputPathError: the save failed; the message names where the model was saved instead (or that it could
            not be).
    """
    from .errors import OutputExistsError, OutputPathError

    try:
        pruner.save_pretrained(output_dir, **options)
    except OSError as error:  # OutputPathError is one
        if isinstance(error, OutputExistsError):
            raise
        import tempfile

        name = os.path.basename(os.path.abspath(output_dir)) or "model"
        fallback = tempfile.mkdtemp(prefix=f"optimum-blockprune-{name}-")
        try:
            pruner.save_pretrained(fallback, overwrite=True, repo_id=options.get("repo_id"))
        except Exception as second:  # noqa: BLE001 - the first error is the one to report
            raise OutputPathError(
                f"Saving to {output_dir!r} failed ({error}), and so did the fallback save to {fallback!r} "
                f"({second})."
            ) from error
        raise OutputPathError(
            f"Saving to {output_dir!r} failed ({error}). The pruned model was saved to {fallback!r} instead; move it "
            f"where you want it (`mv {fallback} <dir>`)."
        ) from error


def run_sweep(args: argparse.Namespace) -> int:
    from .sweep import SpeedSettings
    from .utils import check_output_file

    config = config_from_args(args)
    budget = _sweep_request(args, args.num_blocks)
    settings = SpeedSettings(args.speed_batch_size, args.prompt_length, args.new_tokens, args.repeats)
    for path, name in ((args.json, "--json"), (args.plot, "--plot")):
        if path:
            check_output_file(path, name, overwrite=args.overwrite)
    _check_inputs(args)
    pruner = _load_pruner(args)
    sweep = pruner.sweep(
        config,
        args.dataset,
        args.num_blocks,
        num_eval_samples=args.num_eval_samples,
        speed=not args.no_speed,
        speed_settings=settings,
    )
    if not _is_main_process():
        return 0
    print(sweep.to_markdown())
    print(
        f"\n`{sweep.method}` on {pruner.num_blocks} blocks; held-out: {sweep.held_out['num_samples']} samples, "
        f"{sweep.held_out['num_tokens']:,} tokens; the choices cost {sweep.block_evaluations:,} block evaluations; "
        f"{sweep.seconds:.0f} s in all" + (f"; timed on {sweep.device}" if sweep.unpruned_speed else "") + "."
    )
    if sweep.knee() is not None:
        print(f"Knee: M = {sweep.knee()} (quality falls fastest after it).")
    if any(v is not None for v in budget.values()):
        chosen = sweep.choose(**budget)
        print(
            f"Largest M within the budget: {chosen}"
            if chosen is not None
            else "No M is within the budget: remove fewer blocks or relax it."
        )
    if args.json:
        sweep.save(args.json, overwrite=args.overwrite)
        print(f"Wrote {args.json}")
    if args.plot and sweep.plot(args.plot):
        print(f"Wrote {args.plot}")
    return 0


def run_rank(args: argparse.Namespace) -> int:
    from .selection import needs_calibration_data, rank_from_fisher
    from .utils import check_output_file

    config = config_from_args(args)
    _require_data(args, "rank", config)
    if args.json:
        check_output_file(args.json, "--json", overwrite=args.overwrite)
    fisher = _check_inputs(args)
    if fisher is not None and not needs_calibration_data(config, has_fisher=True):
        if args.model is not None:  # given a model, the Fisher must be this model's, as `prune` checks
            ranking = _load_pruner(args).solve(fisher, config)
        else:
            ranking = rank_from_fisher(fisher, config)  # no model needed
        chosen = config.selected_state
    else:
        if args.model is None:
            raise BlockPruneError(
                f"`rank` needs a MODEL for --method {config.method_name} --selection {config.selection} (only methods "
                "that read nothing but the Fisher, such as 'cbo' with `selection='ground'`, rank from "
                "`--fisher-file` alone)."
            )
        pruner = _load_pruner(args)
        chosen = pruner.select(config, args.dataset, fisher=fisher).state.rank
        ranking = pruner.ranking
        if not _is_main_process():
            return 0
    print(ranking.describe(selected_rank=chosen, mark="prune would apply"))  # `rank` applies nothing
    if args.json:
        from .utils import atomic_write_text

        atomic_write_text(args.json, json.dumps(ranking.to_dict(), indent=2) + "\n")
    return 0


def run_estimate(args: argparse.Namespace) -> int:
    from .estimation.fisher import fisher_file_path
    from .utils import check_output_directory, check_output_file

    config = config_from_args(args)
    check_output_file(fisher_file_path(args.output), "--output", overwrite=args.overwrite)
    if args.checkpoint_dir is not None:
        check_output_directory(args.checkpoint_dir, "--checkpoint-dir")
    _check_inputs(args)
    if args.checkpoint_every < 1:
        raise BlockPruneError(f"--checkpoint-every must be at least 1 sample, got {args.checkpoint_every}.")
    fisher = _load_pruner(args).estimate(
        args.dataset, config, checkpoint_dir=args.checkpoint_dir, checkpoint_every=args.checkpoint_every
    )
    if not _is_main_process():  # every process holds the estimate; one writes it
        return 0
    path = fisher.save(args.output, overwrite=args.overwrite)
    print(
        f"Saved the {fisher.metadata['fisher']} Fisher ({fisher.num_samples} samples x {fisher.num_gates} gates) to {path}"
    )
    return 0


def run_push(args: argparse.Namespace) -> int:
    from .hub import push_folder_to_hub

    push_folder_to_hub(
        args.directory,
        args.repo_id,
        private=args.private or None,
        revision=args.revision,
        create_pr=args.create_pr,
        require_saved_model=True,
    )
    print(f"Pushed {args.directory} to https://huggingface.co/{args.repo_id}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="optimum-blockprune",
        description="Remove whole transformer blocks chosen by constrained binary optimisation (arXiv:2602.00161).",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="Log DEBUG details; show tracebacks.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    subparsers = parser.add_subparsers(dest="command", required=True)
    for name, (help_text, add_arguments) in SUBCOMMANDS.items():
        add_arguments(subparsers.add_parser(name, help=help_text, description=help_text))
    return parser


#: Loading a model makes transformers import its torchao quantizer when torchao is installed, which logs missing
#: CUDA kernels and torch's deprecation of its enums: nothing a block-removal run can act on (`--verbose` shows them).
NOISY_LOGGERS = ("torchao", "torch.utils._pytree")


def execute(args: argparse.Namespace, parser: argparse.ArgumentParser | None = None) -> int:
    """Run a parsed command; library errors become one clear line and exit status 2 (with the traceback under
    `--verbose`)."""
    logging.basicConfig(format="%(levelname)s %(name)s: %(message)s")
    logger.setLevel(logging.DEBUG if getattr(args, "verbose", False) else logging.INFO)
    if not getattr(args, "verbose", False):
        for name in NOISY_LOGGERS:
            logging.getLogger(name).setLevel(logging.ERROR)
    try:
        return args.handler(args)
    except KeyboardInterrupt:
        if getattr(args, "verbose", False):
            traceback.print_exc()
        # every write is atomic, so an interrupted command leaves no partial output
        checkpoint = getattr(args, "checkpoint_dir", None)
        what = (
            f"the rows checkpointed so far are kept in {checkpoint!r}: run the same command again to resume"
            if checkpoint
            else "nothing was written"
        )
        print(
            f"optimum-blockprune {getattr(args, 'command', '') or ''}: interrupted; {what}.", file=sys.stderr
        )
        return 130
    except BlockPruneError as error:
        if getattr(args, "verbose", False):
            traceback.print_exc()
        message = f"optimum-blockprune {getattr(args, 'command', '') or ''}: error: {error}"
        print(message, file=sys.stderr)
        return 2


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    return execute(parser.parse_args(argv), parser)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
