"""Measured searches (EvoPress, brute force) and what every method's choice costs in block evaluations."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
from conftest import TEXTS, build_tiny_model

from optimum_blockprune import BlockRemovalConfig, Pruner, get_adapter
from optimum_blockprune.errors import ConfigurationError
from optimum_blockprune.estimation.calibration import prepare_calibration_data
from optimum_blockprune.evaluation import removal_losses

FAST = dict(num_calibration_samples=16, max_length=24, batch_size=4, show_progress=False)
DATA = TEXTS * 4
#: blocks of the structured model that barely write to the residual stream: the clear best three to remove
WEAK = (1, 4, 6)


def _structured_model():
    """8 blocks; blocks in WEAK write 1 % of their output, the others 3x theirs: removing WEAK is the only
    cheap choice, so a search that works must find it."""
    model = build_tiny_model("llama", num_hidden_layers=8)
    with torch.no_grad():
        for index, block in enumerate(get_adapter(model).block_list(model)):
            scale = 0.01 if index in WEAK else 3.0
            block.self_attn.o_proj.weight.mul_(scale)
            block.mlp.down_proj.weight.mul_(scale)
    return model


def test_evopress_finds_the_brute_force_optimum_and_stays_feasible(tokenizer):
    pruner = Pruner(_structured_model(), tokenizer)
    oracle = pruner.select(BlockRemovalConfig(num_blocks_to_remove=3, method="brute_force", **FAST), DATA)
    assert oracle.state.removed_blocks == WEAK
    energies = [s.energy for s in pruner.ranking]
    assert energies == sorted(energies) and pruner.ranking.stats["brute_force_states"] == 56

    config = BlockRemovalConfig(num_blocks_to_remove=3, method="evopress", **FAST)
    chosen = pruner.select(config, DATA)
    assert chosen.state.removed_blocks == WEAK
    stats = pruner.ranking.stats
    assert stats["evopress"]["generations"] == 3 * 5 // 1.5
    assert stats["evopress"]["samples_per_stage"] == {"initial": 1, "selection": [1, 4], "final": 16}
    assert stats["evopress"]["tokens_per_stage"]["final"] == stats["calibration"]["num_tokens"]
    # the same seed gives the same search; every parent it kept was feasible
    again = Pruner(_structured_model(), tokenizer)
    again.select(config, DATA)
    assert again.ranking.stats["evopress"]["parents"] == stats["evopress"]["parents"]

    # Constraints hold in every state it keeps: block 1 forced, weak block 4 protected, so 6 is the clear third.
    constraints = dict(num_blocks_to_remove=3, protected_blocks=[4], forced_blocks=[1], **FAST)
    pruner.select(BlockRemovalConfig(method="evopress", **constraints), DATA)
    for parent in pruner.ranking.stats["evopress"]["parents"]:
        assert 1 in parent and 4 not in parent and len(parent) == 3
    best = Pruner(_structured_model(), tokenizer).select(
        BlockRemovalConfig(method="brute_force", **constraints), DATA
    )
    assert 6 in best.state.removed_blocks
    assert pruner.ranking[0].removed_blocks == best.state.removed_blocks


def test_search_budget_stops_evopress_early(tokenizer):
    pruner = Pruner(_structured_model(), tokenizer)
    pruner.select(
        BlockRemovalConfig(num_blocks_to_remove=3, method="evopress", search_budget=1.0, **FAST), DATA
    )
    stats = pruner.ranking.stats
    assert stats["evopress"]["generations"] < 10
    full = Pruner(_structured_model(), tokenizer)
    full.select(BlockRemovalConfig(num_blocks_to_remove=3, method="evopress", **FAST), DATA)
    assert stats["forward_equivalents"] < full.ranking.stats["forward_equivalents"]
    with pytest.raises(ConfigurationError, match="`search_budget` must be a positive number"):
        BlockRemovalConfig(search_budget=0)


def test_brute_force_is_refused_above_its_state_limit_before_measuring(tokenizer, monkeypatch):
    from optimum_blockprune.methods.brute_force import MeasuredBruteForce

    monkeypatch.setattr(MeasuredBruteForce, "max_states", 10)
    pruner = Pruner(build_tiny_model("llama"), tokenizer)
    with pytest.raises(ConfigurationError, match=r"C\(6, 3\) = 20 states, more than its limit of 10"):
        pruner.select(BlockRemovalConfig(num_blocks_to_remove=3, method="brute_force", **FAST), DATA)
    assert not pruner.measurements or len(pruner.measurements) == 0


@pytest.mark.parametrize("reuse_prefix", [False, True])
@pytest.mark.parametrize("metric", ["loss", "kl"])
def test_block_evaluations_count_every_block_run_on_every_token(tokenizer, reuse_prefix, metric, monkeypatch):
    """The reported count equals the tokens every block's forward actually saw (batches of one: no padding)."""
    model = build_tiny_model("llama")
    data = prepare_calibration_data(TEXTS, tokenizer, num_samples=len(TEXTS), max_length=24, shuffle=False)
    block_class = type(get_adapter(model).block_list(model)[0])
    compute = block_class.forward  # a resumed block's instance `forward` replays its capture instead
    seen = []

    def counted(self, hidden_states, *args, **kwargs):
        seen.append(hidden_states.shape[-2])
        return compute(self, hidden_states, *args, **kwargs)

    monkeypatch.setattr(block_class, "forward", counted)
    removals = [(), (2,), (4,), (2, 4), (1, 5)]
    losses = removal_losses(model, data, removals, metric=metric, batch_size=1, reuse_prefix=reuse_prefix)
    assert losses.block_evaluations == sum(seen) > 0
    if not reuse_prefix:
        assert losses.block_evaluations == 6 * data.num_tokens * (len(removals) + (metric == "kl"))


