"""Block kinds, sublayer granularity, per-kind constraints and the refusals that keep a pruned model loadable."""

from __future__ import annotations

import itertools
import warnings

import numpy as np
import pytest
import torch
from conftest import TEXTS, TINY_CONFIGS, auto_class_for, batch_of, build_tiny_model, model_output
from transformers import AutoConfig, AutoModelForCausalLM

from optimum_blockprune import (
    BlockRemovalConfig,
    CouplingGates,
    Pruner,
    get_adapter,
    remove_blocks,
    supported_model_types,
)
from optimum_blockprune.architectures.hybrids import HYBRID_DECODERS
from optimum_blockprune.errors import (
    BlockPruneWarning,
    ConfigurationError,
    SurgeryError,
    UnsupportedArchitectureError,
)
from optimum_blockprune.problem import check_request
from optimum_blockprune.selection import rank_from_fisher

ARCHITECTURES = supported_model_types()
FAST = dict(num_calibration_samples=12, max_length=24, batch_size=2, show_progress=False, energy="paper")


@pytest.fixture(params=ARCHITECTURES)
def arch(request):
    return request.param


def test_block_and_sublayer_kinds_are_the_declared_ones(arch):
    model = build_tiny_model(arch)
    adapter = get_adapter(model)
    blocks = adapter.blocks(model)
    assert {b.kind for b in blocks} <= set(adapter.kinds), adapter.kinds
    sublayers = adapter.units(model, "sublayer")
    assert {u.kind for u in sublayers} <= {*adapter.branch_kinds, *adapter.kinds, "moe"}
    # Sublayers partition each block's gated branches and its branch parameters (an interpolating block gate
    # sits on the block itself; its sublayers partition the block's branches).
    for block in blocks:
        parts = [u for u in sublayers if u.block == block.index]
        branches = (
            [f"{block.name}.{p}" for p, _ in adapter.present_branches(adapter.block_list(model)[block.index])]
            if adapter.interpolates("block")
            else block.branches
        )
        assert parts and sorted(p for u in parts for p in u.branches) == sorted(branches)
        assert sum(u.num_parameters for u in parts) <= block.num_parameters
    assert [u.index for u in sublayers] == list(range(len(sublayers)))


def test_sublayer_gates_at_zero_equal_the_block_gate_at_zero(arch, tokenizer):
    """Closing every sublayer gate of a block is the same computation as closing the block's gate."""
    model = build_tiny_model(arch)
    if get_adapter(model).interpolates("block"):
        pytest.skip(
            f"{arch}'s block gate interpolates the whole post-norm layer (exact removal at 0), its sublayer gates "
            "sit before each add-and-norm (a proxy): they are different computations by design"
        )
    batch = batch_of(tokenizer, TEXTS[:2])
    target = 2  # a Mamba-only block in zamba2; a block with several sublayers in most others
    with torch.no_grad(), CouplingGates(model) as gates:
        alpha = torch.ones(gates.num_gates)
        alpha[target] = 0.0
        gates.alpha = alpha
        by_block = model_output(model, batch)
    with torch.no_grad(), CouplingGates(model, granularity="sublayer") as gates:
        alpha = torch.tensor([0.0 if u.block == target else 1.0 for u in gates.units])
        gates.alpha = alpha
        by_sublayer = model_output(model, batch)
        gates.alpha = torch.ones(gates.num_gates)
        untouched = model_output(model, batch)
    torch.testing.assert_close(by_sublayer, by_block, atol=1e-6, rtol=1e-6)
    assert not torch.allclose(untouched, by_block), "closing a gate must change the output"


