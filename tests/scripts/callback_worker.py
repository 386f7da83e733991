"""A Trainer run with `BlockPruningCallback` and the default (measured) choice, one process or two DDP processes on
CPU with gloo: launched by tests/test_distributed.py. Writes each rank's decision and samples to argv[1]."""

from __future__ import annotations

import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from conftest import TEXTS, build_tiny_model, build_tokenizer  # noqa: E402
from transformers import Trainer, TrainingArguments  # noqa: E402

from optimum_blockprune import BlockRemovalConfig  # noqa: E402
from optimum_blockprune.distillation import (  # noqa: E402
    BlockPruningCallback,
    PaddingCollator,
    tokenized_training_dataset,
)

CONFIG = BlockRemovalConfig(num_blocks_to_remove=2, num_calibration_samples=8, show_progress=False)


def main(output_dir: str) -> None:
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    data = tokenized_training_dataset(
        TEXTS,
        build_tokenizer(),
        **BlockRemovalConfig(max_length=32, shuffle=False).calibration_options(num_samples=-1),
    )
    callback = BlockPruningCallback(CONFIG, prune_at_step=2)
    args = TrainingArguments(
        output_dir=os.path.join(output_dir, "run"),
        per_device_train_batch_size=2,
        max_steps=3,
        learning_rate=0.0,  # the weights at the pruning step are the initial ones, for the test's reference
        report_to="none",
        use_cpu=True,
        disable_tqdm=True,
        save_strategy="no",
        ddp_find_unused_parameters=True,
        seed=0,
    )
    model = build_tiny_model("llama")
    trainer = Trainer(
        model=model, args=args, train_dataset=data, data_collator=PaddingCollator(0), callbacks=[callback]
    )
    trainer.train()
    with open(
        os.path.join(output_dir, f"callback_{world_size}_{trainer.args.process_index}.json"), "w"
    ) as handle:
        json.dump(
            {
                "removed_blocks": list(callback.removed_blocks),
                "own_samples": callback.calibration_samples,
                "measured_on": callback.measured_on.samples,
                "num_hidden_layers": model.config.num_hidden_layers,
            },
            handle,
        )


if __name__ == "__main__":
    main(sys.argv[1])
