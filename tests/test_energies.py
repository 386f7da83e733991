"""Registered energies and the measured baselines, against hand computations and surgery on copies."""

from __future__ import annotations

import copy
import itertools

import numpy as np
import pytest
from conftest import TEXTS

from optimum_blockprune import BlockRemovalConfig, Pruner, prepare_calibration_data, remove_blocks
from optimum_blockprune.energies import get_energy
from optimum_blockprune.energies.measured_pairs import plausible_blocks, split_half_shrinkage
from optimum_blockprune.errors import ConfigurationError
from optimum_blockprune.evaluation import evaluate_removals, removal_losses
from optimum_blockprune.methods import RankingContext
from optimum_blockprune.problem import removal_problem

FAST = dict(num_calibration_samples=8, max_length=32, batch_size=4, show_progress=False)


def _data(tokenizer):
    return prepare_calibration_data(
        list(TEXTS), tokenizer, **BlockRemovalConfig(**FAST).calibration_options()
    )


def _context(model, tokenizer, **config):
    from optimum_blockprune import get_adapter

    config = BlockRemovalConfig(**{**FAST, **config})
    return config, RankingContext(config, model=model, adapter=get_adapter(model), data=_data(tokenizer))


def _problem(model, config):
    from optimum_blockprune import get_adapter

    units = [u.to_dict() for u in get_adapter(model).blocks(model)]
    return removal_problem(units, config)


def _loss_by_surgery(model, data, removed):
    pruned = copy.deepcopy(model)
    remove_blocks(pruned, removed)
    return removal_losses(pruned, data, [()], batch_size=4).per_sample()[0]


def test_secant_rows_are_measured_single_removal_changes(llama, tokenizer):
    config, context = _context(llama, tokenizer, energy="secant")
    q = get_energy("secant").matrix(_problem(llama, config), context)
    data = context.data
    base = _loss_by_surgery(llama, data, [])
    rows = np.stack(
        [_loss_by_surgery(llama, data, [i]) - base for i in range(6)], axis=1
    )  # [samples, blocks]
    np.testing.assert_allclose(q, rows.T @ rows / rows.shape[0], rtol=1e-4, atol=1e-7)


def test_measured_pairs_hold_measured_costs_and_shrunk_interactions(llama, tokenizer):
    config, context = _context(llama, tokenizer, num_blocks_to_remove=2, energy="measured_pairs")
    problem = _problem(llama, config)
    q = get_energy("measured_pairs").matrix(problem, context)
    data = context.data
    unpruned = evaluate_removals(llama, data, [()])[0]
    singles = evaluate_removals(llama, data, [(i,) for i in range(6)]) - unpruned
    np.testing.assert_allclose(np.diag(q), singles, rtol=1e-5, atol=1e-7)
    plausible = plausible_blocks(singles, problem.candidates, problem.forced, 2)
    assert plausible == sorted(np.argsort(singles, kind="stable")[:4].tolist())
    shrinkage = context.stats["pair_shrinkage"]
    assert 0.0 <= shrinkage <= 1.0 and context.stats["pairs_measured"] == 6
    assert context.stats["pair_interaction_median_standard_error"] > 0
    for i, j in itertools.combinations(range(6), 2):
        if i in plausible and j in plausible:
            pair = evaluate_removals(llama, data, [(i, j)])[0] - unpruned
            assert q[i, j] == pytest.approx(
                shrinkage * (pair - singles[i] - singles[j]) / 2, rel=1e-4, abs=1e-7
            )
        else:
            assert q[i, j] == 0.0


def test_calibrated_couplings_are_fisher_correlations_at_measured_scale(llama, tokenizer):
    from optimum_blockprune.energies.calibrated import calibrated_matrix

    config, context = _context(llama, tokenizer, energy="calibrated")
    q = get_energy("calibrated").matrix(_problem(llama, config), context)
    data = context.data
    unpruned = evaluate_removals(llama, data, [()])[0]
    costs = evaluate_removals(llama, data, [(i,) for i in range(6)]) - unpruned
    h = context.fisher().hessian
    for i, j in itertools.product(range(6), repeat=2):
        rho = 1.0 if i == j else h[i, j] / np.sqrt(h[i, i] * h[j, j])
        expected = rho * np.sqrt(max(costs[i], 0.0) * max(costs[j], 0.0))
        assert q[i, j] == pytest.approx(expected, rel=1e-4, abs=1e-8)
    # pure: a block with no curvature has no couplings; negative costs are clipped to 0
    m = calibrated_matrix(
        np.array([[4.0, 2.0, 0.0], [2.0, 1.0, 0.0], [0.0, 0.0, 0.0]]), np.array([4.0, 1.0, -1.0])
    )
    np.testing.assert_allclose(m, [[4.0, 2.0, 0.0], [2.0, 1.0, 0.0], [0.0, 0.0, 0.0]])


