"""Distillation: the KD loss (pure), DistillationTrainer (teacher handling, gradient accumulation, LoRA), and
the one-call prune -> distill -> save path. Tiny random llamas; every run takes seconds on a CPU."""

from __future__ import annotations

import copy
import json
import os

import pytest
import torch
import torch.nn.functional as F
from conftest import TEXTS, TINY_TRAINING, build_tiny_model
from transformers import AutoModelForCausalLM

from optimum_blockprune import BlockRemovalConfig, Pruner, remove_blocks
from optimum_blockprune.distillation import (
    DistillationConfig,
    DistillationTrainer,
    PaddingCollator,
    distillation_loss,
    merge_lora,
    tokenized_training_dataset,
)
from optimum_blockprune.errors import ConfigurationError

VOCAB = 128


def _hand_kl(student, teacher, mask, temperature=1.0):
    """T^2 * mean over real positions of sum_v p (log p - log q), in float64, written out."""
    p = F.softmax(teacher.double() / temperature, dim=-1)
    log_p = F.log_softmax(teacher.double() / temperature, dim=-1)
    log_q = F.log_softmax(student.double() / temperature, dim=-1)
    per_position = (p * (log_p - log_q)).sum(-1)
    real = mask.bool()
    return temperature**2 * per_position[real].sum() / real.sum()


@pytest.fixture
def logits_and_mask():
    generator = torch.Generator().manual_seed(0)
    student = torch.randn(3, 7, VOCAB, generator=generator)
    teacher = torch.randn(3, 7, VOCAB, generator=generator)
    mask = torch.ones(3, 7, dtype=torch.long)
    mask[0, 5:] = 0
    mask[2, 2:] = 0
    return student, teacher, mask


# -- the loss ----------------------------------------------------------------------------------------------------
def test_loss_is_zero_for_equal_logits(logits_and_mask):
    student, _, mask = logits_and_mask
    for temperature in (1.0, 2.5):
        loss = distillation_loss(student, student.clone(), mask, temperature=temperature)
        assert abs(float(loss)) < 1e-6


def test_loss_matches_the_written_out_kl_at_any_temperature(logits_and_mask):
    student, teacher, mask = logits_and_mask
    for temperature in (1.0, 0.5, 3.0):
        loss = distillation_loss(student, teacher, mask, temperature=temperature)
        assert loss.dtype == torch.float32
        torch.testing.assert_close(
            loss.double(), _hand_kl(student, teacher, mask, temperature), rtol=1e-5, atol=1e-6
        )
    # Higher temperature softens both distributions: the un-rescaled KL shrinks.
    kl_1 = distillation_loss(student, teacher, mask, temperature=1.0)
    kl_4 = distillation_loss(student, teacher, mask, temperature=4.0) / 16
    assert kl_4 < kl_1


def test_loss_ignores_padding_positions_entirely(logits_and_mask):
    student, teacher, mask = logits_and_mask
    loss = distillation_loss(student, teacher, mask)
    scrambled_student, scrambled_teacher = student.clone(), teacher.clone()
    padding = mask == 0
    scrambled_student[padding] = 1e4 * torch.randn_like(scrambled_student[padding])
    scrambled_teacher[padding] = -1e4
    assert torch.equal(distillation_loss(scrambled_student, scrambled_teacher, mask), loss)
    # An all-ones mask is the same as no mask.
    full = torch.ones_like(mask)
    assert torch.allclose(
        distillation_loss(student, teacher, full), distillation_loss(student, teacher, None)
    )


def test_loss_in_bf16_keeps_small_kl_values():
    """A student close to its teacher has a tiny KL; bf16 log-softmax would round it to noise."""
    generator = torch.Generator().manual_seed(1)
    teacher = 4 * torch.randn(2, 16, 4096, generator=generator)
    student = teacher + 0.05 * torch.randn(2, 16, 4096, generator=generator)
    student_bf16, teacher_bf16 = student.bfloat16(), teacher.bfloat16()
    mask = torch.ones(2, 16)
    loss = distillation_loss(student_bf16, teacher_bf16, mask)
    reference = _hand_kl(student_bf16.double(), teacher_bf16.double(), mask)
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    assert abs(float(loss) - float(reference)) / float(reference) < 1e-3
    # The naive all-bf16 computation is far off, which is why the loss upcasts.
    naive = (
        F.kl_div(
            F.log_softmax(student_bf16, -1), F.log_softmax(teacher_bf16, -1), log_target=True, reduction="sum"
        )
        / 32
    )
    assert abs(float(naive) - float(reference)) / float(reference) > 1e-2


