"""Shared fixtures: tiny random models for every registered architecture, a char-level tokenizer, text.

Nothing here downloads: models are built from configs, the tokenizer from a vocabulary in this file.
"""

from __future__ import annotations

import contextlib
import os
import string

# The tests never reach the network; make any accidental Hub access fail fast instead of hanging.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402

VOCAB = 128
HIDDEN = 32
LAYERS = 6
_DENSE = dict(
    vocab_size=VOCAB,
    hidden_size=HIDDEN,
    intermediate_size=64,
    num_hidden_layers=LAYERS,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=128,
    bos_token_id=1,
    eos_token_id=2,
    pad_token_id=0,
)

_MAMBA = dict(
    mamba_n_heads=4,
    mamba_d_head=16,
    mamba_d_state=8,
    mamba_n_groups=1,
    mamba_d_conv=4,
    mamba_expand=2,
    mamba_chunk_size=16,
)

# One tiny config per registered model_type. A registered architecture missing here fails
# `test_every_registered_architecture_has_a_tiny_model`.
TINY_CONFIGS: dict[str, dict] = {
    "llama": _DENSE,
    "mistral": {**_DENSE, "sliding_window": 8},
    "qwen2": _DENSE,
    "qwen3": {**_DENSE, "head_dim": 8},
    "phi3": _DENSE,
    # Small sliding windows make a wrongly sliced `layer_types` change the logits.
    "gemma2": {**_DENSE, "head_dim": 8, "sliding_window": 4},
    "gemma3_text": {**_DENSE, "head_dim": 8, "sliding_window": 4, "sliding_window_pattern": 2},
    "gpt2": dict(
        vocab_size=VOCAB,
        n_embd=HIDDEN,
        n_layer=LAYERS,
        n_head=4,
        n_positions=128,
        bos_token_id=1,
        eos_token_id=2,
    ),
    "gpt_neox": dict(
        vocab_size=VOCAB,
        hidden_size=HIDDEN,
        intermediate_size=64,
        num_hidden_layers=LAYERS,
        num_attention_heads=4,
        max_position_embeddings=128,
        bos_token_id=1,
        eos_token_id=2,
        use_parallel_residual=True,
    ),
    "opt": dict(
        vocab_size=VOCAB,
        hidden_size=HIDDEN,
        ffn_dim=64,
        num_hidden_layers=LAYERS,
        num_attention_heads=4,
        word_embed_proj_dim=HIDDEN,
        max_position_embeddings=128,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    ),
    "mixtral": {**_DENSE, "num_local_experts": 4, "num_experts_per_tok": 2},
    "olmoe": {**_DENSE, "num_experts": 4, "num_experts_per_tok": 2},
    "gpt_oss": {
        **_DENSE,
        "head_dim": 8,
        "num_local_experts": 4,
        "num_experts_per_tok": 2,
        "sliding_window": 4,
    },
    # Layers 0, 2, 4 dense (mlp_only_layers and the step), 1, 3, 5 MoE: removing 1 and 3 breaks the pattern.
    "qwen2_moe": {
        **_DENSE,
        "num_experts": 4,
        "num_experts_per_tok": 2,
        "moe_intermediate_size": 32,
        "shared_expert_intermediate_size": 32,
        "decoder_sparse_step": 2,
        "mlp_only_layers": [0],
    },
    "qwen3_moe": {
        **_DENSE,
        "head_dim": 8,
        "num_experts": 4,
        "num_experts_per_tok": 2,
        "moe_intermediate_size": 32,
        "decoder_sparse_step": 2,
        "mlp_only_layers": [0],
    },
    "deepseek_v3": {
        **_DENSE,
        "num_key_value_heads": 4,
        "n_routed_experts": 4,
        "num_experts_per_tok": 2,
        "moe_intermediate_size": 32,
        "n_shared_experts": 1,
        "first_k_dense_replace": 2,
        "kv_lora_rank": 16,
        "q_lora_rank": 16,
        "qk_rope_head_dim": 8,
        "qk_nope_head_dim": 8,
        "v_head_dim": 8,
        "n_group": 1,
        "topk_group": 1,
        "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0},
    },
    "falcon": dict(
        vocab_size=VOCAB,
        hidden_size=HIDDEN,
        num_hidden_layers=LAYERS,
        num_attention_heads=4,
        num_kv_heads=2,
        new_decoder_architecture=True,
        bos_token_id=1,
        eos_token_id=2,
    ),
    # -- hybrids: Mamba-2 layers run on transformers' reference PyTorch kernels on CPU ---------------------
    # blocks: mamba, moe, attention, mamba, mlp, attention (the older kind names, normalised by the config)
    "nemotron_h": {
        **_DENSE,
        "head_dim": 8,
        "layers_block_type": ["mamba", "moe", "attention", "mamba", "mlp", "attention"],
        "n_routed_experts": 4,
        "num_experts_per_tok": 2,
        "moe_intermediate_size": 32,
        "moe_shared_expert_intermediate_size": 32,
        "n_group": 1,
        "topk_group": 1,
        "ssm_state_size": 8,
        "mamba_num_heads": 4,
        "mamba_head_dim": 16,
        "n_groups": 1,
        "conv_kernel": 4,
        "expand": 2,
        "chunk_size": 16,
    },
    "granitemoehybrid": {
        **_DENSE,
        **_MAMBA,
        "layer_types": ["mamba", "attention", "mamba", "mamba", "attention", "mamba"],
        "num_local_experts": 4,
        "num_experts_per_tok": 2,
        "shared_intermediate_size": 32,
    },
    "bamba": {**_DENSE, **_MAMBA, "attn_layer_indices": [1, 4]},
    "falcon_h1": {**_DENSE, **_MAMBA, "head_dim": 8, "mamba_d_ssm": 64},
    "qwen3_next": {
        **_DENSE,
        "head_dim": 8,
        "layer_types": ["linear_attention", "full_attention"] * 3,
        "num_experts": 4,
        "num_experts_per_tok": 2,
        "moe_intermediate_size": 32,
        "shared_expert_intermediate_size": 32,
        "decoder_sparse_step": 2,
        "mlp_only_layers": [0],
        "linear_num_value_heads": 4,
        "linear_num_key_heads": 2,
        "linear_key_head_dim": 8,
        "linear_value_head_dim": 8,
        "linear_conv_kernel_dim": 4,
    },
    "lfm2": {**_DENSE, "layer_types": ["conv", "full_attention", "conv", "conv", "full_attention", "conv"]},
    "zamba2": {
        **_DENSE,
        **_MAMBA,
        "layers_block_type": ["mamba", "hybrid", "mamba", "mamba", "hybrid", "mamba"],
    },
    # 8 layers: attention at 1 and 5 (period 4), MoE at odd layers (period 2); lcm 4.
    "jamba": {
        **_DENSE,
        "num_hidden_layers": 8,
        "attn_layer_period": 4,
        "attn_layer_offset": 1,
        "expert_layer_period": 2,
        "expert_layer_offset": 1,
        "num_experts": 4,
        "use_mamba_kernels": False,  # CUDA-only kernels; older transformers refuse the CPU path without this
        "num_experts_per_tok": 2,
        "mamba_d_state": 8,
        "mamba_d_conv": 4,
        "mamba_expand": 2,
        "mamba_dt_rank": 4,
    },
    # -- encoders ------------------------------------------------------------------------------------------
    "bert": dict(
        vocab_size=VOCAB,
        hidden_size=HIDDEN,
        intermediate_size=64,
        num_hidden_layers=LAYERS,
        num_attention_heads=4,
        max_position_embeddings=128,
        pad_token_id=0,
    ),
}