def test_split_half_shrinkage():
    rng = np.random.default_rng(0)
    signal = rng.normal(size=200)
    assert split_half_shrinkage(signal, signal) == pytest.approx(1.0)
    assert split_half_shrinkage(signal, -signal) == 0.0
    noisy = split_half_shrinkage(signal + rng.normal(size=200), signal + rng.normal(size=200))
    assert 0.3 < noisy < 0.7  # half the variance is noise
    assert split_half_shrinkage(np.zeros(3), np.zeros(3)) == 0.0


def test_oneshot_perplexity_removes_the_cheapest_single_removals(llama, tokenizer):
    config = BlockRemovalConfig(num_blocks_to_remove=2, method="oneshot_ppl", protected_blocks=[0], **FAST)
    selection = Pruner(llama, tokenizer).select(config, TEXTS)
    data = _data(tokenizer)
    single = [evaluate_removals(llama, data, [(i,)])[0] for i in range(6)]
    expected = tuple(sorted(sorted(range(1, 6), key=lambda i: (single[i], i))[:2]))
    assert selection.removed_blocks == expected and selection.ranking.objective == "sum of single-removal ΔL"
    assert (
        set(selection.estimates) == {"single_removals"} and selection.ranking.stats["measured_removals"] == 7
    )


@pytest.mark.parametrize("energy", ["secant", "measured_pairs", "calibrated"])
def test_measured_energies_rank_through_cbo_against_brute_force(llama, tokenizer, energy):
    # the energy alone, without the default measure-and-correct rounds (tested below)
    config = BlockRemovalConfig(
        num_blocks_to_remove=2, energy=energy, num_states=15, correction_rounds=0, **FAST
    )
    pruner = Pruner(llama, tokenizer)
    ranking = pruner.select(config, TEXTS).ranking
    _, context = _context(llama, tokenizer, num_blocks_to_remove=2, energy=energy)
    q = get_energy(energy).matrix(_problem(llama, config), context)
    brute = sorted(itertools.combinations(range(6), 2), key=lambda s: (q[np.ix_(s, s)].sum(), s))
    assert [s.removed_blocks for s in ranking] == brute
    assert ranking.energy_name == energy and ranking.stats["measured_removals"] >= 7


# -- measure and correct -----------------------------------------------------------------------------------------
def test_corrected_matrix_prices_measured_states_exactly_and_leaves_disjoint_pairs():
    from optimum_blockprune.methods.correction import corrected_matrix
    from optimum_blockprune.qubo import QUBO

    rng = np.random.default_rng(0)
    a = rng.normal(size=(20, 7))
    q = a.T @ a / 20
    measured = {(0, 1, 2): 5.0, (1, 2, 3): -1.0, (4, 5, 6): 2.5}
    corrected = QUBO(corrected_matrix(q, measured))
    for state, value in measured.items():
        assert corrected.energy_of(state) == pytest.approx(value)
    assert corrected.energy_of((0, 3, 6)) == pytest.approx(
        QUBO(q).energy_of((0, 3, 6))
    )  # no measured pair inside
    single = QUBO(corrected_matrix(q, {(4,): 3.0}))
    assert single.energy_of((4,)) == pytest.approx(3.0) and single.energy_of((5,)) == pytest.approx(q[5, 5])


