"""Pruner end to end: staged API, early errors, provenance, and a checkpoint plain transformers loads."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import TEXTS, batch_of, build_tiny_model
from transformers import AutoConfig, AutoModelForCausalLM

from optimum_blockprune import (
    BlockRemovalConfig,
    CalibrationDataError,
    ConfigurationError,
    OutputExistsError,
    Pruner,
    SurgeryError,
    UnsupportedArchitectureError,
)
from optimum_blockprune.version import __version__

# the paper's energy: these tests check the Fisher path (the default energy has its own tests)
CONFIG = dict(num_calibration_samples=8, max_length=32, batch_size=4, show_progress=False, energy="paper")


class _ForwardCounter:
    def __init__(self, model):
        self.calls = 0
        model.register_forward_pre_hook(self._count)

    def _count(self, module, args):
        self.calls += 1


def test_prune_applies_the_ground_state(llama, tokenizer):
    pruner = Pruner(llama, tokenizer, model_id="tiny/llama")
    result = pruner.prune(BlockRemovalConfig(num_blocks_to_remove=2, **CONFIG), TEXTS)
    assert result.removed_blocks == pruner.ranking[0].removed_blocks
    assert result.selected_rank == 0 and len(result.kept_blocks) == 4
    assert llama.config.num_hidden_layers == 4
    assert result.num_parameters_after < result.num_parameters_before
    energies = [s.energy for s in pruner.ranking]
    assert energies == sorted(energies) and len(pruner.ranking) == 15  # C(6, 2)
    h = pruner.fisher.hessian
    assert energies[0] == pytest.approx(h[np.ix_(result.removed_blocks, result.removed_blocks)].sum())


def test_estimate_once_solve_many_without_recomputing(llama, tokenizer):
    pruner = Pruner(llama, tokenizer)
    counter = _ForwardCounter(llama)
    fisher = pruner.estimate(TEXTS, BlockRemovalConfig(**CONFIG))
    after_estimate = counter.calls
    assert after_estimate == 1 + 2  # the unpruned loss checked on one sample, then 8 samples / batch of 4
    rankings = {
        m: pruner.solve(fisher, BlockRemovalConfig(num_blocks_to_remove=m, **CONFIG)) for m in (1, 2, 3, 4)
    }
    assert {m: r.num_blocks_to_remove for m, r in rankings.items()} == {1: 1, 2: 2, 3: 3, 4: 4}
    pruner.prune(BlockRemovalConfig(num_blocks_to_remove=3, selected_state=2, **CONFIG), fisher=fisher)
    assert counter.calls == after_estimate, "solving and applying must not run the model again"
    assert pruner.result.removed_blocks == rankings[3][2].removed_blocks


def test_protected_blocks_are_never_removed(llama, tokenizer):
    pruner = Pruner(llama, tokenizer)
    fisher = pruner.estimate(TEXTS, BlockRemovalConfig(**CONFIG))
    ranking = pruner.solve(
        fisher, BlockRemovalConfig(num_blocks_to_remove=2, protected_blocks=[0, 5], **CONFIG)
    )
    assert len(ranking) == 6  # C(4, 2)
    assert all(not {0, 5} & set(s.removed_blocks) for s in ranking)


def test_constraints_from_the_config_shape_the_ranking(tokenizer):
    model = build_tiny_model("gpt2")
    pruner = Pruner(model, tokenizer)
    fisher = pruner.estimate(TEXTS, BlockRemovalConfig(**CONFIG))
    params = [b["num_parameters"] for b in fisher.metadata["blocks"]]
    forced = pruner.solve(fisher, BlockRemovalConfig(num_blocks_to_remove=2, forced_blocks=[3], **CONFIG))
    assert all(3 in s.removed_blocks for s in forced) and len(forced) == 5
    runs = pruner.solve(fisher, BlockRemovalConfig(num_blocks_to_remove=3, contiguous=True, **CONFIG))
    assert sorted(s.removed_blocks for s in runs) == [(0, 1, 2), (1, 2, 3), (2, 3, 4), (3, 4, 5)]
    assert len(set(params)) == 1  # gpt2 blocks are equal: two blocks cost exactly 2 * params[0]
    fits = pruner.solve(
        fisher, BlockRemovalConfig(num_blocks_to_remove=2, max_parameters_removed=2 * params[0], **CONFIG)
    )
    assert len(fits) == 15
    with pytest.raises(ConfigurationError, match="No way to remove"):
        pruner.prune(
            BlockRemovalConfig(num_blocks_to_remove=2, max_parameters_removed=2 * params[0] - 1, **CONFIG),
            fisher=fisher,
        )


def test_bad_config_fails_before_calibration(llama, tokenizer):
    class Untouchable:
        def __iter__(self):
            raise AssertionError("calibration data must not be read")

    pruner = Pruner(llama, tokenizer)
    counter = _ForwardCounter(llama)
    with pytest.raises(ConfigurationError, match="has only 6 blocks"):
        pruner.prune(BlockRemovalConfig(num_blocks_to_remove=6), Untouchable())
    with pytest.raises(ConfigurationError, match="protected_blocks"):
        pruner.prune(BlockRemovalConfig(protected_blocks=[9]), Untouchable())
    assert counter.calls == 0


def test_unsupported_architecture_fails_before_loading_weights(tmp_path):
    AutoConfig.for_model("bloom", vocab_size=64, hidden_size=16, n_layer=2, n_head=2).save_pretrained(
        tmp_path
    )
    # No weights in the directory: only the architecture check can produce this error.
    with pytest.raises(UnsupportedArchitectureError, match="'bloom'.*Supported model types: .*llama"):
        Pruner.from_pretrained(tmp_path)


def test_apply_explicit_blocks_and_refuse_twice(llama, tokenizer):
    pruner = Pruner(llama, tokenizer)
    result = pruner.apply([4, 1])
    assert result.removed_blocks == (1, 4) and result.ranking is None and result.selected_rank is None
    with pytest.raises(SurgeryError, match="already removed blocks \\[1, 4\\]"):
        pruner.apply([0])
    with pytest.raises(ConfigurationError, match="not a rank"):
        Pruner(build_tiny_model("llama"), tokenizer).apply(3)


def test_fisher_from_another_model_is_refused(tokenizer):
    small = Pruner(build_tiny_model("gpt2"), tokenizer)
    fisher = small.estimate(TEXTS, BlockRemovalConfig(**CONFIG))
    fisher.hessian = fisher.hessian[:4, :4]
    with pytest.raises(ConfigurationError, match="covers 4 gates but the model has 6"):
        small.solve(fisher, BlockRemovalConfig(num_blocks_to_remove=1, energy="paper"))


def test_save_pretrained_writes_a_standard_checkpoint_with_provenance(llama, tokenizer, tmp_path):
    pruner = Pruner(llama, tokenizer, model_id="tiny/llama")
    result = pruner.prune(BlockRemovalConfig(num_blocks_to_remove=2, **CONFIG), TEXTS)
    out = tmp_path / "pruned"
    pruner.save_pretrained(out)
    assert {p.name for p in out.iterdir()} >= {
        "README.md",
        "blockprune_config.json",
        "config.json",
        "model.safetensors",
    }
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "no staging directory left behind"

    saved = json.loads((out / "config.json").read_text())
    known = set(type(llama.config)().to_dict()) | {"architectures", "transformers_version", "dtype"}
    assert set(saved) <= known, f"unknown keys in config.json: {set(saved) - known}"
    assert saved["num_hidden_layers"] == 4

    provenance = json.loads((out / "blockprune_config.json").read_text())
    assert provenance["library_version"] == __version__
    assert provenance["result"]["removed_blocks"] == list(result.removed_blocks)
    assert provenance["result"]["kept_blocks"] == list(result.kept_blocks)
    assert len(provenance["result"]["ranking"]["states"]) == 15
    assert provenance["fisher"]["calibration_hash"] == pruner.fisher.metadata["calibration_hash"]
    assert provenance["fisher"]["fisher"] == "empirical" and provenance["config"]["num_blocks_to_remove"] == 2
    assert BlockRemovalConfig.from_pretrained(out).num_blocks_to_remove == 2

    card = (out / "README.md").read_text()
    assert "optimum-blockprune" in card and "| CBO:0 (applied) |" in card and "0-based" in card
    assert f"Removed blocks: {', '.join(map(str, result.removed_blocks))}" in card

    reloaded = AutoModelForCausalLM.from_pretrained(out).eval()
    batch = batch_of(tokenizer, TEXTS[:2])
    with torch.no_grad():
        assert torch.equal(reloaded(**batch).logits, llama(**batch).logits)


def test_output_directory_is_never_silently_overwritten(llama, tokenizer, tmp_path):
    pruner = Pruner(llama, tokenizer)
    pruner.apply([2])
    out = tmp_path / "out"
    out.mkdir()
    (out / "precious.txt").write_text("user data")
    with pytest.raises(OutputExistsError, match="not empty.*overwrite=True"):
        pruner.save_pretrained(out)
    assert (out / "precious.txt").read_text() == "user data"
    pruner.save_pretrained(out, overwrite=True)
    # overwrite replaces what a save writes, never the user's files
    assert (out / "precious.txt").read_text() == "user data" and (out / "config.json").exists()


def test_plain_transformers_reloads_and_generates_without_this_package(llama, tokenizer, tmp_path):
    pruner = Pruner(llama, tokenizer, model_id="tiny/llama")
    pruner.prune(BlockRemovalConfig(num_blocks_to_remove=3, **CONFIG), TEXTS)
    out = tmp_path / "pruned"
    pruner.save_pretrained(out)
    prompt = tokenizer(["to be, or not"], return_tensors="pt")
    with torch.no_grad():
        expected = llama.generate(**prompt, max_new_tokens=6, do_sample=False, use_cache=True, pad_token_id=0)
    script = f"""