def test_alpha_mixes_in_the_models_own_cross_entropy(llama, tokenizer):
    batch = PaddingCollator(0)([{"input_ids": tokenizer(t)["input_ids"]} for t in TEXTS[:4]])
    with torch.no_grad():
        output = llama(**batch)
    teacher = torch.randn_like(output.logits)
    ce_only = distillation_loss(
        output.logits, teacher, batch["attention_mask"], labels=batch["labels"], alpha=0.0
    )
    torch.testing.assert_close(ce_only, output.loss, rtol=1e-5, atol=1e-6)
    kl_only = distillation_loss(output.logits, teacher, batch["attention_mask"])
    mixed = distillation_loss(
        output.logits, teacher, batch["attention_mask"], labels=batch["labels"], alpha=0.3
    )
    torch.testing.assert_close(mixed, 0.3 * kl_only + 0.7 * ce_only)


def test_micro_batches_divided_by_the_total_count_add_up_to_the_full_batch(logits_and_mask):
    student, teacher, mask = logits_and_mask
    full = distillation_loss(student, teacher, mask)
    total = mask.sum().float()
    parts = sum(
        distillation_loss(student[rows], teacher[rows], mask[rows], num_kl_tokens=total)
        for rows in ([0], [1, 2])
    )
    torch.testing.assert_close(parts, full)


def test_loss_rejects_bad_input(logits_and_mask):
    student, teacher, mask = logits_and_mask
    with pytest.raises(ValueError, match="share the student's vocabulary"):
        distillation_loss(student, teacher[..., :-1], mask)
    with pytest.raises(ValueError, match="needs `labels`"):
        distillation_loss(student, teacher, mask, alpha=0.5)
    with pytest.raises(ValueError, match="temperature"):
        distillation_loss(student, teacher, mask, temperature=0)


def test_config_validates_distillation_fields(tmp_path):
    with pytest.raises(ValueError, match="`temperature`=0"):
        DistillationConfig(output_dir=str(tmp_path), temperature=0)
    with pytest.raises(ValueError, match=r"`alpha`=1\.5 must be in \[0, 1\]"):
        DistillationConfig(output_dir=str(tmp_path), alpha=1.5)


# -- the trainer ---------------------------------------------------------------------------------------------------
def _args(tmp_path, **overrides):
    settings = dict(TINY_TRAINING, output_dir=str(tmp_path / "run"), max_steps=4)
    return DistillationConfig(**{**settings, **overrides})


def _dataset(tokenizer, texts, **config):
    return tokenized_training_dataset(
        texts, tokenizer, **BlockRemovalConfig(max_length=32, **config).calibration_options(num_samples=-1)
    )


def _pair():
    teacher = build_tiny_model("llama")
    student = copy.deepcopy(teacher)
    remove_blocks(student, [2, 3])
    return student, teacher


def _trainer(student, teacher, args, data, **kwargs):
    return DistillationTrainer(
        model=student,
        teacher=teacher,
        args=args,
        train_dataset=data,
        data_collator=PaddingCollator(0),
        **kwargs,
    )


