"""Do the picks stay ahead after healing? Each method's pick from `selection_smollm2.py`, distilled with one budget.

    python benchmarks/selection_smollm2.py            # first: the picks (results/selection_smollm2.json)
    python benchmarks/healing_smollm2.py              # 10-15 minutes per pick (40 steps) on one shared core

For each M in --remove and each method in --methods, the blocks that method picked in the selection benchmark
are removed from a fresh copy of SmolLM2-135M-Instruct, which is then distilled from the unpruned model with the
same budget for every pick (same steps, batch, learning rate, seed and training passages, all from the calibration
plays), and measured on the same held-out passages as the selection benchmark. Picks that coincide are trained
once. Writes JSON as it goes and prints a table.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import time

from _report import grid, relative, write_json

HERE = os.path.dirname(__file__)
RESULTS = os.path.join(HERE, "results")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--picks", default=os.path.join(RESULTS, "selection_smollm2.json"))
    parser.add_argument("--remove", type=int, nargs="+", default=[6, 9])
    parser.add_argument(
        "--methods",
        nargs="+",
        default=["cbo_ground:measured_pairs", "cbo_ground:paper", "block_influence", "sleb"],
    )
    parser.add_argument("--max-steps", type=int, default=30)
    parser.add_argument("--train-batch-size", type=int, default=4)
    parser.add_argument("--learning-rate", type=float, default=2e-4)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--output", default=os.path.join(RESULTS, "healing_smollm2.json"))
    args = parser.parse_args()

    import torch

    from optimum_blockprune import Pruner, demo
    from optimum_blockprune.distillation import DistillationConfig
    from optimum_blockprune.estimation.calibration import prepare_calibration_data
    from optimum_blockprune.evaluation import evaluate_perplexity

    torch.set_num_threads(args.threads)
    with open(args.picks, encoding="utf-8") as handle:
        picks = json.load(handle)
    settings = picks["args"]
    rows = {(r["method"], r["num_removed"]): r for r in picks["rows"]}
    missing = [(m, k) for k in args.remove for m in args.methods if (m, k) not in rows]
    if missing:
        raise SystemExit(f"{args.picks} has no pick for {missing}; run selection_smollm2.py with them first.")

    base = demo.load_smollm2_pruner()
    tokenizer, pad = base.tokenizer, base.pad_token_id
    min_chars = 4 * settings["max_length"]
    held_out = prepare_calibration_data(
        demo.shakespeare_passages(demo.HELD_OUT_PLAYS, min_chars=min_chars),
        tokenizer,
        num_samples=settings["eval_samples"],
        max_length=settings["max_length"],
    )
    training_texts = demo.shakespeare_passages(demo.CALIBRATION_PLAYS, min_chars=min_chars)
    teacher = base.model
    payload = {
        "args": {**vars(args), "picks": relative(args.picks), "output": relative(args.output)},
        "machine": platform.platform(),
        "unpruned_perplexity": evaluate_perplexity(teacher, held_out, pad_token_id=pad),
        "rows": [],
    }
    print(f"Unpruned held-out perplexity {payload['unpruned_perplexity']:.1f}")
    healed: dict[tuple[int, ...], dict] = {}
    for m in args.remove:
        for method in args.methods:
            blocks = tuple(rows[method, m]["removed_blocks"])
            if blocks not in healed:
                student = copy.deepcopy(teacher).requires_grad_(
                    True
                )  # the trainer froze the teacher it was given
                pruner = Pruner(student, tokenizer, model_id=base.model_id)
                pruner.apply(list(blocks))
                before = evaluate_perplexity(pruner.model, held_out, pad_token_id=pad)
                training = DistillationConfig(
                    output_dir=os.path.join("/tmp", "blockprune-healing-trainer"),
                    max_steps=args.max_steps,
                    per_device_train_batch_size=args.train_batch_size,
                    learning_rate=args.learning_rate,
                    lr_scheduler_type="cosine",
                    warmup_steps=max(1, args.max_steps // 20),
                    logging_steps=max(1, args.max_steps // 3),
                    save_strategy="no",
                    report_to="none",
                    use_cpu=True,
                    seed=0,
                )
                start = time.perf_counter()
                pruner.distill(
                    training_texts,
                    training,
                    teacher=teacher,
                    num_train_samples=args.max_steps * args.train_batch_size,
                )
                healed[blocks] = {
                    "perplexity_before": before,
                    "perplexity_after": evaluate_perplexity(pruner.model, held_out, pad_token_id=pad),
                    "train_seconds": time.perf_counter() - start,
                }
                del pruner
            row = {"method": method, "num_removed": m, "removed_blocks": list(blocks), **healed[blocks]}
            payload["rows"].append(row)
            print(
                f"M={m:2d} {method:28s} {list(blocks)}  ppl {row['perplexity_before']:9.1f} -> "
                f"{row['perplexity_after']:7.1f}  ({row['train_seconds']:.0f} s)",
                flush=True,
            )
            write_json(args.output, payload)
    print("\n" + markdown_table(payload))


def markdown_table(payload: dict) -> str:
    """Held-out perplexity before -> after healing, per method and M; the best healed per column in bold."""
    args = payload["args"]
    return "\n".join(
        [
            f"Held-out perplexity before -> after {args['max_steps']} distillation steps (batch "
            f"{args['train_batch_size']}, lr {args['learning_rate']}); unpruned "
            f"{payload['unpruned_perplexity']:.1f}.",
            "",
            *grid(
                payload["rows"],
                "pick of",
                lambda r: f"{r['perplexity_before']:.1f} -> {r['perplexity_after']:.1f}",
                lambda r: r["perplexity_after"],
            ),
        ]
    )


if __name__ == "__main__":
    main()