# Blocks the surgery matrix removes (default `REMOVED`): removals each architecture can store.
REMOVED = [1, 3]
TINY_REMOVALS: dict[str, list[int]] = {
    "zamba2": [2, 3],  # Mamba layers only; 1 and 4 are hybrid
    "jamba": [2, 3, 4, 5],  # one contiguous run of lcm(4, 2) = 4 layers
}


def removal_for(model_type: str) -> list[int]:
    return TINY_REMOVALS.get(model_type, REMOVED)


TEXTS = [
    "the quick brown fox jumps over the lazy dog.",
    "a stitch in time saves nine, they say.",
    "all that glitters is not gold.",
    "to be, or not to be, that is the question.",
    "brevity is the soul of wit.",
    "the course of true love never did run smooth.",
    "we know what we are, but know not what we may be.",
    "some are born great, some achieve greatness.",
    "love all, trust a few, do wrong to none.",
    "the fool doth think he is wise, but the wise man knows himself to be a fool.",
    "it is a wise father that knows his own child.",
    "better three hours too soon than a minute too late.",
]

# Trainer settings shared by the distillation and callback tests: tiny runs on the CPU, nothing reported.
TINY_TRAINING = dict(
    per_device_train_batch_size=4,
    learning_rate=3e-3,
    report_to="none",
    use_cpu=True,
    disable_tqdm=True,
    save_strategy="no",
    logging_steps=1,
    seed=0,
)

