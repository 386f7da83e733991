"""Baselines (checked against brute force and against real surgery) and `selection='auto'`."""

from __future__ import annotations

import copy
import itertools
import json

import numpy as np
import pytest
import torch
from conftest import TEXTS, build_tiny_model
from transformers import AutoModelForCausalLM

from optimum_blockprune import (
    BlockRemovalConfig,
    CalibrationDataError,
    ConfigurationError,
    Pruner,
    Ranking,
    prepare_calibration_data,
    remove_blocks,
)
from optimum_blockprune.constraints import kind_limit
from optimum_blockprune.estimation.statistics import collect_residual_statistics
from optimum_blockprune.evaluation import evaluate_removals
from optimum_blockprune.methods import available_methods, get_method
from optimum_blockprune.methods.rules import completable, greedy_ranking, rank_by_importance, rank_windows
from optimum_blockprune.qubo import QUBO, CardinalityProblem

FAST = dict(
    num_calibration_samples=8, num_selection_samples=4, max_length=32, batch_size=4, show_progress=False
)


def _data(tokenizer, n=8, texts=TEXTS):
    config = BlockRemovalConfig(num_calibration_samples=n, max_length=32)
    return prepare_calibration_data(list(texts), tokenizer, **config.calibration_options())


def _constrained_problem(n=7, m=3):
    kinds = ["attention", "mlp"] * 3 + ["attention"]
    return CardinalityProblem(
        QUBO(np.zeros((n, n))),
        m,
        tuple(i for i in range(n) if i != 2),  # block 2 protected
        constraints=(kind_limit(kinds, "attention", at_most=1),),
    )


def _feasible(problem):
    states = list(itertools.combinations(range(problem.qubo.num_variables), problem.num_selected))
    ok = problem.is_feasible(problem.to_binary(states))
    return [s for s, good in zip(states, ok) if good]


# -- pure ranking rules against brute force -----------------------------------------------------------------------
def test_importance_ranking_is_the_brute_force_order_under_constraints():
    problem = _constrained_problem()
    importance = np.array([0.3, 0.1, 0.05, 0.7, 0.2, 0.4, 0.15])
    ranking = rank_by_importance(problem, importance, 50)
    brute = sorted(_feasible(problem), key=lambda s: (importance[list(s)].sum(), s))
    assert [s.removed_blocks for s in ranking] == brute
    assert [s.energy for s in ranking] == pytest.approx([importance[list(s)].sum() for s in brute])
    # no constraints: the M least important blocks
    plain = CardinalityProblem.from_matrix(np.zeros((7, 7)), 3)
    assert rank_by_importance(plain, importance, 1)[0].removed_blocks == (1, 2, 6)


def test_window_ranking_is_every_feasible_run_by_cost():
    problem = _constrained_problem(m=2)
    cost = np.random.default_rng(0).random((8, 8))
    ranking = rank_windows(problem, cost, 10)
    runs = [s for s in _feasible(problem) if s[-1] - s[0] == 1]
    assert sorted(s.removed_blocks for s in ranking) == sorted(runs)
    assert [s.energy for s in ranking] == sorted(cost[s[0], s[0] + 2] for s in runs)


def test_completable_agrees_with_brute_force():
    problem = _constrained_problem()
    feasible = _feasible(problem)
    for size in (1, 2, 3):
        for chosen in itertools.combinations(range(7), size):
            expected = any(set(chosen) <= set(s) for s in feasible)
            assert completable(problem, chosen) == expected, chosen


def test_greedy_picks_the_cheapest_feasible_block_each_step():
    problem = _constrained_problem()
    base = np.array([0.0, 0.5, -1.0, 0.2, 0.3, 0.4, 0.1])  # block 2 would win but is protected

    def costs(removed, options):
        # an interaction: once block 0 is gone, block 6 becomes expensive
        return [base[b] + (5.0 if b == 6 and 0 in removed else 0.0) + 0.01 * len(removed) for b in options]

    ranking = greedy_ranking(problem, costs, accumulate=False)
    # 0 (an attention block) first; then only MLP blocks may go (one attention at most): 3, then 5
    assert ranking.stats["removal_order"] == [0, 3, 5]
    (state,) = ranking.states
    assert (
        state.removed_blocks == (0, 3, 5)
        and problem.is_feasible(problem.to_binary([state.removed_blocks]))[0]
    )
    assert state.energy == pytest.approx(0.4 + 0.02)
    shorter = greedy_ranking(replace_m(problem, 2), costs, accumulate=True)
    assert shorter.stats["removal_order"] == [0, 3]  # a prefix of the longer run
    assert shorter[0].energy == pytest.approx(0.0 + 0.2 + 0.01)


