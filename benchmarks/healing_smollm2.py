"""Do the picks stay ahead after healing? Each method's pick from `selection_smollm2.py`, distilled with one budget.

    python benchmarks/selection_smollm2.py            # first: the picks (results/selection_smollm2.json)
    python benchmarks/healing_smollm2.py              # 10-15 minutes per pick (40 steps) on one shared core
    python benchmarks/healing_smollm2.py --picks benchmarks/results/guided4_shakespeare_32.json \
        benchmarks/results/evopress_m12_shakespeare_32.json --remove 12 --methods guided sleb evopress --max-steps 40

For each M in --remove and each method in --methods, the blocks that method picked in the selection benchmark
(`--picks`: one or more of its JSON files, one corpus; where two files hold a method's pick at M, the first wins)
are removed from a fresh copy of SmolLM2-135M-Instruct, which is then distilled from the unpruned model with the
same budget for every pick (same steps, batch, learning rate, seed and training passages, all from the corpus's
calibration part), and measured on the same held-out passages as the selection benchmark. `--seed` changes the
training seed for every pick alike (run it again with another seed and output to see how far training noise moves
the comparison). Picks that coincide are trained once, and so are picks already healed in `--output` by an earlier
run with the same budget (add a method's pick later without retraining the others). Writes JSON as it goes and prints a table.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import time

from _corpora import one_setting, passages, recorded_picks
from _report import grid, recorded_args, relative, write_json

HERE = os.path.dirname(__file__)
RESULTS = os.path.join(HERE, "results")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--picks", nargs="+", default=[os.path.join(RESULTS, "selection_smollm2.json")])
    parser.add_argument("--remove", type=int, nargs="+", default=[6, 9])
    parser.add_argument(
        "--methods",
        nargs="+",
        default=["cbo_ground:measured_pairs", "cbo_ground:paper", "block_influence", "sleb"],
    )
    parser.add_argument("--max-steps", type=int, default=30)
    parser.add_argument("--train-batch-size", type=int, default=4)
    parser.add_argument("--learning-rate", type=float, default=2e-4)
    parser.add_argument(
        "--seed", type=int, default=0, help="the training seed (sample order), the same for every pick"
    )
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--output", default=os.path.join(RESULTS, "healing_smollm2.json"))
    args = parser.parse_args()

    import torch

    from optimum_blockprune import Pruner, demo
    from optimum_blockprune.distillation import DistillationConfig
    from optimum_blockprune.estimation.calibration import prepare_calibration_data
    from optimum_blockprune.evaluation import evaluate_perplexity

    torch.set_num_threads(args.threads)
    recorded = list(recorded_picks(args.picks, args.remove, args.methods))
    rows = {}
    for _, _, row in recorded:
        rows.setdefault((row["method"], row["num_removed"]), row)
    missing = [(m, k) for k in args.remove for m in args.methods if (m, k) not in rows]
    if missing:
        raise SystemExit(
            f"{args.picks} have no pick for {missing}; run selection_smollm2.py with them first."
        )
    # one held-out set: the perplexities before healing are compared with those after
    corpus, eval_samples, max_length = one_setting(recorded, ("corpus", "eval_samples", "max_length"))

    base = demo.load_smollm2_pruner()
    tokenizer, pad = base.tokenizer, base.pad_token_id
    held_out = prepare_calibration_data(
        passages(corpus, "held_out", max_length=max_length),
        tokenizer,
        num_samples=eval_samples,
        max_length=max_length,
    )
    training_texts = passages(corpus, "calibration", max_length=max_length)
    teacher = base.model
    payload = {
        "args": recorded_args(args, "picks"),
        # what a later run must share to reuse these rows (`_earlier_healing`)
        "held_out": {"corpus": corpus, "eval_samples": eval_samples, "max_length": max_length},
        "machine": platform.platform(),
        "unpruned_perplexity": evaluate_perplexity(teacher, held_out, pad_token_id=pad),
        "rows": [],
    }
    print(f"Unpruned held-out perplexity {payload['unpruned_perplexity']:.1f}")
    healed = _earlier_healing(args.output, payload)
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
                    seed=args.seed,
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


def _earlier_healing(path: str, payload: dict) -> dict[tuple[int, ...], dict]:
    """The picks an earlier run to `path` already healed with the same budget, measured on the same held-out
    passages, by blocks: a second run (another method's pick, added later) trains only what is new. A file that does
    not record its held-out passages (written before this reuse) is not reused; it is rewritten, as it was then."""
    if not os.path.exists(path):
        return {}
    with open(path, encoding="utf-8") as handle:
        earlier = json.load(handle)
    if "held_out" not in earlier:
        return {}
    budget = {"max_steps": None, "train_batch_size": None, "learning_rate": None, "seed": 0}  # seed: 0 before
    if earlier["held_out"] != payload["held_out"] or any(
        earlier["args"].get(key, default) != payload["args"][key] for key, default in budget.items()
    ):
        raise SystemExit(
            f"{path} holds healing with other settings (held-out passages, training budget or seed); pass another "
            "--output."
        )
    reused = {}
    for row in earlier["rows"]:
        reused[tuple(row["removed_blocks"])] = {
            key: row[key] for key in ("perplexity_before", "perplexity_after", "train_seconds")
        }
    print(f"Reusing {len(reused)} healed picks from {relative(path)}")
    return reused


def markdown_table(payload: dict) -> str:
    """Held-out perplexity before -> after healing, per method and M; the best healed per column in bold."""
    args = payload["args"]
    return "\n".join(
        [
            f"Held-out perplexity before -> after {args['max_steps']} distillation steps (batch "
            f"{args['train_batch_size']}, lr {args['learning_rate']}, seed {args.get('seed', 0)}); unpruned "
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