@pytest.mark.parametrize("method", ["sleb", "evopress", "oneshot_ppl", "block_influence", "cbo"])
def test_every_measuring_method_reports_block_evaluations(tokenizer, method):
    pruner = Pruner(build_tiny_model("llama"), tokenizer)
    pruner.select(BlockRemovalConfig(num_blocks_to_remove=2, method=method, **FAST), DATA)
    stats = pruner.ranking.stats
    assert stats["block_evaluations"] > 0
    full_pass = 6 * stats["calibration"]["num_tokens"]  # six blocks over every calibration token
    assert np.isclose(stats["forward_equivalents"], stats["block_evaluations"] / full_pass, atol=1e-3)


@pytest.mark.parametrize("structured", [True, False], ids=["structured", "random"])
def test_guided_search_finds_the_brute_force_optimum(tokenizer, structured):
    build = _structured_model if structured else (lambda: build_tiny_model("llama", num_hidden_layers=8))
    oracle = Pruner(build(), tokenizer).select(
        BlockRemovalConfig(num_blocks_to_remove=3, method="brute_force", selection_metric="kl", **FAST),
        DATA,
    )
    pruner = Pruner(build(), tokenizer)
    # a budget past the energy's own cost, so the search runs rounds on top of its seeds
    pruner.select(BlockRemovalConfig(num_blocks_to_remove=3, method="guided", search_budget=40, **FAST), DATA)
    stats = pruner.ranking.stats
    assert pruner.ranking[0].removed_blocks == oracle.state.removed_blocks
    assert stats["guided"]["rounds"] >= 1 and stats["guided"]["states_screened"] > 0
    assert stats["guided"]["samples_per_stage"] == {
        "screen": 2,
        "half": 8,
        "full": 16,
        "final": 16,
        "choice": 16,
    }
    assert stats["guided"]["tokens_per_stage"]["full"] == stats["calibration"]["num_tokens"]
    # every ranked state was measured on every sample (stitched from its stages' samples): its energy is the KL
    # the brute force measures on all samples at once
    ranked = [s.energy for s in pruner.ranking]
    assert ranked == sorted(ranked) and len(ranked) == stats["guided"]["states_measured"]
    oracle_energy = {s.removed_blocks: s.energy for s in oracle.ranking}
    shared = [s for s in pruner.ranking if s.removed_blocks in oracle_energy]
    assert len(shared) >= 2
    for state in shared:
        assert state.energy == pytest.approx(oracle_energy[state.removed_blocks], rel=1e-5, abs=1e-7)