def replace_m(problem, m):
    from dataclasses import replace

    return replace(problem, num_selected=m)


# -- residual statistics ------------------------------------------------------------------------------------------
def test_residual_statistics_use_the_gated_stream_and_mask_padding(llama, tokenizer):
    data = _data(tokenizer)
    stats = collect_residual_statistics(llama, data, batch_size=3)
    # by hand, one unpadded sample at a time: output_hidden_states[i] enters block i; what leaves the last block
    # is the input of the final norm (taken there, whatever transformers puts in its last hidden state)
    final_stream = []
    llama.model.norm.register_forward_pre_hook(lambda module, args: final_stream.append(args[0]))
    cos_sum, ratio_sum, tokens = np.zeros(6), np.zeros(6), 0
    with torch.no_grad():
        for sample in data.samples:
            hidden = llama(input_ids=torch.tensor([sample]), output_hidden_states=True).hidden_states
            stream = [h[0] for h in hidden[:6]] + [final_stream[-1][0]]
            for i in range(6):
                cos_sum[i] += float(torch.cosine_similarity(stream[i], stream[i + 1], dim=-1).sum())
                ratio_sum[i] += float((stream[i + 1].norm(dim=-1) / stream[i].norm(dim=-1)).sum())
            tokens += len(sample)
    assert stats.num_tokens == tokens
    np.testing.assert_allclose(stats.block_influence, 1 - cos_sum / tokens, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(stats.norm_ratio, ratio_sum / tokens, rtol=1e-4)
    np.testing.assert_allclose(np.diag(stats.cosine), 1.0, atol=1e-5)
    np.testing.assert_allclose(np.diag(stats.angular), 0.0, atol=2e-3)
    np.testing.assert_allclose(stats.cosine, stats.cosine.T, atol=1e-6)
    assert np.all(stats.angular >= 0) and np.all(stats.angular <= 1)
    # padding does not count: one sample per batch gives the same numbers
    single = collect_residual_statistics(llama, data, batch_size=1)
    np.testing.assert_allclose(single.cosine, stats.cosine, atol=1e-5)
    np.testing.assert_allclose(single.norm_ratio, stats.norm_ratio, rtol=1e-5)


def test_statistics_after_gated_removal_match_statistics_after_surgery(llama, tokenizer):
    data = _data(tokenizer)
    gated = collect_residual_statistics(llama, data, removed=(1, 3), batch_size=4)
    pruned = copy.deepcopy(llama)
    remove_blocks(pruned, [1, 3])
    real = collect_residual_statistics(pruned, data, batch_size=4)
    kept = [0, 2, 4, 5]
    np.testing.assert_allclose(gated.block_influence[kept], real.block_influence, atol=1e-5)
    assert gated.block_influence[1] == pytest.approx(0.0, abs=1e-6)  # a skipped block changes nothing


# -- the methods through Pruner -----------------------------------------------------------------------------------
def test_every_method_is_registered_with_its_metadata():
    assert set(available_methods()) == {
        "cbo",
        "block_influence",
        "block_influence_iterative",
        "angular_distance",
        "sleb",
        "taylor",
        "taylor_plus",
        "fisher_diagonal",
        "norm_ratio",
        "last_blocks",
        "oneshot_ppl",
        "evopress",
        "brute_force",
        "guided",
    }
    for name in available_methods():
        method = get_method(name)
        assert method.name == name and method.description and method.cost and method.reference
        assert method.objective_for(BlockRemovalConfig(method=name))


@pytest.mark.parametrize(
    "method, importance",
    [
        ("block_influence", lambda p, d: collect_residual_statistics(p.model, d).block_influence),
        ("norm_ratio", lambda p, d: collect_residual_statistics(p.model, d).norm_ratio),
        ("taylor", lambda p, d: np.abs(p.fisher.mean_gradient)),
        ("fisher_diagonal", lambda p, d: np.diag(p.fisher.hessian)),
        ("last_blocks", lambda p, d: -np.arange(6.0)),
    ],
)
def test_one_shot_baselines_remove_the_least_important_blocks(llama, tokenizer, method, importance):
    pruner = Pruner(llama, tokenizer)
    config = BlockRemovalConfig(num_blocks_to_remove=2, method=method, protected_blocks=[0], **FAST)
    state = pruner.select(config, TEXTS).state
    scores = importance(pruner, _data(tokenizer))
    order = [i for i in np.argsort(scores, kind="stable") if i != 0]
    assert state.removed_blocks == tuple(sorted(order[:2]))
    assert pruner.ranking.method == method and len(pruner.ranking) == 10  # C(5, 2): block 0 protected
    assert 0 not in {b for s in pruner.ranking for b in s.removed_blocks}


TEN_SAMPLES = {**FAST, "num_calibration_samples": 10}  # a Fisher over ten blocks needs ten samples


def test_taylor_plus_keeps_the_first_four_and_last_two_blocks_unless_it_must(tokenizer):
    model = build_tiny_model("llama", num_hidden_layers=10)
    pruner = Pruner(model, tokenizer)
    state = pruner.select(
        BlockRemovalConfig(num_blocks_to_remove=3, method="taylor_plus", **TEN_SAMPLES), TEXTS
    ).state
    scores = np.abs(pruner.fisher.mean_gradient)
    middle = [i for i in np.argsort(scores, kind="stable") if 4 <= i <= 7]
    assert state.removed_blocks == tuple(sorted(middle[:3]))
    assert pruner.ranking.label == "taylor+"
    # six blocks: the middle four and then the cheapest edge block by |g|
    state = pruner.select(
        BlockRemovalConfig(num_blocks_to_remove=5, method="taylor_plus", **TEN_SAMPLES), TEXTS
    ).state
    edge = min((0, 1, 2, 3, 8, 9), key=lambda i: scores[i])
    assert state.removed_blocks == tuple(sorted((4, 5, 6, 7, edge)))


def test_angular_distance_removes_the_closest_window(llama, tokenizer):
    pruner = Pruner(llama, tokenizer)
    state = pruner.select(
        BlockRemovalConfig(num_blocks_to_remove=3, method="angular_distance", **FAST), TEXTS
    ).state
    angular = collect_residual_statistics(llama, _data(tokenizer)).angular
    best = min(range(4), key=lambda start: angular[start, start + 3])
    assert state.removed_blocks == (best, best + 1, best + 2)
    assert len(pruner.ranking) == 4  # every window of 3 in 6 blocks


def test_sleb_steps_match_brute_force_surgery(llama, tokenizer):
    pruner = Pruner(llama, tokenizer)
    pruner.select(BlockRemovalConfig(num_blocks_to_remove=2, method="sleb", **FAST), TEXTS)
    data = _data(tokenizer)

    def loss_after(removed):
        model = copy.deepcopy(llama)
        remove_blocks(model, removed)
        return evaluate_removals(model, data, [()])[0]

    first = min(range(6), key=lambda b: loss_after([b]))
    second = min((b for b in range(6) if b != first), key=lambda b: loss_after([first, b]))
    assert pruner.ranking.stats["removal_order"] == [first, second]
    assert pruner.ranking[0].energy == pytest.approx(loss_after([first, second]), rel=1e-5)


def test_iterative_block_influence_recomputes_after_each_removal(llama, tokenizer):
    pruner = Pruner(llama, tokenizer)
    pruner.select(
        BlockRemovalConfig(num_blocks_to_remove=2, method="block_influence_iterative", **FAST), TEXTS
    )
    data = _data(tokenizer)
    first = int(np.argmin(collect_residual_statistics(llama, data).block_influence))
    pruned = copy.deepcopy(llama)
    remove_blocks(pruned, [first])
    kept = [b for b in range(6) if b != first]
    second = kept[int(np.argmin(collect_residual_statistics(pruned, data).block_influence))]
    assert pruner.ranking.stats["removal_order"] == [first, second]


def test_a_baseline_prunes_saves_and_reloads_like_cbo(llama, tokenizer, tmp_path):
    pruner = Pruner(llama, tokenizer, model_id="tiny/llama")
    result = pruner.prune(BlockRemovalConfig(num_blocks_to_remove=2, method="block_influence", **FAST), TEXTS)
    pruner.save_pretrained(tmp_path / "out")
    provenance = json.loads((tmp_path / "out" / "blockprune_config.json").read_text())
    assert provenance["config"]["method"] == "block_influence"
    assert provenance["result"]["ranking"]["method"] == "block_influence"
    card = (tmp_path / "out" / "README.md").read_text()
    assert "block_influence:0 (applied)" in card and "sum of BI" in card
    assert "Cost of the choice: 8 sample forwards for residual-stream statistics" in card
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "out").eval()
    ids = tokenizer(["to be, or not"], return_tensors="pt")
    with torch.no_grad():
        torch.testing.assert_close(reloaded(**ids).logits, llama(**ids).logits)
    assert (
        reloaded.config.num_hidden_layers == 4 and result.removed_blocks == pruner.ranking[0].removed_blocks
    )


