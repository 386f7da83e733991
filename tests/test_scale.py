"""Scaling the passes without changing their numbers: token-budget batching, activation checkpointing,
several processes (gloo), resumable accumulation (a killed run), accelerate's big-model placement."""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import WORKER_THREADS, build_tiny_model, worker_threads
from hypothesis import given, settings
from hypothesis import strategies as st

from optimum_blockprune import BlockRemovalConfig, CheckpointError, ConfigurationError, Pruner
from optimum_blockprune.estimation.batching import batch_plan, padded_tokens, shard_plan
from optimum_blockprune.estimation.checkpoint import FisherCheckpoint
from optimum_blockprune.estimation.fisher import estimate_fisher
from optimum_blockprune.evaluation import removal_losses

sys.path.insert(0, str(Path(__file__).parent / "scripts"))
from scale_worker import varied_lengths_data  # noqa: E402

WORKER = Path(__file__).parent / "scripts" / "scale_worker.py"
REMOVALS = [(), (1,), (2, 4), (0, 3, 5)]


# -- batch plans (pure) ---------------------------------------------------------------------------------------------
def test_fixed_plan_is_consecutive_runs_of_batch_size():
    assert batch_plan([5, 1, 7, 3, 2], 2) == [[0, 1], [2, 3], [4]]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(1, 60), min_size=1, max_size=40), st.integers(1, 200))
def test_token_budget_plan_covers_every_sample_once_within_budget(lengths, budget):
    plan = batch_plan(lengths, 8, budget)
    assert sorted(i for batch in plan for i in batch) == list(range(len(lengths)))
    for batch in plan:
        widest = max(lengths[i] for i in batch)
        assert lengths[batch[0]] == widest  # longest first
        assert len(batch) * widest <= budget or len(batch) == 1  # an over-long sample runs alone
    assert padded_tokens(plan, lengths) >= sum(lengths)


def test_token_budget_pads_less_than_fixed_batches():
    lengths = [40, 3, 38, 4, 35, 2, 37, 5]
    fixed, budget = batch_plan(lengths, 2), batch_plan(lengths, 2, 80)
    assert padded_tokens(budget, lengths) < padded_tokens(fixed, lengths)


@settings(max_examples=100, deadline=None)
@given(st.integers(1, 30), st.integers(1, 5))
def test_shards_partition_the_plan(num_batches, num_processes):
    plan = [[i] for i in range(num_batches)]
    shards = [shard_plan(plan, rank, num_processes) for rank in range(num_processes)]
    assert sorted(b[0] for shard in shards for b in shard) == list(range(num_batches))


def test_bad_budgets_are_refused():
    with pytest.raises(ValueError, match="max_tokens_per_batch"):
        batch_plan([3], 1, 0)
    with pytest.raises(ConfigurationError, match="max_tokens_per_batch"):
        BlockRemovalConfig(max_tokens_per_batch=0)


