"""BlockPruningCallback inside a plain `transformers.Trainer`: Fisher from training batches, pruning of the
live model at a step, optimizer clean-up, checkpoints, and resuming before and after pruning."""

from __future__ import annotations

import copy
import json
import os
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from conftest import TEXTS, TINY_TRAINING, build_tiny_model
from transformers import AutoModelForCausalLM, Trainer, TrainerCallback, TrainingArguments

from optimum_blockprune import BlockRemovalConfig, Pruner, estimate_fisher
from optimum_blockprune.distillation import BlockPruningCallback, PaddingCollator, tokenized_training_dataset
from optimum_blockprune.distillation.callback import CALIBRATION_NAME, RECORD_NAME, unsupported_parallelism
from optimum_blockprune.errors import ConfigurationError
from optimum_blockprune.estimation.calibration import CalibrationData

CONFIG = BlockRemovalConfig(num_blocks_to_remove=2, energy="paper", show_progress=False)


def _data(tokenizer, pack=False):
    config = BlockRemovalConfig(max_length=16 if pack else 32, pack_samples=pack, shuffle=False)
    return tokenized_training_dataset(
        TEXTS, tokenizer, **config.calibration_options(num_samples=8 if pack else -1)
    )


def _args(path, **overrides):
    settings = dict(TINY_TRAINING, output_dir=str(path), max_steps=6, data_seed=0)
    return TrainingArguments(**{**settings, **overrides})


def _run(args, data, callback=None, model=None, resume=None):
    model = model if model is not None else build_tiny_model("llama")
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=data,
        data_collator=PaddingCollator(0),
        callbacks=[callback] if callback else None,
    )
    trainer.train(resume_from_checkpoint=resume)
    return trainer, model


def _flat(model):
    return torch.cat([p.detach().flatten() for p in model.parameters()])


def test_callback_prunes_the_live_model_at_the_step_and_training_goes_on(tmp_path, tokenizer):
    callback = BlockPruningCallback(CONFIG, prune_at_step=3)
    trainer, model = _run(_args(tmp_path), _data(tokenizer), callback)
    assert len(callback.removed_blocks) == 2 and callback.ranking[0].removed_blocks == callback.removed_blocks
    assert model.config.num_hidden_layers == 4 and len(model.model.layers) == 4
    assert [layer.self_attn.layer_idx for layer in model.model.layers] == [0, 1, 2, 3]
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert len(losses) == 6 and all(np.isfinite(losses))
    # The optimizer holds exactly the live parameters, and state only for them.
    live = {id(p) for p in model.parameters()}
    held = [p for group in trainer.optimizer.param_groups for p in group["params"]]
    assert {id(p) for p in held} == live and len(held) == len(live)
    assert {id(p) for p in trainer.optimizer.state} <= live
    # The pruned model still generates with the KV cache.
    prompt = tokenizer("to be", return_tensors="pt")
    model.eval()
    cached = model.generate(**prompt, max_new_tokens=6, do_sample=False, use_cache=True)
    assert torch.equal(cached, model.generate(**prompt, max_new_tokens=6, do_sample=False, use_cache=False))


def test_gates_do_not_change_the_training_math(tmp_path, tokenizer):
    """While the Fisher accumulates (steps 1-4 of a run that would prune at 5), training is bit-identical."""
    data = _data(tokenizer)
    _, plain = _run(_args(tmp_path / "plain", max_steps=4), data)
    callback = BlockPruningCallback(CONFIG, prune_at_step=5)
    _, gated = _run(_args(tmp_path / "gated", max_steps=4), data, callback)
    assert not callback.is_pruned and callback._rows
    assert torch.equal(_flat(plain), _flat(gated))


def test_fisher_from_training_batches_equals_estimate_fisher(tmp_path, tokenizer):
    """With lr = 0 the model is fixed, so the rows gathered from the Trainer's backward passes must be the
    per-sample gate gradients that `estimate_fisher` computes on the same samples."""
    data = _data(tokenizer, pack=True)
    callback = BlockPruningCallback(CONFIG, prune_at_step=2)
    reference_model = build_tiny_model("llama")
    _run(_args(tmp_path, max_steps=2, learning_rate=0.0), data, callback)
    calibration = CalibrationData([list(ids) for ids in data["input_ids"]], "train")
    reference = estimate_fisher(reference_model, calibration, batch_size=4, show_progress=False)
    assert callback.fisher.num_samples == 8
    np.testing.assert_allclose(callback.fisher.hessian, reference.hessian, rtol=1e-4, atol=1e-12)
    np.testing.assert_allclose(callback.fisher.mean_gradient, reference.mean_gradient, rtol=1e-4, atol=1e-10)


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory):
    """Six steps, pruning at 4, checkpoints every 2 steps (2: before pruning, 4 and 6: after)."""
    from conftest import build_tokenizer

    path = tmp_path_factory.mktemp("reference")
    data = _data(build_tokenizer())
    callback = BlockPruningCallback(CONFIG, prune_at_step=4)
    _, model = _run(_args(path, save_strategy="steps", save_steps=2), data, callback)
    return SimpleNamespace(path=path, data=data, callback=callback, weights=_flat(model))


