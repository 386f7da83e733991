"""Coupling gates and the Fisher estimate: batched per-sample gradients, finite differences, numerics."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
from conftest import TEXTS, batch_of, build_tiny_model

from optimum_blockprune import BlockRemovalConfig, CouplingGates, FisherEstimate, estimate_fisher
from optimum_blockprune.estimation import (
    energy_matrix,
    hessian_from_gradients,
    per_sample_token_mean_loss,
    prepare_calibration_data,
)
from optimum_blockprune.estimation.fisher import loss_and_logit_gradient, next_token_targets


def _calibration(tokenizer, **overrides):
    config = BlockRemovalConfig(num_calibration_samples=10, max_length=48, shuffle=False, **overrides)
    return prepare_calibration_data(TEXTS, tokenizer, **config.calibration_options())


def test_gates_are_identity_at_one_and_always_removed(llama, tokenizer):
    batch = batch_of(tokenizer, TEXTS[:2])
    requires_grad = {n: p.requires_grad for n, p in llama.named_parameters()}
    with torch.no_grad():
        reference = llama(**batch).logits
    with pytest.raises(RuntimeError, match="boom"), CouplingGates(llama) as gates:
        gates.alpha = torch.ones(gates.num_gates)
        with torch.no_grad():
            torch.testing.assert_close(llama(**batch).logits, reference, rtol=0, atol=0)
        assert not any(p.requires_grad for p in llama.parameters())
        raise RuntimeError("boom")
    assert all(not m._forward_hooks for m in llama.modules())
    assert {n: p.requires_grad for n, p in llama.named_parameters()} == requires_grad


def test_per_sample_alpha_rows_act_on_their_own_sample(llama, tokenizer):
    batch = batch_of(tokenizer, TEXTS[:2])
    with torch.no_grad(), CouplingGates(llama) as gates:
        alpha = torch.ones(2, gates.num_gates)
        alpha[1, 2] = 0.0  # skip block 2 for sample 1 only
        gates.alpha = alpha
        mixed = llama(**batch).logits
        gates.alpha = torch.ones(gates.num_gates)
        full = llama(**batch).logits
        skipped = torch.ones(gates.num_gates)
        skipped[2] = 0.0
        gates.alpha = skipped
        without_block = llama(**batch).logits
    torch.testing.assert_close(mixed[0], full[0])
    torch.testing.assert_close(mixed[1], without_block[1])
    assert not torch.allclose(full[1], without_block[1])


def test_per_sample_loss_ignores_padding():
    logits = torch.randn(2, 5, 7)
    labels = torch.randint(0, 7, (2, 5))
    padded = labels.clone()
    padded[1, 3:] = -100
    losses = per_sample_token_mean_loss(logits, padded)
    expected_1 = torch.nn.functional.cross_entropy(logits[1, :2], labels[1, 1:3])
    torch.testing.assert_close(losses[1], expected_1)
    expected_0 = torch.nn.functional.cross_entropy(logits[0, :4], labels[0, 1:])
    torch.testing.assert_close(losses[0], expected_0)


@pytest.mark.parametrize("model_type", ["llama", "gpt2", "gemma2", "opt", "falcon", "gpt_neox", "qwen2_moe"])
def test_batched_gradients_equal_batch_size_one_loop(model_type, tokenizer):
    model = build_tiny_model(model_type)
    calibration = _calibration(tokenizer)
    assert len({len(s) for s in calibration.samples}) > 1, "samples of different lengths exercise padding"
    batched = estimate_fisher(model, calibration, batch_size=5, show_progress=False)
    looped = estimate_fisher(model, calibration, batch_size=1, show_progress=False)
    np.testing.assert_allclose(batched.gradients, looped.gradients, rtol=1e-4, atol=1e-6)
    assert np.abs(batched.gradients).max() > 0


def test_gradient_matches_finite_differences(tokenizer):
    model = build_tiny_model("llama", dtype=torch.float64)
    calibration = _calibration(tokenizer)
    fisher = estimate_fisher(model, calibration, batch_size=4, show_progress=False)
    batch = next(calibration.batches(4, 0))
    labels = batch.pop("labels")
    # Central differences with eps = 1e-3: truncation error is O(eps^2); smaller steps drown in the float32
    # rounding that transformers' RMSNorm keeps even in a float64 model.
    eps = 1e-3
    with torch.no_grad(), CouplingGates(model) as gates:
        for block in (0, 3, 5):
            losses = []
            for sign in (1.0, -1.0):
                alpha = torch.ones(gates.num_gates, dtype=torch.float64)
                alpha[block] += sign * eps
                gates.alpha = alpha
                losses.append(per_sample_token_mean_loss(model(**batch).logits, labels))
            numeric = ((losses[0] - losses[1]) / (2 * eps)).numpy()
            np.testing.assert_allclose(fisher.gradients[:4, block], numeric, rtol=1e-3, atol=1e-7)


def test_hessian_is_float64_psd_and_consistent(llama, tokenizer):
    fisher = estimate_fisher(llama, _calibration(tokenizer), batch_size=4, show_progress=False)
    a = fisher.gradients.astype(np.float64)
    assert fisher.hessian.dtype == np.float64 and fisher.gradients.dtype == np.float32
    np.testing.assert_allclose(fisher.hessian, a.T @ a / a.shape[0], rtol=1e-10)
    np.testing.assert_allclose(fisher.mean_gradient, a.mean(axis=0), rtol=1e-10)
    assert np.linalg.eigvalsh(fisher.hessian).min() > -1e-12 * np.abs(fisher.hessian).max()
    assert fisher.metadata["num_samples"] == 10 and fisher.metadata["num_tokens"] > 10


def test_hessian_from_gradients_keeps_precision_of_tiny_values():
    a = np.full((4, 2), 1e-30, dtype=np.float32)
    h = hessian_from_gradients(a)
    assert h.dtype == np.float64 and np.all(h > 0)  # float32 squares would underflow to 0


def test_energy_matrix_with_first_order_term():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(20, 5))
    h, g = hessian_from_gradients(a), a.mean(0)
    q = energy_matrix(h, g)
    for x in ([1, 0, 1, 0, 0], [0, 1, 1, 1, 0]):
        x = np.array(x, dtype=float)
        assert np.isclose(x @ q @ x, x @ h @ x - 2 * g @ x)
    assert np.array_equal(energy_matrix(h), h)


def test_closed_form_logit_gradient_equals_autograd():
    logits = torch.randn(3, 6, 11, dtype=torch.float64, requires_grad=True)
    labels = torch.randint(0, 11, (3, 6))
    labels[1, 4:] = -100
    labels[2, 2:] = -100
    reference = per_sample_token_mean_loss(logits, labels)
    reference.sum().backward()
    losses, grad = loss_and_logit_gradient(logits, next_token_targets(labels))
    torch.testing.assert_close(losses, reference.detach())
    torch.testing.assert_close(grad, logits.grad)
    assert torch.all(grad[:, -1] == 0) and torch.all(grad[1, 3:] == 0)


def test_model_fisher_samples_labels_only_on_real_tokens(llama, tokenizer):
    logits = torch.randn(2, 4, 9)
    targets = torch.tensor([[5, 6, -100, -100], [8, 7, 1, -100]])
    generator = torch.Generator().manual_seed(0)
    losses, grad = loss_and_logit_gradient(logits, targets, generator)
    assert torch.all(grad[0, 2:] == 0) and torch.all(grad[1, 3] == 0)
    # Every real position's gradient is softmax - onehot(drawn label): it sums to zero and has one negative entry.
    real = grad[targets != -100]
    torch.testing.assert_close(real.sum(-1), torch.zeros(len(real)), atol=1e-6, rtol=0)
    assert torch.all((real < 0).sum(-1) == 1)
    calibration = _calibration(tokenizer)
    first = estimate_fisher(llama, calibration, fisher="model", batch_size=5, seed=3, show_progress=False)
    again = estimate_fisher(llama, calibration, fisher="model", batch_size=5, seed=3, show_progress=False)
    empirical = estimate_fisher(llama, calibration, batch_size=5, show_progress=False)
    np.testing.assert_array_equal(first.gradients, again.gradients)
    assert not np.allclose(first.gradients, empirical.gradients)
    assert first.metadata["fisher"] == "model"


def test_fisher_round_trips_through_safetensors(llama, tokenizer, tmp_path):
    fisher = estimate_fisher(llama, _calibration(tokenizer), batch_size=5, show_progress=False)
    path = fisher.save(tmp_path)
    loaded = FisherEstimate.load(path)
    np.testing.assert_array_equal(loaded.gradients, fisher.gradients)
    np.testing.assert_array_equal(loaded.hessian, fisher.hessian)
    np.testing.assert_array_equal(loaded.mean_gradient, fisher.mean_gradient)
    assert loaded.metadata == fisher.metadata
    assert loaded.metadata["calibration_hash"] == _calibration(tokenizer).fingerprint


def test_perplexity_counts_every_real_token_once(llama, tokenizer):
    from optimum_blockprune import evaluate_perplexity

    data = _calibration(tokenizer)
    batched = evaluate_perplexity(llama, data, batch_size=5)
    nll, count = 0.0, 0
    with torch.no_grad():
        for sample in data.samples:
            ids = torch.tensor([sample])
            logits = llama(input_ids=ids).logits[0, :-1]
            nll += float(torch.nn.functional.cross_entropy(logits, ids[0, 1:], reduction="sum"))
            count += len(sample) - 1
    assert batched == pytest.approx(np.exp(nll / count), rel=1e-5)


def test_bfloat16_model_gives_the_float32_fisher_within_bf16_precision(tokenizer):
    calibration = _calibration(tokenizer)
    reference = estimate_fisher(build_tiny_model("llama"), calibration, batch_size=5, show_progress=False)
    half = estimate_fisher(
        build_tiny_model("llama", dtype=torch.bfloat16), calibration, batch_size=5, show_progress=False
    )
    assert half.gradients.dtype == np.float32 and half.hessian.dtype == np.float64
    assert np.all(np.isfinite(half.hessian))
    correlation = np.corrcoef(half.gradients.ravel(), reference.gradients.ravel())[0, 1]
    assert correlation > 0.95
    np.testing.assert_allclose(np.diag(half.hessian), np.diag(reference.hessian), rtol=0.3)


def test_a_fisher_from_fewer_samples_than_blocks_is_refused_before_the_pass(llama, tokenizer):
    """H = AᵀA/m has rank at most m: with m < N it cannot rank removals (it used to be labelled proven)."""
    from optimum_blockprune import BlockPruneWarning, CalibrationDataError, Pruner

    pruner = Pruner(llama, tokenizer)
    few = BlockRemovalConfig(num_calibration_samples=4, max_length=24, show_progress=False)
    with pytest.raises(CalibrationDataError, match="4 calibration sample.*over 6 gates.*at least 6 samples"):
        pruner.estimate(TEXTS, few)
    with pytest.raises(CalibrationDataError, match="for a Fisher over 6 gates"):
        pruner.select(replace(few, energy="paper"), TEXTS)
    assert pruner.fisher is None
    with pytest.warns(BlockPruneWarning, match="Only 8 calibration sample"):  # enough, but little
        fisher = pruner.estimate(TEXTS, replace(few, num_calibration_samples=8))
    short = FisherEstimate(fisher.gradients[:4], fisher.hessian, fisher.mean_gradient, dict(fisher.metadata))
    with pytest.raises(CalibrationDataError, match="from the Fisher estimate"):
        pruner.solve(short, replace(few, energy="paper"))
