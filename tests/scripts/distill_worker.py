"""One distillation step, run either as one process (batch 2 x accumulation 2) or as two DDP processes on
CPU with gloo (batch 2 each): launched by tests/test_distributed.py. Writes each rank's results to argv[1]."""

from __future__ import annotations

import copy
import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import torch  # noqa: E402
from conftest import TEXTS, build_tiny_model, build_tokenizer  # noqa: E402

from optimum_blockprune import BlockRemovalConfig, remove_blocks  # noqa: E402
from optimum_blockprune.distillation import (  # noqa: E402
    DistillationConfig,
    DistillationTrainer,
    PaddingCollator,
    tokenized_training_dataset,
)


def main(output_dir: str) -> None:
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    teacher = build_tiny_model("llama")
    student = copy.deepcopy(teacher)
    remove_blocks(student, [2, 3])
    data = tokenized_training_dataset(
        TEXTS[:8],
        build_tokenizer(),
        **BlockRemovalConfig(max_length=32, shuffle=False).calibration_options(num_samples=-1),
    )
    args = DistillationConfig(
        output_dir=os.path.join(output_dir, "run"),
        per_device_train_batch_size=2,
        gradient_accumulation_steps=2 if world_size == 1 else 1,
        max_steps=1,
        optim="sgd",
        learning_rate=0.5,
        alpha=0.6,
        train_sampling_strategy="sequential",
        report_to="none",
        use_cpu=True,
        disable_tqdm=True,
        save_strategy="no",
    )
    trainer = DistillationTrainer(
        model=student, teacher=teacher, args=args, train_dataset=data, data_collator=PaddingCollator(0)
    )
    output = trainer.train()
    rank = trainer.args.process_index
    torch.save(
        torch.cat([p.detach().flatten() for p in student.parameters()]),
        os.path.join(output_dir, f"student_{world_size}_{rank}.pt"),
    )
    with open(os.path.join(output_dir, f"info_{world_size}_{rank}.json"), "w") as handle:
        json.dump(
            {
                "backend": torch.distributed.get_backend() if torch.distributed.is_initialized() else None,
                "world_size": trainer.args.world_size,
                "student_wrapped": type(trainer.model_wrapped).__name__,
                "teacher_type": type(trainer.teacher).__name__,
                "teacher_is_submodule": any(m is trainer.teacher for m in trainer.model_wrapped.modules()),
                "teacher_requires_grad": any(p.requires_grad for p in trainer.teacher.parameters()),
                "loss": output.training_loss,
            },
            handle,
        )


if __name__ == "__main__":
    main(sys.argv[1])