def test_checkpoints_carry_the_ranking_and_load_as_plain_models(reference_run):
    record_before = reference_run.path / "checkpoint-2" / RECORD_NAME
    record_after = reference_run.path / "checkpoint-4" / RECORD_NAME
    assert record_before.exists() and record_after.exists()
    assert (reference_run.path / "checkpoint-2" / "blockprune_fisher_rank0.safetensors").exists()

    after = json.loads(record_after.read_text())
    assert tuple(after["removed_blocks"]) == reference_run.callback.removed_blocks
    assert after["ranking"]["states"][0]["removed_blocks"] == list(reference_run.callback.removed_blocks)
    assert json.loads(record_before.read_text())["removed_blocks"] is None
    assert (
        AutoModelForCausalLM.from_pretrained(reference_run.path / "checkpoint-2").config.num_hidden_layers
        == 6
    )
    assert (
        AutoModelForCausalLM.from_pretrained(reference_run.path / "checkpoint-4").config.num_hidden_layers
        == 4
    )


@pytest.mark.parametrize("checkpoint", ["checkpoint-2", "checkpoint-4"])
def test_resume_before_and_after_pruning_reproduces_the_run(reference_run, checkpoint, tmp_path):
    # Resume in a copy of the run directory so the reference checkpoints stay as they were.
    import shutil

    run = tmp_path / "run"
    shutil.copytree(reference_run.path, run)
    for name in os.listdir(run):
        if name.startswith("checkpoint-") and name != checkpoint:
            shutil.rmtree(run / name)
    callback = BlockPruningCallback(CONFIG, prune_at_step=4)
    _, model = _run(_args(run), reference_run.data, callback, resume=str(run / checkpoint))
    assert callback.removed_blocks == reference_run.callback.removed_blocks
    assert model.config.num_hidden_layers == 4
    torch.testing.assert_close(_flat(model), reference_run.weights, rtol=0, atol=1e-6)
    if checkpoint == "checkpoint-2":  # the partial Fisher came back from the checkpoint
        np.testing.assert_allclose(callback.fisher.hessian, reference_run.callback.fisher.hessian, rtol=1e-6)


def test_callback_refuses_what_it_cannot_do(tmp_path, tokenizer):
    with pytest.raises(ConfigurationError, match="`prune_at_step`=0"):
        BlockPruningCallback(CONFIG, prune_at_step=0)
    with pytest.raises(ConfigurationError, match="`fisher_steps`=5"):
        BlockPruningCallback(CONFIG, prune_at_step=3, fisher_steps=5)
    base = dict(deepspeed=None, fsdp=None, world_size=1, ddp_find_unused_parameters=None)
    assert unsupported_parallelism(SimpleNamespace(**base)) is None
    assert "FSDP" in unsupported_parallelism(SimpleNamespace(**{**base, "fsdp": "full_shard"}))
    assert "DeepSpeed" in unsupported_parallelism(SimpleNamespace(**{**base, "deepspeed": "ds.json"}))
    callback = BlockPruningCallback(CONFIG, prune_at_step=3)
    model = build_tiny_model("llama")
    for args, message in (
        ({**base, "fsdp": "full_shard"}, "FSDP flattens"),
        ({**base, "deepspeed": "ds.json"}, "DeepSpeed partitions"),
        ({**base, "world_size": 2}, "ddp_find_unused_parameters=True"),
    ):
        with pytest.raises(ConfigurationError, match=message):
            callback.on_init_end(SimpleNamespace(**args), None, None, model=model)
    # A request the model cannot meet fails when the Trainer is built, before any step.
    with pytest.raises(ConfigurationError, match="num_blocks_to_remove"):
        Trainer(
            model=model,
            args=_args(tmp_path),
            train_dataset=_data(tokenizer),
            data_collator=PaddingCollator(0),
            callbacks=[
                BlockPruningCallback(
                    BlockRemovalConfig(num_blocks_to_remove=6, energy="paper"), prune_at_step=2
                )
            ],
        )