# -- automatic choice among the lowest-energy states --------------------------------------------------------------
def test_auto_selection_applies_the_best_measured_state(llama, tokenizer, tmp_path):
    pruner = Pruner(llama, tokenizer)
    original = copy.deepcopy(llama)
    config = BlockRemovalConfig(
        num_blocks_to_remove=2, selection="auto", num_states=6, auto_candidates=(), energy="paper", **FAST
    )
    result = pruner.prune(config, TEXTS)
    ranking = pruner.ranking
    assert len(ranking) == 6 and all(s.score is not None and s.score > 0 for s in ranking)
    energies = [s.energy for s in ranking]
    assert energies == sorted(energies)  # still the energy ranking
    best = min(ranking, key=lambda s: s.score)
    assert result.selected_rank == best.rank and result.removed_blocks == best.removed_blocks
    # scores are the KL on the held-out slice: the 4 samples after the 8 that scored the blocks
    everything = prepare_calibration_data(
        list(TEXTS),
        tokenizer,
        **BlockRemovalConfig(num_calibration_samples=12, max_length=32).calibration_options(),
    )
    held_out = type(everything)(everything.samples[8:], "held out")
    expected = evaluate_removals(original, held_out, [s.removed_blocks for s in ranking], metric="kl")
    np.testing.assert_allclose([s.score for s in ranking], expected, rtol=1e-5)
    assert ranking.selection_metric == "kl" and ranking.stats["selection_samples"] == 4
    table = ranking.to_markdown(selected_rank=result.selected_rank)
    assert "held-out KL" in table and f"CBO:{best.rank} (applied)" in table
    assert Ranking.from_dict(json.loads(json.dumps(ranking.to_dict()))) == ranking
    pruner.save_pretrained(tmp_path / "out")
    card = (tmp_path / "out" / "README.md").read_text()
    assert f"Applied state: CBO:{best.rank} (chosen automatically" in card and "held-out KL" in card
    assert "Cost of the choice: Fisher pass over 8 samples (one forward + one backward each)" in card