# -- per-sample results do not depend on batching --------------------------------------------------------------------
@pytest.mark.parametrize("fisher", ["empirical", "model"])
def test_token_budget_batching_gives_the_fixed_batching_rows(fisher):
    model, data = build_tiny_model("llama"), varied_lengths_data()
    fixed = estimate_fisher(model, data, fisher=fisher, batch_size=3, show_progress=False)
    budget = estimate_fisher(model, data, fisher=fisher, max_tokens_per_batch=64, show_progress=False)
    alone = estimate_fisher(model, data, fisher=fisher, batch_size=1, show_progress=False)
    np.testing.assert_allclose(budget.gradients, fixed.gradients, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(alone.gradients, fixed.gradients, rtol=1e-4, atol=1e-6)
    assert budget.metadata["num_tokens"] == fixed.metadata["num_tokens"] == data.num_tokens
    assert budget.metadata["mean_calibration_loss"] == pytest.approx(fixed.metadata["mean_calibration_loss"])


def test_token_budget_batching_gives_the_same_measured_removals():
    model, data = build_tiny_model("llama"), varied_lengths_data()
    fixed = removal_losses(model, data, REMOVALS, metric="kl", batch_size=3, reuse_prefix=True)
    budget = removal_losses(model, data, REMOVALS, metric="kl", max_tokens_per_batch=50, reuse_prefix=True)
    np.testing.assert_allclose(budget.sums, fixed.sums, rtol=1e-4, atol=5e-6)  # float32 padding noise
    np.testing.assert_array_equal(budget.tokens, fixed.tokens)


def test_output_probe_rows_do_not_depend_on_batching():
    model, data = build_tiny_model("bert"), varied_lengths_data()
    fixed = estimate_fisher(model, data, fisher="output", batch_size=4, show_progress=False)
    budget = estimate_fisher(model, data, fisher="output", max_tokens_per_batch=60, show_progress=False)
    np.testing.assert_allclose(budget.gradients, fixed.gradients, rtol=1e-4, atol=1e-6)


def test_activation_checkpointing_gives_the_same_rows_and_is_switched_off_after():
    model, data = build_tiny_model("llama", attention_dropout=0.5), varied_lengths_data()
    calls = []
    model.model.layers[0].mlp.register_forward_hook(
        lambda *_: calls.append(1)
    )  # inside the checkpointed forward
    plain = estimate_fisher(model, data, batch_size=4, show_progress=False)
    plain_calls, calls[:] = len(calls), []
    checkpointed = estimate_fisher(
        model, data, batch_size=4, gradient_checkpointing=True, show_progress=False
    )
    assert len(calls) == 2 * plain_calls  # each block recomputed in the backward: checkpointing really ran
    # dropout stays off (eval mode below the layers), so the rows are the same
    np.testing.assert_allclose(checkpointed.gradients, plain.gradients, rtol=1e-5, atol=1e-7)
    assert not model.is_activation_checkpointing and not model.training
    assert not any(m.training for m in model.modules())


def test_checkpointing_a_model_that_cannot_is_refused_before_any_pass(tokenizer, texts, monkeypatch):
    import optimum_blockprune.estimation as estimation

    model = build_tiny_model("llama")
    model.supports_gradient_checkpointing = False
    monkeypatch.setattr(estimation, "estimate_fisher", lambda *a, **k: pytest.fail("the pass ran"))
    config = BlockRemovalConfig(gradient_checkpointing=True, num_blocks_to_remove=2, energy="paper")
    for call in (lambda p: p.estimate(texts, config), lambda p: p.select(config, texts)):
        with pytest.raises(ConfigurationError, match="gradient_checkpointing"):
            call(Pruner(model, tokenizer))


# -- several processes -------------------------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _worker_env() -> dict[str, str]:
    return {
        **os.environ,
        "OMP_NUM_THREADS": str(WORKER_THREADS),
        "PYTHONPATH": str(Path(__file__).parents[1]),
    }


def test_two_gloo_processes_give_one_process_fisher_and_measured_removals(tmp_path):
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2"]
    launcher += ["--master_addr", "127.0.0.1", "--master_port", str(_free_port())]
    for command in (
        [*launcher, str(WORKER), "parallel", str(tmp_path)],
        [sys.executable, str(WORKER), "parallel", str(tmp_path)],
    ):
        result = subprocess.run(command, env=_worker_env(), capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    single = np.load(tmp_path / "1_0.npz")
    ranks = [np.load(tmp_path / f"2_{rank}.npz") for rank in (0, 1)]
    assert [tuple(r["process"]) for r in ranks] == [(0, 2), (1, 2)]
    assert len(single["scores"]) >= 3  # auto measured its candidates
    for name in ("gradients", "hessian", "loss", "sums", "tokens", "cosine", "states", "scores"):
        for rank in ranks:  # the same batches, so the same floating-point operations: identical
            np.testing.assert_array_equal(rank[name], single[name], err_msg=name)


# -- resumable accumulation -------------------------------------------------------------------------------------------
def test_a_killed_fisher_pass_resumes_to_the_uninterrupted_rows(tmp_path):
    checkpoint = tmp_path / "checkpoint"
    command = [sys.executable, str(WORKER), "resumable", str(tmp_path)]
    process = subprocess.Popen(
        command,
        env={**_worker_env(), "SLOW_FORWARD_S": "0.4"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 120
        while not list(checkpoint.glob("fisher_rows.process-*.safetensors")) and time.monotonic() < deadline:
            assert process.poll() is None, process.communicate()[1].decode()[-3000:]
            time.sleep(0.05)
        assert list(checkpoint.glob("fisher_rows.process-*.safetensors")), "no checkpoint was written"
        process.send_signal(signal.SIGKILL)
    finally:
        process.communicate()
    assert not (tmp_path / "resumed_gradients.npy").exists()  # killed before the end
    done = FisherCheckpoint(checkpoint, key={}, every=1, num_gates=6).rows_on_disk()
    assert 0 < done < 13

    result = subprocess.run(command, env=_worker_env(), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    resumed = np.load(tmp_path / "resumed_gradients.npy")
    with worker_threads():  # bit-identity needs the worker's thread count on this side too
        uninterrupted = estimate_fisher(
            build_tiny_model("llama"),
            varied_lengths_data(),
            fisher="model",
            batch_size=2,
            show_progress=False,
        )
    np.testing.assert_array_equal(resumed, uninterrupted.gradients)
    info = json.loads((tmp_path / "resumed_info.json").read_text())
    assert info["num_tokens"] == uninterrupted.metadata["num_tokens"]
    assert info["loss"] == pytest.approx(uninterrupted.metadata["mean_calibration_loss"], rel=1e-12)


def test_a_checkpoint_of_other_data_or_another_model_is_refused(tmp_path):
    model, data = build_tiny_model("llama"), varied_lengths_data()
    estimate_fisher(model, data, show_progress=False, checkpoint_dir=tmp_path, checkpoint_every=4)
    again = estimate_fisher(model, data, show_progress=False, checkpoint_dir=tmp_path)  # resumes: all done
    assert again.num_samples == data.num_samples
    with pytest.raises(CheckpointError, match="calibration_hash"):
        estimate_fisher(model, varied_lengths_data(seed=1), show_progress=False, checkpoint_dir=tmp_path)
    with pytest.raises(CheckpointError, match="weights_fingerprint"):
        estimate_fisher(build_tiny_model("llama", seed=1), data, show_progress=False, checkpoint_dir=tmp_path)
    with pytest.raises(CheckpointError, match="fisher"):
        estimate_fisher(model, data, fisher="model", show_progress=False, checkpoint_dir=tmp_path)
    (tmp_path / "fisher_rows.process-0.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(CheckpointError, match="not readable"):
        estimate_fisher(model, data, show_progress=False, checkpoint_dir=tmp_path)


def test_pruner_estimate_resumes_from_its_checkpoint_dir(tmp_path, tokenizer, texts):
    pruner = Pruner(build_tiny_model("llama"), tokenizer)
    config = BlockRemovalConfig(num_calibration_samples=8, max_length=24, shuffle=False, show_progress=False)
    first = pruner.estimate(texts, config, checkpoint_dir=tmp_path / "ck", checkpoint_every=3)
    assert (tmp_path / "ck" / "fisher_rows.process-0.safetensors").is_file()
    second = pruner.estimate(texts, config, checkpoint_dir=tmp_path / "ck")
    np.testing.assert_array_equal(first.gradients, second.gradients)


# -- accelerate's big-model placement -------------------------------------------------------------------------------
def test_offloaded_model_gives_the_in_memory_fisher_and_measurements(tmp_path):
    """Blocks split between CPU memory and disk (accelerate offload): the same H, the same measured removals, the
    same SLEB and default (measured pairs) rankings as the model held in memory."""
    model = build_tiny_model("llama")
    model.save_pretrained(tmp_path / "model")
    data = varied_lengths_data()
    device_map = {
        "model.embed_tokens": "cpu",
        "model.rotary_emb": "cpu",
        "model.norm": "cpu",
        "lm_head": "cpu",
    }
    device_map.update({f"model.layers.{i}": "disk" if i % 2 else "cpu" for i in range(6)})
    offloaded = Pruner.from_pretrained(
        tmp_path / "model",
        device_map=device_map,
        offload_folder=str(tmp_path / "offload"),
        dtype=torch.float32,
    )
    assert any(p.device.type == "meta" for p in offloaded.model.parameters())  # really offloaded
    in_memory = estimate_fisher(model, data, batch_size=4, show_progress=False)
    placed = estimate_fisher(offloaded.model, data, batch_size=4, show_progress=False)
    np.testing.assert_allclose(placed.hessian, in_memory.hessian, rtol=1e-5, atol=1e-9)
    np.testing.assert_allclose(
        removal_losses(offloaded.model, data, REMOVALS, batch_size=4, reuse_prefix=True).sums,
        removal_losses(model, data, REMOVALS, batch_size=4, reuse_prefix=True).sums,
        rtol=1e-5,
    )
    for method, selection in (("sleb", "ground"), ("cbo", "ground"), ("cbo", "auto")):
        config = BlockRemovalConfig(
            num_blocks_to_remove=2,
            method=method,
            selection=selection,
            batch_size=4,
            num_calibration_samples=9,
            num_selection_samples=4,
        )
        expected = Pruner(model).select(config, data)
        chosen = offloaded.select(config, data)
        assert [s.removed_blocks for s in chosen.ranking] == [s.removed_blocks for s in expected.ranking]
        assert chosen.state.removed_blocks == expected.state.removed_blocks
        if (
            selection == "auto"
        ):  # the held-out scores of every candidate, measured through the offloaded blocks
            np.testing.assert_allclose(
                [s.score for s in chosen.ranking], [s.score for s in expected.ranking], rtol=1e-5
            )


# -- frozen quantized weights ------------------------------------------------------------------------------------
def _quantization_configs():
    from transformers import QuantoConfig, TorchAoConfig

    configs = []
    try:
        import optimum.quanto  # noqa: F401

        configs.append(("quanto", QuantoConfig(weights="int8")))
    except ImportError:
        pass
    try:
        from torchao.quantization import Int8WeightOnlyConfig

        configs.append(("torchao", TorchAoConfig(Int8WeightOnlyConfig())))
    except ImportError:
        pass
    return configs


@pytest.mark.parametrize("method, quantization", _quantization_configs(), ids=lambda v: str(v)[:7])
def test_quantized_weights_estimate_and_the_ranking_applies_to_full_precision(tmp_path, method, quantization):
    from scipy.stats import spearmanr

    from optimum_blockprune import FisherFileError

    build_tiny_model("llama").save_pretrained(tmp_path / "model")
    data = varied_lengths_data(num_samples=16)
    config = BlockRemovalConfig(num_blocks_to_remove=2, energy="paper", selection="ground", batch_size=4)
    full = Pruner.from_pretrained(tmp_path / "model", dtype=torch.float32)
    quantized = Pruner.from_pretrained(
        tmp_path / "model", dtype=torch.float32, quantization_config=quantization
    )
    assert quantized.model.config.quantization_config is not None  # the weights really are quantized

    fisher = quantized.estimate(data, config)  # frozen int8 weights, float alpha
    reference = full.estimate(data, config)
    assert fisher.metadata["quantization"] == method and reference.metadata["quantization"] is None
    assert not np.allclose(fisher.hessian, reference.hessian)  # quantization changed the numbers ...
    states = [np.isin(np.arange(6), pair).astype(float) for pair in itertools.combinations(range(6), 2)]
    energies = [x @ fisher.energy_matrix() @ x for x in states]
    expected = [x @ reference.energy_matrix() @ x for x in states]
    assert spearmanr(energies, expected).statistic > 0.9  # ... but not the order of the 15 states

    # The two-step: the quantized estimate ranks the full-precision model (its fingerprint differs, so say so).
    with pytest.raises(FisherFileError, match="verify_fisher_model=False"):
        full.solve(fisher, config)
    ranking = full.solve(fisher, dataclasses.replace(config, verify_fisher_model=False))
    measured = quantized.select(
        BlockRemovalConfig(num_blocks_to_remove=2, selection="ground", batch_size=4), data
    )
    result = full.apply(
        measured.state
    )  # the default (measured) energy's pick, measured on the quantized copy
    assert result.removed_blocks == measured.state.removed_blocks and len(ranking) >= 1
    assert len(full.model.model.layers) == 4


# -- the command line ---------------------------------------------------------------------------------------------
def _cli(arguments, launcher=(sys.executable, "-m")):
    command = [*launcher, "optimum_blockprune.cli", *arguments]
    result = subprocess.run(command, env=_worker_env(), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def test_cli_estimate_under_two_processes_writes_the_one_process_file(
    tmp_path, tiny_model_dir, calibration_file
):
    from optimum_blockprune import FisherEstimate

    common = ["estimate", str(tiny_model_dir), "--dataset", str(calibration_file), "--max-length", "24"]
    common += ["--no-shuffle", "--batch-size", "2", "--no-show-progress"]
    _cli([*common, "--output", str(tmp_path / "one.safetensors")])
    torchrun = (
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_addr",
        "127.0.0.1",
    )
    _cli(
        [*common, "--output", str(tmp_path / "two.safetensors"), "--checkpoint-dir", str(tmp_path / "ck")],
        launcher=(*torchrun, "--master_port", str(_free_port()), "-m"),
    )
    budget = [*common, "--output", str(tmp_path / "budget.safetensors"), "--max-tokens-per-batch", "40"]
    _cli(budget)
    one, two, by_budget = (
        FisherEstimate.load(tmp_path / f"{n}.safetensors") for n in ("one", "two", "budget")
    )
    np.testing.assert_array_equal(two.gradients, one.gradients)
    np.testing.assert_allclose(by_budget.gradients, one.gradients, rtol=1e-4, atol=1e-6)
    # both processes checkpointed their own share
    assert sorted(p.name for p in (tmp_path / "ck").iterdir()) == [
        "fisher_rows.process-0.safetensors",
        "fisher_rows.process-1.safetensors",
    ]


def test_gpu_benchmark_script_runs_on_cpu_with_tiny_shapes(tmp_path):
    script = Path(__file__).parents[1] / "benchmarks" / "gpu.sh"
    output = tmp_path / "gpu.json"
    result = subprocess.run(
        ["bash", str(script), "--tiny", "--output", str(output)],
        env=_worker_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    payload = json.loads(output.read_text())
    assert [r["model"] for r in payload["rows"]] == ["Llama-3.1-8B", "Qwen3-14B", "Llama-3.3-70B"]
    for row in payload["rows"]:
        assert row["rows_finite"] and row["fisher_tokens_per_s"] > 0 and row["paper_hours"] > 0
    assert payload["rows"][2]["quantization"] == "quanto-int4"  # 4-bit weights (NF4 on CUDA)
    assert payload["distillation"]["tokens_per_s"] > 0
    assert "| Llama-3.1-8B |" in result.stdout


def test_cli_two_step_quantized_estimate_then_full_precision_prune(
    tmp_path, tiny_model_dir, calibration_file
):
    pytest.importorskip("optimum.quanto")
    fisher = tmp_path / "int8.safetensors"
    data = ["--dataset", str(calibration_file), "--max-length", "24", "--no-show-progress"]
    _cli(["estimate", str(tiny_model_dir), *data, "--quantization", "quanto-int8", "--output", str(fisher)])
    prune = ["prune", str(tiny_model_dir), "--fisher-file", str(fisher), "--energy", "paper"]
    prune += ["--num-blocks-to-remove", "2", "--selection", "ground", "--no-show-progress"]
    refused = subprocess.run(
        [sys.executable, "-m", "optimum_blockprune.cli", *prune, "--output-dir", str(tmp_path / "refused")],
        env=_worker_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert refused.returncode == 2 and "verify-fisher-model" in refused.stderr
    _cli([*prune, "--no-verify-fisher-model", "--output-dir", str(tmp_path / "pruned")])
    from transformers import AutoModelForCausalLM

    pruned = AutoModelForCausalLM.from_pretrained(tmp_path / "pruned")  # plain transformers, full precision
    assert (
        pruned.config.num_hidden_layers == 4 and getattr(pruned.config, "quantization_config", None) is None
    )