CHAT_TEMPLATE = (
    "{% for message in messages %}<1>{{ message['role'] }}: {{ message['content'] }}<2>{% endfor %}"
)


def auto_class_for(model_type: str):
    import transformers

    from optimum_blockprune import get_adapter

    return getattr(transformers, get_adapter(_config(model_type)).task_info.auto_class)


def _config(model_type: str, **overrides):
    from transformers import AutoConfig

    return AutoConfig.for_model(model_type, **{**TINY_CONFIGS[model_type], **overrides})


def build_tiny_model(model_type: str, seed: int = 0, dtype=torch.float32, **overrides):
    torch.manual_seed(seed)
    model = auto_class_for(model_type).from_config(_config(model_type, **overrides)).to(dtype)
    return model.eval()


#: The thread count every subprocess worker runs with (`OMP_NUM_THREADS`): a bit-identity test compares a worker's
#: numbers against in-process ones computed with the same count (`worker_threads()`), since float sums change
#: with how a reduction is split across threads.
WORKER_THREADS = 1


@contextlib.contextmanager
def worker_threads():
    """Inside, torch computes with the workers' thread count (then the previous count is restored)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(WORKER_THREADS)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def model_output(model, batch) -> torch.Tensor:
    """Logits of a language model, final hidden states of an encoder."""
    output = model(**batch)
    logits = getattr(output, "logits", None)
    return logits if logits is not None else output.last_hidden_state


def build_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {f"<{i}>": i for i in range(4)}
    for char in string.ascii_lowercase + string.digits + " .,;:!?'-":
        vocab[char] = len(vocab)
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<3>"))
    backend.pre_tokenizer = pre_tokenizers.Split("", "isolated")
    backend.post_processor = processors.TemplateProcessing(single="<1> $A", special_tokens=[("<1>", 1)])
    backend.decoder = decoders.Fuse()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token="<1>", eos_token="<2>", pad_token="<0>", unk_token="<3>"
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


@pytest.fixture(scope="session")
def tokenizer():
    return build_tokenizer()


@pytest.fixture(scope="session")
def texts():
    return list(TEXTS)


@pytest.fixture
def llama(tokenizer):
    return build_tiny_model("llama")


def batch_of(tokenizer, texts, max_length=24):
    return tokenizer(texts, return_tensors="pt", padding=True, truncation=True, max_length=max_length)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A saved tiny llama + tokenizer, as a user's local checkpoint would look."""
    path = tmp_path_factory.mktemp("tiny-llama")
    build_tiny_model("llama").save_pretrained(path)
    build_tokenizer().save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def calibration_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "calibration.jsonl"
    import json

    path.write_text("\n".join(json.dumps({"text": t}) for t in TEXTS))
    return path