def test_measure_and_correct_carries_measurements_into_the_ranking(llama, tokenizer):
    config = BlockRemovalConfig(
        num_blocks_to_remove=2, energy="measured_pairs", correction_rounds=3, correction_states=2, **FAST
    )
    selection = Pruner(llama, tokenizer).select(config, TEXTS)
    stats = selection.ranking.stats
    assert 1 <= stats["correction_rounds"] <= 3 and stats["correction_states_measured"] >= 2
    data = _data(tokenizer)
    unpruned = evaluate_removals(llama, data, [()])[0]
    q = selection.estimates["energy_matrix"]
    measured = [s for s in selection.ranking if s.energy == pytest.approx(stats["correction_best_measured"])]
    assert measured, "the best measured state is among the ranked ones"
    for state in selection.ranking:
        assert state.energy == pytest.approx(q[np.ix_(state.removed_blocks, state.removed_blocks)].sum())
    best = measured[0].removed_blocks
    assert stats["correction_best_measured"] == pytest.approx(
        evaluate_removals(llama, data, [best])[0] - unpruned, rel=1e-4
    )


def test_correction_is_on_by_default_only_where_it_applies():
    from dataclasses import replace

    config = BlockRemovalConfig(method="cbo")
    assert config.correction_rounds is None and config.rounds_of_correction == 3
    # the default method (guided) corrects its own QUBO; cbo settings given with the method unset choose cbo
    assert BlockRemovalConfig().rounds_of_correction == 0
    assert BlockRemovalConfig(correction_rounds=2).method_name == "cbo"
    # resolved when read: a config changed to another method or energy gets that one's default, not an error
    assert replace(config, method="oneshot_ppl").rounds_of_correction == 0
    assert replace(config, energy="paper").rounds_of_correction == 0
    assert BlockRemovalConfig(reexpansion_interval=2).rounds_of_correction == 0
    assert BlockRemovalConfig(correction_rounds=0).rounds_of_correction == 0
    assert BlockRemovalConfig.from_dict(config.to_dict()).correction_rounds is None
    with pytest.raises(ConfigurationError, match="non-negative integer or None"):
        BlockRemovalConfig(correction_rounds=-1)


def test_correction_needs_an_energy_in_loss_units():
    from optimum_blockprune import ConfigurationError

    with pytest.raises(ConfigurationError, match="does not predict the calibration-loss increase"):
        BlockRemovalConfig(energy="paper", correction_rounds=2)
    assert (
        BlockRemovalConfig(correction_rounds=2).correction_rounds == 2
    )  # the default energy, measured_pairs


# -- iterative re-expansion ---------------------------------------------------------------------------------------
def test_fisher_expanded_at_a_partly_pruned_model_is_the_pruned_models_fisher(llama, tokenizer):
    from optimum_blockprune.estimation.fisher import estimate_fisher

    data = _data(tokenizer)
    expanded = estimate_fisher(llama, data, removed=[1, 4], batch_size=4, show_progress=False)
    pruned = copy.deepcopy(llama)
    remove_blocks(pruned, [1, 4])
    direct = estimate_fisher(pruned, data, batch_size=4, show_progress=False)
    np.testing.assert_allclose(expanded.gradients[:, [0, 2, 3, 5]], direct.gradients, rtol=1e-3, atol=1e-6)
    assert expanded.metadata["expanded_at_removed"] == [1, 4]


def test_reexpansion_commits_the_cheapest_new_block_and_re_measures_without_it(llama, tokenizer):
    config = BlockRemovalConfig(
        num_blocks_to_remove=3, energy="secant", reexpansion_interval=1, num_states=4, **FAST
    )
    ranking = Pruner(llama, tokenizer).select(config, TEXTS).ranking
    data = _data(tokenizer)

    def secant_at(committed):
        per_sample = removal_losses(
            llama, data, [committed, *(tuple(sorted({*committed, i})) for i in range(6))], batch_size=4
        ).per_sample()
        rows = (per_sample[1:] - per_sample[0]).T
        return rows.T @ rows / rows.shape[0]

    def lowest(q, committed, k):
        states = [s for s in itertools.combinations(range(6), 3) if set(committed) <= set(s)]
        return sorted(states, key=lambda s: (q[np.ix_(s, s)].sum(), s))[:k]

    committed = ()
    for _ in range(2):  # 3 blocks, one committed per round: two rounds, then the last solve ranks the third
        q = secant_at(committed)
        new = sorted(set(lowest(q, committed, 1)[0]) - set(committed), key=lambda b: (q[b, b], b))
        committed = tuple(sorted({*committed, new[0]}))
    assert ranking.stats["reexpansion_committed"] == list(committed)
    assert ranking.stats["reexpansion_rounds"] == 3
    assert [s.removed_blocks for s in ranking] == lowest(secant_at(committed), committed, 4)