def test_auto_selection_keeps_the_fisher_of_ground_selection(llama, tokenizer):
    ground = Pruner(llama, tokenizer)
    ground.select(BlockRemovalConfig(num_blocks_to_remove=2, energy="paper", **FAST), TEXTS)
    auto = Pruner(llama, tokenizer)
    auto.select(BlockRemovalConfig(num_blocks_to_remove=2, selection="auto", energy="paper", **FAST), TEXTS)
    np.testing.assert_array_equal(auto.fisher.hessian, ground.fisher.hessian)
    assert auto.fisher.metadata["calibration_hash"] == ground.fisher.metadata["calibration_hash"]


def test_auto_selection_costs_one_pass_per_state_plus_one(llama, tokenizer):
    pruner = Pruner(llama, tokenizer)
    fisher = pruner.estimate(TEXTS, BlockRemovalConfig(**FAST))
    calls = []
    llama.register_forward_pre_hook(lambda module, args: calls.append(1))
    params_before = {name: p.data_ptr() for name, p in llama.named_parameters()}
    config = BlockRemovalConfig(
        num_blocks_to_remove=2, selection="auto", num_states=5, auto_candidates=(), energy="paper", **FAST
    )
    pruner.select(config, TEXTS, fisher=fisher)
    # the unpruned loss checked on one scoring sample; 4 held-out samples = one batch: the unpruned pass + one per state
    assert len(calls) == 1 + 5 + 1
    assert {name: p.data_ptr() for name, p in llama.named_parameters()} == params_before  # no copies


def test_auto_selection_by_loss(llama, tokenizer):
    pruner = Pruner(llama, tokenizer)
    state = pruner.select(
        BlockRemovalConfig(num_blocks_to_remove=1, selection="auto", selection_metric="loss", **FAST), TEXTS
    ).state
    assert state.score == min(s.score for s in pruner.ranking)
    assert "held-out loss" in pruner.ranking.to_markdown()