def test_short_distillation_lowers_held_out_kl_and_leaves_the_teacher_alone(tmp_path, tokenizer):
    student, teacher = _pair()
    teacher_state = {k: v.clone() for k, v in teacher.state_dict().items()}
    train, held_out = _dataset(tokenizer, TEXTS[:9] * 3), _dataset(tokenizer, TEXTS[9:])
    trainer = _trainer(
        student,
        teacher,
        _args(tmp_path, max_steps=25, save_strategy="steps", save_steps=25),
        train,
        eval_dataset=held_out,
    )
    before = trainer.evaluate()["eval_loss"]
    trainer.train()
    after = trainer.evaluate()["eval_loss"]
    assert after < 0.8 * before
    # The teacher: not part of the student, frozen, in eval mode, unchanged, never saved.
    assert all(module is not teacher for module in student.modules())
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
    assert all(torch.equal(v, teacher_state[k]) for k, v in teacher.state_dict().items())
    checkpoint = tmp_path / "run" / "checkpoint-25"
    reloaded = AutoModelForCausalLM.from_pretrained(checkpoint)
    assert reloaded.config.num_hidden_layers == 4
    assert set(reloaded.state_dict()) == set(student.state_dict())


def test_gradient_accumulation_gives_the_same_update_as_one_big_batch(tmp_path, tokenizer):
    """Samples of different lengths: dividing each micro-batch by its own token count would differ."""
    data = _dataset(tokenizer, TEXTS[:8])
    assert len({len(ids) for ids in data["input_ids"]}) > 1
    weights = []
    for batch_size, accumulation in ((4, 1), (2, 2), (1, 4)):
        student, teacher = _pair()
        args = _args(
            tmp_path / f"{batch_size}",
            per_device_train_batch_size=batch_size,
            gradient_accumulation_steps=accumulation,
            max_steps=1,
            optim="sgd",
            learning_rate=0.5,
            alpha=0.6,
        )
        _trainer(student, teacher, args, data).train()
        weights.append(torch.cat([p.detach().flatten() for p in student.parameters()]))
    start = torch.cat([p.detach().flatten() for p in _pair()[0].parameters()])
    assert not torch.allclose(weights[0], start)  # the step did move the weights
    torch.testing.assert_close(weights[1], weights[0], rtol=0, atol=2e-6)
    torch.testing.assert_close(weights[2], weights[0], rtol=0, atol=2e-6)


def test_trainer_refuses_bad_teachers_and_arguments(tmp_path, tokenizer):
    from transformers import TrainingArguments

    student, teacher = _pair()
    data = _dataset(tokenizer, TEXTS[:4])
    with pytest.raises(ConfigurationError, match="DistillationConfig"):
        DistillationTrainer(
            model=student, teacher=teacher, args=TrainingArguments(str(tmp_path)), train_dataset=data
        )
    with pytest.raises(ValueError, match="`teacher` is required"):
        _trainer(student, None, _args(tmp_path), data)
    with pytest.raises(ValueError, match="shares parameters"):
        _trainer(student, student, _args(tmp_path), data)
    other_vocab = build_tiny_model("llama", vocab_size=VOCAB + 8)
    with pytest.raises(ValueError, match="same vocabulary"):
        _trainer(student, other_vocab, _args(tmp_path), data)


def test_teacher_loaded_by_path_with_init_kwargs(tmp_path, tokenizer, tiny_model_dir):
    student = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    remove_blocks(student, [0, 5])
    args = _args(tmp_path, max_steps=2, teacher_model_init_kwargs={"dtype": "bfloat16"})
    trainer = _trainer(student, str(tiny_model_dir), args, _dataset(tokenizer, TEXTS[:8]))
    assert next(trainer.teacher.parameters()).dtype == torch.bfloat16
    assert trainer.teacher.config.num_hidden_layers == 6
    output = trainer.train()
    assert torch.isfinite(torch.tensor(output.training_loss))


