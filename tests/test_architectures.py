"""Surgery invariants for every registered architecture (the matrix is driven by the registry)."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from conftest import TINY_CONFIGS, auto_class_for, batch_of, build_tiny_model, model_output, removal_for

from optimum_blockprune import CouplingGates, get_adapter, remove_blocks, supported_model_types
from optimum_blockprune.errors import SurgeryError, UnsupportedArchitectureError

ARCHITECTURES = supported_model_types()


def test_every_registered_architecture_has_a_tiny_model():
    missing = sorted(set(ARCHITECTURES) - set(TINY_CONFIGS))
    assert not missing, f"registered architectures without a tiny-model test config: {missing}"


def _layer_indices(model):
    adapter = get_adapter(model)
    found = []
    for position, block in enumerate(adapter.block_list(model)):
        for module in block.modules():
            value = module.__dict__.get("layer_idx")
            if isinstance(value, int):
                found.append((position, value))
    return found


@pytest.fixture(params=ARCHITECTURES)
def arch(request):
    return request.param


def test_removing_nothing_is_identity(arch, tokenizer, texts):
    model = build_tiny_model(arch)
    num_layers = model.config.num_hidden_layers
    batch = batch_of(tokenizer, texts[:3])
    with torch.no_grad():
        before = model_output(model, batch)
    assert remove_blocks(model, []) == list(range(num_layers))
    with torch.no_grad():
        after = model_output(model, batch)
    assert torch.equal(before, after)
    assert model.config.num_hidden_layers == num_layers


def test_removal_keeps_config_and_cache_indices_consistent(arch):
    model = build_tiny_model(arch)
    adapter = get_adapter(model)
    config = adapter.text_config(model)
    num_layers = config.num_hidden_layers
    kinds_before = [b.kind for b in adapter.blocks(model)]
    per_layer_before = {name: list(getattr(config, name)) for name in adapter.per_layer_config_fields}
    removed = removal_for(arch)
    kept = remove_blocks(model, removed)
    assert kept == [i for i in range(num_layers) if i not in removed]
    assert len(adapter.block_list(model)) == len(kept)
    assert config.num_hidden_layers == len(kept)
    for name, values in per_layer_before.items():
        assert list(getattr(config, name)) == [values[i] for i in kept], name
    assert [b.kind for b in adapter.blocks(model)] == [kinds_before[i] for i in kept]
    indices = _layer_indices(model)
    assert indices, "every architecture here has at least one module with a cache `layer_idx`"
    assert all(position == value for position, value in indices)
    config.validate()


def test_pruned_model_equals_gated_original(arch, tokenizer, texts):
    """Surgery and the gates agree: alpha = 0 on a block is exactly that block removed."""
    model = build_tiny_model(arch)
    assert get_adapter(model).exact_gates("block"), (
        "every architecture's block gate at 0 is the block removed"
    )
    removed = removal_for(arch)
    batch = batch_of(tokenizer, texts[:3])
    with torch.no_grad(), CouplingGates(model) as gates:
        alpha = torch.ones(gates.num_gates)
        alpha[removed] = 0.0
        gates.alpha = alpha
        gated = model_output(model, batch)
    remove_blocks(model, removed)
    with torch.no_grad():
        pruned = model_output(model, batch)
    torch.testing.assert_close(pruned, gated, atol=1e-5, rtol=1e-5)


def test_save_reload_and_cached_generation(arch, tokenizer, texts, tmp_path):
    model = build_tiny_model(arch)
    removed = removal_for(arch)
    remove_blocks(model, removed)
    model.save_pretrained(tmp_path)
    reloaded, info = auto_class_for(arch).from_pretrained(tmp_path, output_loading_info=True)
    reloaded.eval()
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    assert reloaded.config.num_hidden_layers == model.config.num_hidden_layers
    batch = batch_of(tokenizer, texts[:2])
    with torch.no_grad():
        assert torch.equal(model_output(reloaded, batch), model_output(model, batch))
    if get_adapter(model).task != "causal-lm":
        return
    prompt = tokenizer(["to be, or not"], return_tensors="pt")
    kwargs = dict(max_new_tokens=8, do_sample=False, pad_token_id=0)
    with torch.no_grad():
        cached = model.generate(**prompt, use_cache=True, **kwargs)
        uncached = model.generate(**prompt, use_cache=False, **kwargs)
        reloaded_cached = reloaded.generate(**prompt, use_cache=True, **kwargs)
    assert torch.equal(cached, uncached)
    assert torch.equal(cached, reloaded_cached)


def test_invalid_removals_are_refused_and_leave_the_model_intact(llama):
    reference = copy.deepcopy(llama.state_dict())
    with pytest.raises(SurgeryError, match="indices 0..5"):
        remove_blocks(llama, [6])
    with pytest.raises(SurgeryError, match="at least one must remain"):
        remove_blocks(llama, range(6))
    assert llama.config.num_hidden_layers == 6
    assert all(torch.equal(v, llama.state_dict()[k]) for k, v in reference.items())


def test_unsupported_architecture_names_model_type_and_supported_ones():
    from transformers import AutoConfig

    config = AutoConfig.for_model("bloom", vocab_size=64, hidden_size=16, n_layer=2, n_head=2)
    with pytest.raises(UnsupportedArchitectureError) as excinfo:
        get_adapter(config)
    message = str(excinfo.value)
    assert "'bloom'" in message and "llama" in message and "register_architecture" in message


def test_register_refuses_duplicates():
    from optimum_blockprune import ArchitectureAdapter, register_architecture

    with pytest.raises(ValueError, match="already registered"):
        register_architecture(ArchitectureAdapter("llama"))


@pytest.mark.parametrize(
    "model_type, expected",
    [
        # dense layers were 0, 2, 4 (mlp_only_layers=[0] plus every odd step); kept 0, 2, 4, 5 -> dense 0, 1, 2
        ("qwen2_moe", {"mlp_only_layers": [0, 1, 2], "decoder_sparse_step": 1}),
        ("qwen3_moe", {"mlp_only_layers": [0, 1, 2], "decoder_sparse_step": 1}),
        # the first two layers were dense; layer 1 is removed, so one dense layer leads
        ("deepseek_v3", {"first_k_dense_replace": 1, "num_nextn_predict_layers": 0}),
    ],
)
def test_layer_patterns_are_rewritten_after_removal(model_type, expected):
    model = build_tiny_model(model_type)
    remove_blocks(model, removal_for(model_type))
    config = model.config
    # DeepseekV3Config has `num_nextn_predict_layers` from transformers 5.14 on; before, no MTP layer: 0
    assert {name: getattr(config, name, 0) for name in expected} == expected
    kinds = [
        "moe" if hasattr(block.mlp, "experts") else "dense" for block in get_adapter(model).block_list(model)
    ]
    dense_prefix = model_type == "deepseek_v3"
    expected_kinds = ["dense", "moe", "moe", "moe"] if dense_prefix else ["dense", "dense", "dense", "moe"]
    assert kinds == expected_kinds


def test_fisher_and_ranking_run_end_to_end(arch, tokenizer, texts):
    from optimum_blockprune import BlockRemovalConfig, Pruner

    model = build_tiny_model(arch)
    num_layers = model.config.num_hidden_layers
    removed = removal_for(arch)
    pruner = Pruner(model, tokenizer)
    config = BlockRemovalConfig(
        num_blocks_to_remove=len(removed),
        contiguous=arch == "jamba",
        num_calibration_samples=num_layers,  # a Fisher needs at least one sample per gate
        max_length=24,
        batch_size=2,
        show_progress=False,
    )
    fisher = pruner.estimate(texts, config)  # the paper's energy: every gate must receive gradients
    assert fisher.gradients.shape == (num_layers, num_layers) and np.all(np.isfinite(fisher.hessian))
    assert np.abs(fisher.gradients).max() > 0, "every architecture's gates must receive gradients"
    result = pruner.prune(config, texts)  # the default choice: measured removals through the gates
    language_model = get_adapter(model).task == "causal-lm"
    assert pruner.ranking.method == ("guided" if language_model else "cbo") == pruner.config.method
    assert pruner.ranking.stats["measured_removals"] > num_layers
    assert language_model or pruner.ranking.proven  # cbo's ranking carries the solver's certificate
    assert result.removed_blocks == pruner.ranking[0].removed_blocks
    assert pruner.model.config.num_hidden_layers == num_layers - len(removed)
    kinds = [b.kind for b in pruner.original_blocks]
    assert "attention" not in kinds or any(kinds[i] == "attention" for i in result.kept_blocks)
    unremovable = get_adapter(model).unremovable_kinds
    assert not any(kinds[i] in unremovable for i in result.removed_blocks)


def test_block_kinds_and_active_parameters():
    dense = get_adapter(build_tiny_model("llama")).blocks(build_tiny_model("llama"))
    assert all(b.kind == "decoder" and b.num_active_parameters == b.num_parameters for b in dense)
    model = build_tiny_model("mixtral")  # 4 experts, top-2
    for info, block in zip(get_adapter(model).blocks(model), get_adapter(model).block_list(model)):
        routed = sum(p.numel() for p in block.mlp.experts.parameters())
        assert info.kind == "moe" and info.num_active_parameters == info.num_parameters - routed // 2
    model = build_tiny_model("deepseek_v3")  # first two layers dense
    assert [b.kind for b in get_adapter(model).blocks(model)] == [
        "decoder",
        "decoder",
        "moe",
        "moe",
        "moe",
        "moe",
    ]