class _WeightsAtStep(TrainerCallback):
    """Copies the model at the end of one step, before the pruning callback (next in the list) acts."""

    def __init__(self, step):
        self.step, self.copy = step, None

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if state.global_step == self.step:
            self.copy = copy.deepcopy(model)


def test_default_config_prunes_what_pruner_select_picks_on_the_same_weights_and_samples(tmp_path, tokenizer):
    """The library's default choice inside a plain Trainer: the measured pick on the weights after step N and the
    training samples seen, equal to `Pruner.select` on a copy of those weights and those samples."""
    config = BlockRemovalConfig(num_blocks_to_remove=2)  # out of the box: every other field its default
    callback = BlockPruningCallback(config, prune_at_step=3)
    snapshot = _WeightsAtStep(3)
    model = build_tiny_model("llama")
    trainer = Trainer(
        model=model,
        args=_args(tmp_path),
        train_dataset=_data(tokenizer),
        data_collator=PaddingCollator(0),
        callbacks=[snapshot, callback],
    )
    trainer.train()
    assert callback.is_pruned and model.config.num_hidden_layers == 4
    # the distinct training samples of the first three steps (4 a step; the data set holds fewer: no duplicates)
    distinct = {tuple(s) for s in callback.calibration_samples}
    assert len(distinct) == len(callback.calibration_samples) == min(12, len(_data(tokenizer)))
    assert (
        callback.ranking.method == "guided" == callback.config.method
    )  # the default, resolved for the model
    assert callback.ranking.stats["block_evaluations"] > 0
    reference = Pruner(snapshot.copy).select(config, CalibrationData(callback.calibration_samples, "same"))
    assert callback.removed_blocks == reference.removed_blocks
    assert [s.removed_blocks for s in callback.ranking] == [s.removed_blocks for s in reference.ranking]
    record = callback.record()
    assert record["removed_blocks"] == list(callback.removed_blocks)
    assert record["ranking"]["stats"]["block_evaluations"] == callback.ranking.stats["block_evaluations"]


def test_measured_choice_on_a_given_calibration_dataset_and_sleb(tmp_path, tokenizer):
    config = BlockRemovalConfig(
        num_blocks_to_remove=2, method="sleb", num_calibration_samples=6, show_progress=False
    )
    callback = BlockPruningCallback(
        config, prune_at_step=2, calibration_dataset=TEXTS[:6], tokenizer=tokenizer
    )
    snapshot = _WeightsAtStep(2)
    model = build_tiny_model("llama")
    trainer = Trainer(
        model=model,
        args=_args(tmp_path, max_steps=3),
        train_dataset=_data(tokenizer),
        data_collator=PaddingCollator(0),
        callbacks=[snapshot, callback],
    )
    trainer.train()
    assert not callback.calibration_samples  # the given data, not the training samples
    reference = Pruner(snapshot.copy, tokenizer).select(config, TEXTS[:6])
    assert callback.removed_blocks == reference.removed_blocks


def test_resume_before_a_measured_pruning_keeps_the_samples(tmp_path, tokenizer):
    """Checkpoint at step 2 holds the kept samples; resuming from it prunes at step 4 exactly as the
    uninterrupted run."""
    config = BlockRemovalConfig(num_blocks_to_remove=2, num_calibration_samples=12, show_progress=False)
    data = _data(tokenizer)
    whole = BlockPruningCallback(config, prune_at_step=4)
    _run(_args(tmp_path / "whole", save_strategy="steps", save_steps=2), data, whole)
    assert (tmp_path / "whole" / "checkpoint-2" / CALIBRATION_NAME.format(rank=0)).is_file()
    resumed = BlockPruningCallback(config, prune_at_step=4)
    _run(
        _args(tmp_path / "whole", save_strategy="steps", save_steps=2),
        data,
        resumed,
        resume=str(tmp_path / "whole" / "checkpoint-2"),
    )
    assert resumed.calibration_samples == whole.calibration_samples
    assert resumed.removed_blocks == whole.removed_blocks
    after = BlockPruningCallback(config, prune_at_step=4)  # from the checkpoint written just after pruning
    _, model = _run(
        _args(tmp_path / "whole", save_strategy="steps", save_steps=2),
        data,
        after,
        resume=str(tmp_path / "whole" / "checkpoint-4"),
    )
    assert after.removed_blocks == whole.removed_blocks and model.config.num_hidden_layers == 4
