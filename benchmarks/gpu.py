"""The Fisher pass at the paper's scale, on random weights with the real models' shapes (no Hub needed).

    bash benchmarks/gpu.sh                    # on a lent GPU: the whole table in under 8 minutes
    python benchmarks/gpu.py --tiny           # the same code on CPU with tiny shapes (what the test runs)

For each shape: build the model from its config with random weights (bf16 on CUDA), run a forward-only pass and
the Fisher pass (one forward + one activation-only backward per batch, every sample its own gate row) over the same
synthetic samples of `--seq-len` tokens, and report tokens/s, the Fisher / forward ratio, peak accelerator memory,
and the wall time extrapolated to the paper's 2048 OpenHermes conversations (`--paper-samples` x
`--paper-tokens` mean tokens; linear in tokens, measured, not assumed). Llama-3.3-70B does not fit one GPU in
bf16: it is built with `--layers-70b` of its 80 blocks, 4-bit NF4 weights (bitsandbytes; CPU: optimum-quanto
int4), and its time is extrapolated per block as well. Then 20 steps of the `DistillationTrainer` on a
Llama-3.2-1B-shaped random student and teacher (tokens/s). Writes JSON as it goes, prints a markdown table.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import tempfile
import time

from _report import recorded_args, relative, write_json

# Shapes from the models' published config.json files (no weights).
SHAPES = {
    "Llama-3.1-8B": dict(
        model_type="llama",
        vocab_size=128256,
        hidden_size=4096,
        intermediate_size=14336,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=8,
        rope_theta=500000.0,
        max_position_embeddings=131072,
    ),
    "Qwen3-14B": dict(
        model_type="qwen3",
        vocab_size=151936,
        hidden_size=5120,
        intermediate_size=17408,
        num_hidden_layers=40,
        num_attention_heads=40,
        num_key_value_heads=8,
        head_dim=128,
        max_position_embeddings=40960,
    ),
    "Llama-3.3-70B": dict(
        model_type="llama",
        vocab_size=128256,
        hidden_size=8192,
        intermediate_size=28672,
        num_hidden_layers=80,
        num_attention_heads=64,
        num_key_value_heads=8,
        rope_theta=500000.0,
        max_position_embeddings=131072,
    ),
    "Llama-3.2-1B": dict(
        model_type="llama",
        vocab_size=128256,
        hidden_size=2048,
        intermediate_size=8192,
        num_hidden_layers=16,
        num_attention_heads=32,
        num_key_value_heads=8,
        tie_word_embeddings=True,
        max_position_embeddings=131072,
    ),
}
TINY = dict(
    vocab_size=512, hidden_size=64, intermediate_size=128, num_attention_heads=4, num_key_value_heads=2
)


def _config(name: str, tiny: bool, layers: int | None = None):
    from transformers import AutoConfig

    shape = dict(SHAPES[name])
    model_type = shape.pop("model_type")
    if tiny:
        shape.update(TINY, max_position_embeddings=4096)
        shape["num_hidden_layers"] = min(shape["num_hidden_layers"], 4)
        if "head_dim" in shape:
            shape["head_dim"] = 16
    full_layers = shape["num_hidden_layers"]
    if layers is not None:
        shape["num_hidden_layers"] = min(layers, full_layers)
    return AutoConfig.for_model(model_type, **shape), full_layers


def _random_model(config, dtype, device, quantization: str | None, scratch: str):
    """Random weights from the config; quantized ones go through a saved checkpoint (quantizers load weights)."""
    import torch
    from transformers import AutoModelForCausalLM

    if quantization is None:
        with torch.device(device):
            return AutoModelForCausalLM.from_config(config, dtype=dtype).eval()
    model = AutoModelForCausalLM.from_config(
        config, dtype=dtype
    )  # on the CPU, then saved and quantized on load
    path = os.path.join(scratch, "random")
    model.save_pretrained(path)
    del model
    gc.collect()
    if quantization == "bnb-nf4":
        from transformers import BitsAndBytesConfig

        quantization_config = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=dtype
        )
    else:  # "quanto-int4", the CPU stand-in
        from transformers import QuantoConfig

        quantization_config = QuantoConfig(weights="int4")
    return AutoModelForCausalLM.from_pretrained(
        path, dtype=dtype, quantization_config=quantization_config, device_map=device
    ).eval()


def _synthetic(num_samples: int, seq_len: int, vocab: int):
    import torch

    from optimum_blockprune.estimation.calibration import CalibrationData

    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(3, vocab, (num_samples, seq_len), generator=generator)
    return CalibrationData(samples=ids.tolist(), source="synthetic token ids")


def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def measure_fisher(name: str, args, scratch: str, layers: int | None = None, quantization: str | None = None):
    """Forward and Fisher tokens/s, peak memory, and the paper-scale extrapolation for one shape."""
    import torch

    from optimum_blockprune.estimation.fisher import estimate_fisher
    from optimum_blockprune.estimation.forward import GatedForward

    config, full_layers = _config(name, args.tiny, layers)
    dtype = torch.bfloat16 if args.device.startswith("cuda") else torch.float32
    start = time.perf_counter()
    model = _random_model(config, dtype, args.device, quantization, scratch)
    build_s = time.perf_counter() - start
    data = _synthetic(args.samples, args.seq_len, config.vocab_size)
    cuda = args.device.startswith("cuda")

    def forward_pass(model):
        with GatedForward(model, data, gates=False, batch_size=args.batch_size) as run:
            for batch in run:
                run.outputs(batch)
        _sync(args.device)

    forward_pass(model)  # warm-up (kernels, allocator)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated() if cuda else 0
    start = time.perf_counter()
    forward_pass(model)
    forward_s = time.perf_counter() - start
    forward_peak = (torch.cuda.max_memory_allocated() - base) / 2**30 if cuda else None
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    fisher = estimate_fisher(
        model,
        data,
        batch_size=args.batch_size,
        gradient_checkpointing=args.gradient_checkpointing,
        show_progress=False,
    )
    _sync(args.device)
    fisher_s = time.perf_counter() - start
    fisher_peak = (torch.cuda.max_memory_allocated() - base) / 2**30 if cuda else None
    weights_gib = (torch.cuda.memory_allocated() / 2**30) if cuda else None
    tokens = data.num_tokens
    blocks_scale = full_layers / config.num_hidden_layers  # 70B: measured on some blocks, scaled per block
    paper_tokens = args.paper_samples * args.paper_tokens
    row = {
        "model": name,
        "blocks_measured": config.num_hidden_layers,
        "blocks": full_layers,
        "quantization": quantization or str(dtype).replace("torch.", ""),
        "samples": data.num_samples,
        "tokens": tokens,
        "build_seconds": build_s,
        "forward_tokens_per_s": tokens / forward_s,
        "fisher_tokens_per_s": tokens / fisher_s,
        "fisher_over_forward": fisher_s / forward_s,
        "weights_gib": weights_gib,
        "forward_peak_extra_gib": forward_peak,
        "fisher_peak_extra_gib": fisher_peak,
        "rows_finite": bool(fisher.gradients.size and (abs(fisher.gradients) < float("inf")).all()),
        "paper_hours": paper_tokens / (tokens / fisher_s) * blocks_scale / 3600,
    }
    del model, fisher
    gc.collect()
    if cuda:
        torch.cuda.empty_cache()
    return row


def measure_distillation(args, scratch: str):
    """20 (`--distill-steps`) steps of the DistillationTrainer on a 1B-shaped random student and teacher."""
    import copy

    import torch

    from optimum_blockprune.distillation import DistillationConfig, DistillationTrainer, PaddingCollator

    config, _ = _config("Llama-3.2-1B", args.tiny)
    dtype = torch.bfloat16 if args.device.startswith("cuda") else torch.float32
    teacher = _random_model(config, dtype, args.device, None, scratch)
    student = copy.deepcopy(teacher)
    del student.model.layers[-4:]  # a pruned student: four blocks fewer
    student.config.num_hidden_layers = len(student.model.layers)
    generator = torch.Generator().manual_seed(0)
    rows = torch.randint(
        3, config.vocab_size, (args.distill_batch * args.distill_steps, args.seq_len), generator=generator
    )
    dataset = [{"input_ids": row.tolist()} for row in rows]
    trainer = DistillationTrainer(
        model=student,
        teacher=teacher,
        args=DistillationConfig(
            output_dir=os.path.join(scratch, "distill"),
            per_device_train_batch_size=args.distill_batch,
            max_steps=args.distill_steps,
            learning_rate=1e-5,
            bf16=args.device.startswith("cuda"),
            save_strategy="no",
            report_to="none",
            disable_tqdm=True,
            use_cpu=not args.device.startswith("cuda"),
        ),
        train_dataset=dataset,
        data_collator=PaddingCollator(0),
    )
    start = time.perf_counter()
    trainer.train()
    _sync(args.device)
    seconds = time.perf_counter() - start
    tokens = args.distill_batch * args.distill_steps * args.seq_len
    return {
        "model": "Llama-3.2-1B (distillation)",
        "steps": args.distill_steps,
        "tokens": tokens,
        "seconds": seconds,
        "tokens_per_s": tokens / seconds,
    }


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tiny", action="store_true", help="tiny shapes (CPU test of this script)")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--models", nargs="*", default=["Llama-3.1-8B", "Qwen3-14B", "Llama-3.3-70B"])
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=2048)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--gradient-checkpointing", action="store_true")
    parser.add_argument("--layers-70b", type=int, default=4, help="blocks of the 70B shape actually built")
    parser.add_argument("--paper-samples", type=int, default=2048)
    parser.add_argument(
        "--paper-tokens", type=int, default=1024, help="mean tokens per OpenHermes conversation"
    )
    parser.add_argument("--distill-steps", type=int, default=20)
    parser.add_argument("--distill-batch", type=int, default=4)
    parser.add_argument("--output", default=os.path.join(os.path.dirname(__file__), "results", "gpu.json"))
    args = parser.parse_args(argv)
    cuda = args.device.startswith("cuda")
    payload = {
        "args": recorded_args(args),
        "machine": platform.platform(),
        "rows": [],
    }
    if cuda:
        import torch

        payload["device"] = torch.cuda.get_device_name()
    with tempfile.TemporaryDirectory() as scratch:
        for name in args.models:
            big = name == "Llama-3.3-70B"
            quantization = ("bnb-nf4" if cuda else "quanto-int4") if big else None
            row = measure_fisher(name, args, scratch, args.layers_70b if big else None, quantization)
            payload["rows"].append(row)
            write_json(args.output, payload)
            print(json.dumps(row), flush=True)
        payload["distillation"] = measure_distillation(args, scratch)
        write_json(args.output, payload)
    print(
        "\n| model | weights | blocks run | forward tok/s | Fisher tok/s | Fisher / forward | peak extra GiB | "
        "2048 samples (h) |\n|---|---|---|---|---|---|---|---|"
    )
    for r in payload["rows"]:
        peak = "–" if r["fisher_peak_extra_gib"] is None else f"{r['fisher_peak_extra_gib']:.1f}"
        print(
            f"| {r['model']} | {r['quantization']} | {r['blocks_measured']}/{r['blocks']} | "
            f"{r['forward_tokens_per_s']:.0f} | {r['fisher_tokens_per_s']:.0f} | {r['fisher_over_forward']:.2f} | "
            f"{peak} | {r['paper_hours']:.2f} |"
        )
    d = payload["distillation"]
    print(f"\nDistillationTrainer, {d['model']}: {d['steps']} steps, {d['tokens_per_s']:.0f} tokens/s")
    print(f"Wrote {relative(args.output)}")


if __name__ == "__main__":
    main()