import sys, torch
from transformers import AutoModelForCausalLM, AutoTokenizer
model = AutoModelForCausalLM.from_pretrained({str(out)!r}).eval()
tok = AutoTokenizer.from_pretrained({str(out)!r})
ids = tok(["to be, or not"], return_tensors="pt")
out = model.generate(**ids, max_new_tokens=6, do_sample=False, use_cache=True, pad_token_id=0)
assert not any(m.startswith("optimum_blockprune") for m in sys.modules)
print(out.tolist())
"""
    completed = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert completed.stdout.strip().splitlines()[-1] == str(expected.tolist())


def test_active_parameter_budget_for_moe(tokenizer):
    pruner = Pruner(build_tiny_model("qwen2_moe"), tokenizer)  # layers 0, 2, 4 dense; 1, 3, 5 MoE
    fisher = pruner.estimate(TEXTS, BlockRemovalConfig(**CONFIG))
    blocks = fisher.metadata["blocks"]
    active = [b["num_active_parameters"] for b in blocks]
    total = [b["num_parameters"] for b in blocks]
    assert all(a < t for a, t, b in zip(active, total, blocks) if b["kind"] == "moe")
    limit = sorted(active)[1] + sorted(active)[0]  # only the two smallest blocks by active count fit
    config = BlockRemovalConfig(
        num_blocks_to_remove=2, max_parameters_removed=limit, count_active_parameters=True, **CONFIG
    )
    ranking = pruner.solve(fisher, config)
    assert len(ranking) >= 1
    assert all(sum(active[i] for i in s.removed_blocks) <= limit for s in ranking)


# -- token-id data, no tokenizer ------------------------------------------------------------------------------------
def test_a_model_without_tokenizer_prunes_from_token_ids_and_reloads(tokenizer, tmp_path):
    model = build_tiny_model("llama")
    reference = build_tiny_model("llama")
    ids = [tokenizer(t)["input_ids"] for t in TEXTS]
    pruner = Pruner(model)  # no tokenizer at all
    config = BlockRemovalConfig(num_blocks_to_remove=2, selection="auto", num_states=4, **CONFIG)
    result = pruner.prune(config, [{"input_ids": s} for s in ids])
    assert len(result.kept_blocks) == 4 and pruner.fisher.metadata["calibration_source"] == "token ids"
    pruner.save_pretrained(tmp_path / "out")
    assert not (tmp_path / "out" / "tokenizer.json").exists()
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "out").eval()
    batch = batch_of(tokenizer, ["to be, or not", "the rest is silence"])
    with torch.no_grad():
        torch.testing.assert_close(reloaded(**batch).logits, pruner.model(**batch).logits)
    prompt = torch.tensor([ids[0][:6]])
    cached = reloaded.generate(prompt, max_new_tokens=6, do_sample=False, use_cache=True, pad_token_id=0)
    uncached = reloaded.generate(prompt, max_new_tokens=6, do_sample=False, use_cache=False, pad_token_id=0)
    assert torch.equal(cached, uncached)
    # the same removal through surgery on a fresh copy gives the same logits: the token ids were used as given
    from optimum_blockprune import remove_blocks

    remove_blocks(reference, result.removed_blocks)
    with torch.no_grad():
        torch.testing.assert_close(reference(**batch).logits, reloaded(**batch).logits)


def test_token_ids_outside_the_vocabulary_fail_before_the_model_runs(llama):
    counter = _ForwardCounter(llama)
    with pytest.raises(
        CalibrationDataError, match="token id 128, outside the model's vocabulary \\(0..127\\)"
    ):
        Pruner(llama).select(BlockRemovalConfig(num_blocks_to_remove=1, **CONFIG), [[1, 5, 128, 7]])
    with pytest.raises(CalibrationDataError, match="A tokenizer is needed"):
        Pruner(llama).estimate(TEXTS, BlockRemovalConfig(**CONFIG))
    assert counter.calls == 0


def test_the_command_line_prunes_a_checkpoint_without_tokenizer(tokenizer, tmp_path):
    from optimum_blockprune.cli import main

    model_dir = tmp_path / "model"
    build_tiny_model("llama").save_pretrained(model_dir)
    data = tmp_path / "ids.jsonl"
    data.write_text("\n".join(json.dumps({"input_ids": tokenizer(t)["input_ids"]}) for t in TEXTS))
    out = tmp_path / "out"
    args = [
        "prune",
        str(model_dir),
        "--dataset",
        str(data),
        "--output-dir",
        str(out),
        "--num-blocks-to-remove",
        "2",
    ]
    assert main([*args, "--num-calibration-samples", "6", "--max-length", "24", "--no-show-progress"]) == 0
    assert AutoModelForCausalLM.from_pretrained(out).config.num_hidden_layers == 4


@pytest.mark.parametrize("method", [None, "cbo"])
def test_every_long_phase_reports_progress_by_name(llama, tokenizer, caplog, method):
    """Without a terminal (a log file, CI) a choice logs each phase by name in one display with the whole choice's
    ETA: calibration, the measured removals, the search's rounds or each correction round, the solve."""
    import logging

    config = BlockRemovalConfig(  # M = 3: on 6 blocks the guided search's budget leaves room for a round
        num_blocks_to_remove=3, method=method, num_calibration_samples=8, max_length=24, batch_size=4
    )
    with caplog.at_level(logging.INFO, logger="optimum_blockprune"):
        Pruner(llama, tokenizer).select(config, TEXTS)
    lines = [r.getMessage() for r in caplog.records]

    def seen(prefix):
        return any(line.startswith(prefix) for line in lines)

    assert seen("Calibration: 8 samples") and seen("Solver ")
    # one display for the whole choice: each phase named (with its count) as it starts, the choice's share done
    # and its ETA on every line
    if method is None:  # the default: the guided search
        assert seen("Guided, single removals (6 blocks): 0% (0/") and seen("Guided, solve: ")
        assert seen("Guided, round 1: ") and seen("Guided search round 1: ")
    else:
        assert seen("CBO, Single removals (7 removals) 0/8 samples: 0% (0/")
        assert seen("CBO, Pair removals (") and seen("CBO, Correction round 1/")
    display = [line for line in lines if line.startswith(("Guided, ", "CBO, "))]
    assert display and all("% (" in line and "fes), " in line and "ETA" in line for line in display)
    # the display ends at 100 % of what the choice cost, whatever the estimate was
    assert display[-1].split(": ")[1].startswith("100% ")