def test_sublayer_fisher_and_ranking_run_end_to_end(arch, tokenizer):
    model = build_tiny_model(arch)
    pruner = Pruner(model, tokenizer)
    units = pruner.units("sublayer")
    # a Fisher needs a sample per gate: packing cuts the twelve texts into enough 24-token windows
    samples = max(FAST["num_calibration_samples"], len(units))
    config = BlockRemovalConfig(
        num_blocks_to_remove=2,
        granularity="sublayer",
        **{**FAST, "num_calibration_samples": samples, "pack_samples": samples > len(TEXTS)},
    )
    fisher = pruner.estimate(TEXTS, config)
    assert fisher.num_gates == len(units) and fisher.metadata["granularity"] == "sublayer"
    assert np.all(np.isfinite(fisher.hessian)) and np.abs(fisher.gradients).max() > 0
    ranking = pruner.solve(fisher, config)
    assert ranking.granularity == "sublayer" and ranking.proven
    assert ranking.kinds == tuple(u.kind for u in units)
    kinds = [u.kind for u in units]
    for state in ranking:
        assert kinds.count("attention") == 0 or any(
            kinds[i] == "attention" for i in range(len(units)) if i not in state.removed_blocks
        )


def test_nemotron_h_sublayer_removal_is_block_removal(tokenizer, tmp_path):
    model = build_tiny_model("nemotron_h")
    types_before = list(model.config.layers_block_type)
    pruner = Pruner(model, tokenizer)
    assert pruner.units("sublayer") == pruner.units("block")  # one mixer per block
    config = BlockRemovalConfig(
        num_blocks_to_remove=2, granularity="sublayer", candidate_kinds=["mamba", "mlp"], **FAST
    )
    result = pruner.prune(config, TEXTS)
    kinds = [b.kind for b in pruner.original_blocks]
    assert all(kinds[i] in ("mamba", "mlp") for i in result.removed_blocks)
    pruner.save_pretrained(tmp_path / "out")
    reloaded, info = AutoModelForCausalLM.from_pretrained(tmp_path / "out", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    assert reloaded.config.layers_block_type == [types_before[i] for i in result.kept_blocks]


def test_sublayer_pruning_of_a_dense_decoder_is_refused_before_calibration(tokenizer):
    pruner = Pruner(build_tiny_model("llama"), tokenizer)
    config = BlockRemovalConfig(num_blocks_to_remove=2, granularity="sublayer", **FAST)
    with pytest.raises(
        ConfigurationError, match="no standard checkpoint for a layer with its attention or MLP"
    ):
        pruner.prune(config, TEXTS)
    assert pruner.fisher is None, "the refusal must come before calibration"
    # Scoring and ranking still work; applying a state that splits a block is refused, one of whole blocks applies.
    fisher = pruner.estimate(TEXTS, config)
    ranking = pruner.solve(fisher, config)
    units = pruner.units("sublayer")
    split = next(s for s in ranking if len({units[i].block for i in s.removed_blocks}) == 2)
    with pytest.raises(SurgeryError, match="removes only part of blocks"):
        pruner.apply(split)
    assert pruner.model.config.num_hidden_layers == 6
    whole = BlockRemovalConfig(num_blocks_to_remove=2, granularity="sublayer", forced_blocks=[2, 3], **FAST)
    result = pruner.apply(pruner.solve(fisher, whole)[0])
    assert result.removed_blocks == (1,) and pruner.model.config.num_hidden_layers == 5


def _brute_force_ground_state(energy, feasible):
    best = min(feasible, key=lambda s: (float(np.array(s) @ energy @ np.array(s)), s))
    return tuple(i for i, x in enumerate(best) if x)


def test_candidate_kinds_and_per_kind_limits_restrict_one_estimate(tokenizer):
    """One Fisher, several kind restrictions; each ground state equals brute force over the feasible set."""
    pruner = Pruner(build_tiny_model("nemotron_h"), tokenizer)
    fisher = pruner.estimate(TEXTS, BlockRemovalConfig(**FAST))
    kinds = [b.kind for b in pruner.original_blocks]  # mamba, moe, attention, mamba, mlp, attention
    energy = fisher.energy_matrix()
    cases = [
        (
            dict(candidate_kinds=["mamba", "attention"]),
            lambda s: all(kinds[i] in ("mamba", "attention") for i in s),
        ),
        (dict(max_removed_per_kind={"mamba": 1}), lambda s: sum(kinds[i] == "mamba" for i in s) <= 1),
        (dict(min_removed_per_kind={"attention": 1}), lambda s: sum(kinds[i] == "attention" for i in s) >= 1),
    ]
    for options, allowed in cases:
        config = BlockRemovalConfig(num_blocks_to_remove=2, **options, **FAST)
        ranking = rank_from_fisher(fisher, config)
        feasible = [
            tuple(int(i in chosen) for i in range(6))
            for chosen in itertools.combinations(range(6), 2)
            if allowed(chosen)
            and sum(kinds[i] == "attention" for i in chosen) < 2
            and kinds[min(set(range(6)) - set(chosen))] in ("mamba", "attention")  # the cache's layer 0
        ]
        assert all(allowed(s.removed_blocks) for s in ranking)
        first = ranking[0].removed_blocks[0]
        assert f"{first} ({kinds[first]})" in ranking.to_markdown()
        assert len(ranking) == len(feasible)
        assert ranking[0].removed_blocks == _brute_force_ground_state(energy, feasible), options
    # Both Mamba blocks gone would leave the MoE block first, with no cache for transformers to read.
    with pytest.raises(ConfigurationError, match="the first kept block is attention or mamba"):
        rank_from_fisher(
            fisher, BlockRemovalConfig(num_blocks_to_remove=2, candidate_kinds=["mamba"], **FAST)
        )


@pytest.mark.parametrize(
    "model_type, options, fragment",
    [
        # bamba has two attention blocks: removing both breaks cached generation
        (
            "bamba",
            dict(num_blocks_to_remove=2, candidate_kinds=["attention"]),
            "At least one attention block always stays",
        ),
        ("bamba", dict(num_blocks_to_remove=2, forced_blocks=[1, 4]), "at most 1"),
        ("nemotron_h", dict(num_blocks_to_remove=1, candidate_kinds=["conv"]), "do not occur in this model"),
        ("jamba", dict(num_blocks_to_remove=2), "contiguous run of a multiple of 4"),
        ("jamba", dict(num_blocks_to_remove=4), "Set `contiguous=True`"),
        ("zamba2", dict(num_blocks_to_remove=1, forced_blocks=[1]), "not removable here"),
        ("llama", dict(num_blocks_to_remove=6), "at least one must remain"),
        ("bert", dict(num_blocks_to_remove=1, fisher="empirical"), "does not suit a `bert` model"),
    ],
)
def test_removals_that_break_the_model_are_refused_before_calibration(
    model_type, options, fragment, tokenizer
):
    pruner = Pruner(build_tiny_model(model_type), tokenizer)
    with pytest.raises(ConfigurationError) as excinfo:
        pruner.prune(BlockRemovalConfig(**options, **FAST), TEXTS)
    assert fragment in str(excinfo.value)
    assert pruner.fisher is None


@pytest.mark.parametrize(
    "model_type, removed, fragment",
    [
        ("bamba", [1, 4], "every attention block"),
        ("nemotron_h", [2, 5], "every attention block"),
        ("zamba2", [1], "Zamba2 hybrid layers"),
        ("jamba", [1, 2], "one contiguous run of a multiple of 4"),
        ("jamba", [0, 1, 2, 5], "one contiguous run of a multiple of 4"),
    ],
)
def test_surgery_refuses_unstorable_removals_and_leaves_the_model_intact(model_type, removed, fragment):
    model = build_tiny_model(model_type)
    layers = model.config.num_hidden_layers
    with pytest.raises(SurgeryError, match=fragment):
        remove_blocks(model, removed)
    assert model.config.num_hidden_layers == layers == len(get_adapter(model).block_list(model))


def test_jamba_contiguous_request_prunes_a_storable_run(tokenizer):
    pruner = Pruner(build_tiny_model("jamba"), tokenizer)
    result = pruner.prune(BlockRemovalConfig(num_blocks_to_remove=4, contiguous=True, **FAST), TEXTS)
    removed = list(result.removed_blocks)
    assert removed == list(range(removed[0], removed[0] + 4))
    assert pruner.model.config.num_hidden_layers == 4


def test_bert_output_fisher_and_reload(tokenizer, tmp_path):
    from transformers import AutoModel

    pruner = Pruner(build_tiny_model("bert"), tokenizer)
    result = pruner.prune(BlockRemovalConfig(num_blocks_to_remove=2, **FAST), TEXTS)
    assert pruner.fisher.metadata["fisher"] == "output"
    assert np.all(np.diag(pruner.fisher.hessian) > 0)
    pruner.save_pretrained(tmp_path / "bert")
    reloaded, info = AutoModel.from_pretrained(tmp_path / "bert", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    batch = batch_of(tokenizer, TEXTS[:2])
    with torch.no_grad():
        assert torch.equal(model_output(reloaded, batch), model_output(pruner.model, batch))
    card = (tmp_path / "bert" / "README.md").read_text()
    assert "AutoModel.from_pretrained" in card and "pipeline_tag: feature-extraction" in card
    assert len(result.kept_blocks) == 4


def test_output_probe_gradient_masks_padding_and_scales_by_length():
    from optimum_blockprune.estimation.fisher import output_probe_gradient

    hidden = torch.zeros(2, 5, 3)
    mask = torch.tensor([[1, 1, 1, 1, 0], [1, 0, 0, 0, 0]])
    grad = output_probe_gradient(hidden, mask, torch.Generator().manual_seed(0))
    assert torch.all(grad[0, 4] == 0) and torch.all(grad[1, 1:] == 0)
    # E[||grad_s||^2] = hidden_size * n_s / n_s: the same for every sample whatever its length
    many = torch.stack(
        [output_probe_gradient(hidden, mask, torch.Generator().manual_seed(i)) for i in range(4000)]
    )
    energy = many.pow(2).sum(dim=(2, 3)).mean(dim=0)
    torch.testing.assert_close(energy, torch.full((2,), 3.0), atol=0.15, rtol=0)


def _starcoder2():
    """An unregistered decoder with the standard layout, built like the dense tiny models."""
    config = AutoConfig.for_model("starcoder2", **TINY_CONFIGS["llama"])
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(config).eval()


def test_generic_fallback_is_opt_in_and_prunes_a_loadable_model(tokenizer, tmp_path):
    model = _starcoder2()
    with pytest.raises(UnsupportedArchitectureError, match="allow_generic=True"):
        Pruner(model, tokenizer)
    with pytest.warns(BlockPruneWarning, match="guessed adapter"):
        pruner = Pruner(model, tokenizer, allow_generic=True)
    batch = batch_of(tokenizer, TEXTS[:2])
    with torch.no_grad(), CouplingGates(model, pruner.adapter) as gates:
        alpha = torch.ones(6)
        alpha[[1, 3]] = 0.0
        gates.alpha = alpha
        gated = model(**batch).logits
    pruner.apply([1, 3])
    with torch.no_grad():
        torch.testing.assert_close(model(**batch).logits, gated, atol=1e-5, rtol=1e-5)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", BlockPruneWarning)
        pruner.save_pretrained(tmp_path / "out")
    reloaded, info = auto_class_for("llama").from_pretrained(tmp_path / "out", output_loading_info=True)
    assert not info["missing_keys"] and reloaded.config.num_hidden_layers == 4
    prompt = tokenizer(["to be"], return_tensors="pt")
    kwargs = dict(max_new_tokens=6, do_sample=False, pad_token_id=0)
    with torch.no_grad():
        assert torch.equal(
            reloaded.generate(**prompt, **kwargs), model.generate(**prompt, use_cache=False, **kwargs)
        )


def test_generic_fallback_refuses_a_model_it_cannot_read(tokenizer):
    config = AutoConfig.for_model("bloom", vocab_size=64, hidden_size=16, n_layer=2, n_head=2)
    model = AutoModelForCausalLM.from_config(config)
    # bloom's blocks hold `self_attention` and `mlp`, but its attention adds the residual itself; the guess would
    # be wrong, and the names alone cannot tell. What the fallback can check, it does: one block list.
    del model.transformer.h[0].mlp
    with pytest.raises(UnsupportedArchitectureError, match="cannot tell which modules"):
        Pruner(model, tokenizer, allow_generic=True)


def _leading_removals(model_type: str) -> list[tuple[str, list[int]]]:
    """The first block removed, and for every kind the removal that makes its first block the first one left."""
    kinds = [b.kind for b in get_adapter(build_tiny_model(model_type)).blocks(build_tiny_model(model_type))]
    cases = [("first block removed", [0])]
    for kind in dict.fromkeys(kinds):
        first = kinds.index(kind)
        if first > 0:
            cases.append((f"{kind} first", list(range(first))))
    return cases


HYBRID_LEADS = [
    pytest.param(model_type, removed, id=f"{model_type}-{label}")
    for model_type in sorted(adapter.model_type for adapter in HYBRID_DECODERS)
    for label, removed in _leading_removals(model_type)
]


@pytest.mark.parametrize("model_type, removed", HYBRID_LEADS)
def test_hybrid_with_a_new_first_block_generates_with_the_cache_or_is_refused_before_calibration(
    model_type, removed, tokenizer, tmp_path
):
    """Every hybrid, with its first block removed and with each kind made the first one: the surgery and the
    problem agree; a stored model reloads and generates with the cache exactly as without it."""
    model = build_tiny_model(model_type)
    adapter = get_adapter(model)
    kinds = [b.kind for b in adapter.blocks(model)]
    config = BlockRemovalConfig(num_blocks_to_remove=len(removed), forced_blocks=removed, **FAST)
    try:
        remove_blocks(model, removed)
    except SurgeryError as surgery_refusal:
        with pytest.raises(ConfigurationError):
            check_request(adapter, adapter.blocks(model), config, model_config=model.config, applying=True)
        if kinds[len(removed)] in adapter.cacheless_kinds:
            assert "cached generation" in str(surgery_refusal) and str(kinds[len(removed)]) in str(
                surgery_refusal
            )
        return
    check_request(adapter, adapter.blocks(build_tiny_model(model_type)), config, applying=True)
    model.save_pretrained(tmp_path)
    reloaded = auto_class_for(model_type).from_pretrained(tmp_path).eval()
    prompt = tokenizer(["to be, or not"], return_tensors="pt")
    kwargs = dict(max_new_tokens=6, do_sample=False, pad_token_id=0)
    with torch.no_grad():
        cached = reloaded.generate(**prompt, use_cache=True, **kwargs)
        uncached = reloaded.generate(**prompt, use_cache=False, **kwargs)
    assert torch.equal(cached, uncached)


def test_nemotron_h_never_ranks_or_applies_a_cacheless_first_block(tokenizer):
    """The layout of the report (mamba, moe, attention, mlp, mamba, attention without blocks 0 and 4 starts with
    moe): refused before calibration when forced, and absent from every ranking."""
    pruner = Pruner(build_tiny_model("nemotron_h"), tokenizer)
    with pytest.raises(ConfigurationError, match="the first kept block is attention or mamba"):
        pruner.prune(BlockRemovalConfig(num_blocks_to_remove=2, forced_blocks=[0, 4], **FAST), TEXTS)
    assert pruner.fisher is None, "the refusal must come before calibration"
    fisher = pruner.estimate(TEXTS, BlockRemovalConfig(**FAST))
    kinds = [b.kind for b in pruner.original_blocks]
    for m in (1, 2, 3):
        ranking = rank_from_fisher(fisher, BlockRemovalConfig(num_blocks_to_remove=m, **FAST))
        expected = [
            s
            for s in itertools.combinations(range(6), m)
            if kinds[min(set(range(6)) - set(s))] in ("mamba", "attention")
            and any(kinds[i] == "attention" for i in set(range(6)) - set(s))
        ]
        assert sorted(s.removed_blocks for s in ranking) == sorted(expected), m