def test_guided_search_spends_its_tokens_on_the_finalists(tokenizer, monkeypatch):
    """With more samples than the search uses, it searches on a subset and measures on every sample only the states
    the subset cannot tell from its best: the ranking holds those, ordered by the KL the brute force measures on the
    samples the search never saw (and records their KL on all samples)."""
    from optimum_blockprune.methods.guided import GuidedSearch, search_subset
    from optimum_blockprune.selection import prepare_scoring_data

    monkeypatch.setattr(GuidedSearch, "search_samples", 8)
    monkeypatch.setattr(GuidedSearch, "finalists", 3)
    config = BlockRemovalConfig(num_blocks_to_remove=3, method="guided", **FAST)
    pruner = Pruner(_structured_model(), tokenizer)
    data = prepare_scoring_data(DATA, tokenizer, config, model=pruner.model)
    pruner.select(config, data)
    stats = pruner.ranking.stats
    run = stats["guided"]
    assert run["samples_per_stage"] == {"screen": 2, "half": 4, "full": 8, "final": 16, "choice": 8}
    assert run["tokens_per_stage"]["final"] == stats["calibration"]["num_tokens"]
    assert (
        1 <= run["finalists"] == len(pruner.ranking) == len(run["finalist_kl"]) <= 3 < run["states_measured"]
    )
    # the subset benchmarks/calibration_kl.py recomputes
    assert run["search_samples"] == list(search_subset(16, 8, config.seed))
    left_out = sorted(set(range(16)) - set(run["search_samples"]))
    assert len(run["search_samples"]) == len(left_out) == run["samples_per_stage"]["choice"] == 8

    def oracle(samples):
        chosen = Pruner(_structured_model(), tokenizer).select(
            replace(
                config, method="brute_force", selection_metric="kl", num_calibration_samples=len(samples)
            ),
            data.subset(samples),
        )
        return chosen, {s.removed_blocks: s.energy for s in chosen.ranking}

    best_left_out, on_left_out = oracle(left_out)
    _, on_all = oracle(list(range(16)))
    assert pruner.ranking[0].removed_blocks == best_left_out.state.removed_blocks == WEAK
    by_state = {tuple(f["removed_blocks"]): f for f in run["finalist_kl"]}
    for (
        state
    ) in pruner.ranking:  # stitched from the search's samples and the rest: the same as measured at once
        assert state.energy == pytest.approx(on_left_out[state.removed_blocks], rel=1e-5, abs=1e-7)
        assert by_state[state.removed_blocks]["left_out"] == pytest.approx(state.energy, rel=1e-6)
        assert by_state[state.removed_blocks]["all"] == pytest.approx(
            on_all[state.removed_blocks], rel=1e-5, abs=1e-7
        )
    # the default budget: SLEB's cost on the search's share of the samples, plus the finalists' reserve (and the
    # unpruned pass they compare with)
    assert run["budget_forward_equivalents"] == pytest.approx(
        (3 + (8 + 7 + 6) / 2) * 8 / 16 + (3 + 1) * 8 / 16
    )
    summary = GuidedSearch().run_summary(pruner.config, stats)  # the card's "this run"
    finalists = f"{run['finalists']} finalist{'s' if run['finalists'] != 1 else ''}"
    assert (
        f"measured on all 8 search samples, {finalists} on all 16 calibration samples and ranked on the 8 the search "
        "left out" in summary
    )


def test_a_paired_gap_counts_standard_errors_of_the_per_sample_differences():
    """Which states go to the finalists: the paired difference from the best in standard errors (a ratio
    estimator over samples of different token counts), by hand on three samples."""
    from types import SimpleNamespace

    from optimum_blockprune.methods.guided import _SampleRows

    rows = _SampleRows(SimpleNamespace(data=SimpleNamespace(num_samples=3)), "kl")
    rows._tokens[:] = [10, 10, 20]
    rows._sums[(0,)] = np.array([1.0, 2.0, 3.0])
    rows._sums[(1,)] = np.array([2.0, 2.0, 5.0])  # differences 1, 0, 2 over 40 tokens: mean 0.075 per token
    rows._sums[(2,)] = rows._sums[(0,)] + np.array([1.0, 1.0, 2.0])  # 0.1 per token on every sample: no noise
    residuals = np.array([1.0, 0.0, 2.0]) - 0.075 * rows._tokens
    standard_error = np.sqrt(3 / 2 * (residuals**2).sum()) / 40
    assert rows.gap((1,), (0,), range(3)) == pytest.approx(0.075 / standard_error)
    assert rows.gap((2,), (0,), range(3)) == np.inf and rows.gap((0,), (0,), range(3)) == 0.0


def test_guided_search_keeps_constraints_and_its_budget(tokenizer):
    pruner = Pruner(build_tiny_model("llama", num_hidden_layers=8), tokenizer)
    config = BlockRemovalConfig(
        num_blocks_to_remove=3,
        method="guided",
        protected_blocks=[4],
        forced_blocks=[1],
        search_budget=40,
        **FAST,
    )
    pruner.select(config, DATA)
    assert all(1 in s.removed_blocks and 4 not in s.removed_blocks for s in pruner.ranking)
    tight = Pruner(build_tiny_model("llama", num_hidden_layers=8), tokenizer)
    tight.select(BlockRemovalConfig(num_blocks_to_remove=3, method="guided", search_budget=1, **FAST), DATA)
    assert tight.ranking.stats["guided"]["rounds"] == 0  # the energy alone spends more than 1 forward