def test_reexpansion_is_refused_where_it_cannot_apply():
    from optimum_blockprune.errors import ConfigurationError

    with pytest.raises(ConfigurationError, match="reexpansion_interval"):
        BlockRemovalConfig(method="block_influence", reexpansion_interval=2)
    with pytest.raises(ConfigurationError, match="reexpansion_interval"):
        BlockRemovalConfig(reexpansion_interval=-1)
    with pytest.raises(ConfigurationError, match="cannot be combined"):
        BlockRemovalConfig(energy="measured_pairs", reexpansion_interval=2, correction_rounds=2)


# -- measurements reused across selections -----------------------------------------------------------------------
def test_a_second_selection_reuses_measured_removals_until_the_model_changes(llama, tokenizer):
    import torch

    pruner = Pruner(llama, tokenizer)
    first = pruner.select(BlockRemovalConfig(num_blocks_to_remove=2, method="oneshot_ppl", **FAST), TEXTS)
    assert first.ranking.stats["measured_removals"] == 7 and len(pruner.measurements) == 7
    # same data and model: secant needs the same singles and measures nothing new
    second = pruner.select(BlockRemovalConfig(num_blocks_to_remove=2, energy="secant", **FAST), TEXTS)
    assert (
        second.ranking.stats.get("measured_removals", 0) == 0 and second.ranking.stats["reused_removals"] == 7
    )
    fresh = Pruner(copy.deepcopy(llama), tokenizer).select(
        BlockRemovalConfig(num_blocks_to_remove=2, energy="secant", **FAST), TEXTS
    )
    assert [s.removed_blocks for s in second.ranking] == [s.removed_blocks for s in fresh.ranking]
    assert [s.energy for s in second.ranking] == pytest.approx([s.energy for s in fresh.ranking])
    # another calibration set (auto's scoring slice, say) does not evict the first one
    fewer = {**FAST, "num_calibration_samples": 6}
    pruner.select(BlockRemovalConfig(num_blocks_to_remove=2, method="oneshot_ppl", **fewer), TEXTS)
    again = pruner.select(BlockRemovalConfig(num_blocks_to_remove=2, method="oneshot_ppl", **FAST), TEXTS)
    assert again.ranking.stats.get("measured_removals", 0) == 0
    # an in-place weight change (a training step) invalidates every measurement
    with torch.no_grad():
        llama.model.layers[2].mlp.down_proj.weight.mul_(0.5)
    third = pruner.select(BlockRemovalConfig(num_blocks_to_remove=2, energy="secant", **FAST), TEXTS)
    assert third.ranking.stats["measured_removals"] == 7


# -- encoders: measured energies on the final hidden states --------------------------------------------------------
def test_measured_energies_on_an_encoder_measure_hidden_state_distortion(tokenizer):
    import torch
    from conftest import build_tiny_model

    bert = build_tiny_model("bert")
    config = BlockRemovalConfig(num_blocks_to_remove=2, energy="measured_pairs", num_states=15, **FAST)
    selection = Pruner(bert, tokenizer).select(config, TEXTS)
    q = selection.estimates["energy_matrix"]
    data = _data(tokenizer)
    batch = tokenizer.pad({"input_ids": [list(s) for s in data.samples]}, return_tensors="pt")
    mask = batch["attention_mask"].bool()

    def distortion(removed):
        model = copy.deepcopy(bert)
        remove_blocks(model, removed)
        with torch.no_grad():
            hidden = model(**batch).last_hidden_state[mask]
            reference = bert(**batch).last_hidden_state[mask]
        return float((1 - torch.nn.functional.cosine_similarity(hidden, reference, dim=-1)).mean())

    singles = [distortion([i]) for i in range(6)]
    np.testing.assert_allclose(np.diag(q), singles, rtol=1e-3, atol=1e-6)
    states = [s.removed_blocks for s in selection.ranking]
    assert states == sorted(itertools.combinations(range(6), 2), key=lambda s: (q[np.ix_(s, s)].sum(), s))
    with pytest.raises(ValueError, match="distortion"):
        removal_losses(bert, data, [(1,)], metric="loss")