def test_selection_errors_come_before_any_work(llama, tokenizer):
    with pytest.raises(ConfigurationError, match="selected_state"):
        BlockRemovalConfig(selection="auto", selected_state=2, num_states=5)
    with pytest.raises(ConfigurationError, match="`method`"):
        BlockRemovalConfig(method="shortgpt")
    with pytest.raises(ConfigurationError, match="granularity='block'"):
        BlockRemovalConfig(method="block_influence", granularity="sublayer")
    pruner = Pruner(llama, tokenizer)
    with pytest.raises(ConfigurationError, match="needs calibration data"):
        pruner.select(BlockRemovalConfig(method="sleb"))
    for texts in (TEXTS[:1], TEXTS[:4]):  # four texts used to go ahead with two scoring and two held out
        with pytest.raises(CalibrationDataError, match=f"only {len(texts)} sample.*at least 4 are needed"):
            pruner.select(BlockRemovalConfig(selection="auto", **FAST), texts)
    with pytest.raises(ConfigurationError, match="`num_selection_samples`=3: .* at least 4 held-out"):
        BlockRemovalConfig(selection="auto", num_selection_samples=3)
    bert = Pruner(build_tiny_model("bert"), tokenizer)
    for config in (BlockRemovalConfig(selection="auto"), BlockRemovalConfig(method="sleb")):
        with pytest.raises(ConfigurationError, match="need next-token predictions"):
            bert.select(config, TEXTS)
    sublayer = BlockRemovalConfig(method="cbo", selection="auto", granularity="sublayer")
    with pytest.raises(
        ConfigurationError, match="gates to 0"
    ):  # branch gates of a post-norm block are a proxy
        bert.select(sublayer, TEXTS)
    assert bert.fisher is None and pruner.fisher is None


def test_auto_selection_measures_other_methods_ground_states_too(llama, tokenizer, tmp_path):
    pruner = Pruner(llama, tokenizer)
    config = BlockRemovalConfig(
        num_blocks_to_remove=2,
        method="cbo",
        selection="auto",
        num_states=3,
        protected_blocks=[0],
        auto_candidates=("oneshot_ppl", "block_influence", "last_blocks"),
        **FAST,
    )
    selection = pruner.select(config, TEXTS)
    ranking = selection.ranking
    own, extra = ranking.states[:3], ranking.states[3:]
    assert all(s.source is None for s in own) and [s.rank for s in ranking] == list(range(len(ranking)))
    ground = {
        name: Pruner(llama, tokenizer).select(replace_method(config, name), TEXTS).removed_blocks
        for name in config.auto_candidates
    }
    seen, expected = {s.removed_blocks for s in own}, []
    for name in config.auto_candidates:  # each distinct state once, in the configured order
        if ground[name] not in seen:
            seen.add(ground[name])
            expected.append((name, ground[name]))
    assert [(s.source, s.removed_blocks) for s in extra] == expected
    q = selection.estimates["energy_matrix"]
    for state in extra:  # priced by the same energy, measured like the ranked states
        assert state.energy == pytest.approx(q[np.ix_(state.removed_blocks, state.removed_blocks)].sum())
        assert state.score is not None
    assert selection.state == min(ranking, key=lambda s: (s.score, s.rank))
    table = ranking.to_markdown()
    assert all(f"| {s.source} |" in table for s in extra)
    assert Ranking.from_dict(json.loads(json.dumps(ranking.to_dict()))) == ranking


def replace_method(config, name):
    from dataclasses import replace

    return replace(config, method=name, selection="ground", auto_candidates=())


def test_sleb_over_sublayers_is_greedy_on_measured_sublayer_removals(llama, tokenizer):
    config = BlockRemovalConfig(num_blocks_to_remove=2, method="sleb", granularity="sublayer", **FAST)
    ranking = Pruner(llama, tokenizer).select(config, TEXTS).ranking
    data = _data(tokenizer)

    def loss(removed):
        return evaluate_removals(llama, data, [removed], granularity="sublayer")[0]

    first = min(range(12), key=lambda u: loss((u,)))
    second = min((u for u in range(12) if u != first), key=lambda u: loss(tuple(sorted((first, u)))))
    assert ranking.stats["removal_order"] == [first, second] and ranking.granularity == "sublayer"