def test_lora_distillation_merges_into_a_plain_checkpoint(tmp_path, tokenizer):
    from peft import LoraConfig, PeftModel, get_peft_model

    student, teacher = _pair()
    before = copy.deepcopy(student)
    lora = get_peft_model(student, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    trainer = _trainer(
        lora, teacher, _args(tmp_path, max_steps=6, learning_rate=1e-2), _dataset(tokenizer, TEXTS)
    )
    trainer.train()
    assert isinstance(trainer.model, PeftModel)
    merged = merge_lora(trainer.model).eval()
    assert type(merged) is type(before) and not any("lora" in name for name, _ in merged.named_parameters())
    merged.save_pretrained(tmp_path / "merged")
    assert not (tmp_path / "merged" / "adapter_config.json").exists()
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "merged").eval()
    batch = PaddingCollator(0)([{"input_ids": tokenizer(t)["input_ids"]} for t in TEXTS[:3]])
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask")}
    with torch.no_grad():
        merged_logits, reloaded_logits = merged(**inputs).logits, reloaded(**inputs).logits
        before_logits = before(**inputs).logits
    torch.testing.assert_close(reloaded_logits, merged_logits)
    assert not torch.allclose(merged_logits, before_logits, atol=1e-4)  # the adapters did learn something
    prompt = tokenizer("to be", return_tensors="pt")
    cached = reloaded.generate(**prompt, max_new_tokens=8, do_sample=False, use_cache=True)
    uncached = reloaded.generate(**prompt, max_new_tokens=8, do_sample=False, use_cache=False)
    assert torch.equal(cached, uncached)


# -- the one-call path ----------------------------------------------------------------------------------------------
def test_prune_and_distill_saves_a_plain_checkpoint_with_the_retraining_recorded(tmp_path, tokenizer):
    model = build_tiny_model("llama")
    pruner = Pruner(model, tokenizer, model_id="tiny/llama")
    config = BlockRemovalConfig(  # cbo's pick: the one this test's 8 training steps were sized on
        num_blocks_to_remove=2, method="cbo", num_calibration_samples=8, max_length=32, show_progress=False
    )
    out = tmp_path / "healed"
    result = pruner.prune_and_distill(
        config, TEXTS, TEXTS[:9] * 2, _args(tmp_path, max_steps=8), eval_dataset=TEXTS[9:], save_directory=out
    )
    record = pruner.distillation
    assert record["steps"] == 8 and record["temperature"] == 1.0 and record["alpha"] == 1.0
    assert record["eval_kl_after"] < record["eval_kl_before"]
    saved = json.loads((out / "blockprune_config.json").read_text())
    assert saved["distillation"]["steps"] == 8
    assert saved["result"]["removed_blocks"] == list(result.removed_blocks)
    card = (out / "README.md").read_text()
    assert "Retraining (knowledge distillation)" in card and "held-out KL to the teacher" in card
    reloaded = AutoModelForCausalLM.from_pretrained(out).eval()
    assert reloaded.config.num_hidden_layers == 4
    prompt = tokenizer("the fool", return_tensors="pt")
    with torch.no_grad():
        torch.testing.assert_close(reloaded(**prompt).logits, pruner.model(**prompt).logits)
    cached = reloaded.generate(**prompt, max_new_tokens=8, do_sample=False, use_cache=True)
    assert torch.equal(
        cached, reloaded.generate(**prompt, max_new_tokens=8, do_sample=False, use_cache=False)
    )


def test_prune_and_distill_checks_everything_before_calibration(tmp_path, tokenizer):
    from transformers import TrainingArguments

    pruner = Pruner(build_tiny_model("llama"), tokenizer)
    config = BlockRemovalConfig(num_blocks_to_remove=2, show_progress=False)
    occupied = tmp_path / "occupied"
    occupied.mkdir()
    (occupied / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not empty"):
        pruner.prune_and_distill(config, TEXTS, TEXTS, _args(tmp_path), save_directory=occupied)
    with pytest.raises(ConfigurationError, match="DistillationConfig"):
        pruner.prune_and_distill(config, TEXTS, TEXTS, TrainingArguments(str(tmp_path)))
    with pytest.raises(ConfigurationError, match="num_blocks_to_remove"):
        pruner.prune_and_distill(BlockRemovalConfig(num_blocks_to_remove=6), TEXTS, TEXTS, _args(tmp_path))
    assert not pruner.is_pruned and (occupied / "keep.txt").read_text() == "mine"
    with pytest.raises(Exception, match="Nothing has been pruned"):
        pruner.distill(TEXTS, _args(tmp_path))
    assert os.listdir(occupied) == ["keep.txt"]
