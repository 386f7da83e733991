"""Cost of the batched Fisher pass against a forward-only pass and the paper's batch-size-1 loop.

    python benchmarks/fisher.py                       # random 12-layer llama (hidden 256, vocab 32000)
    python benchmarks/fisher.py --model smollm2       # the real SmolLM2-135M-Instruct from pip
    python benchmarks/fisher.py --scale               # peak memory vs model size; int8 weights; disk offload

All three phases run in the same invocation on the same model and the same calibration batches; each phase runs
in its own process so its peak memory (RSS high-water mark above the loaded model, or CUDA peak) is its own.
Times are the median of `--repeats` runs after one warm-up batch. Prints a table, writes JSON.
Target (issue 2): Fisher pass <= 2.5x forward-only on CPU.

`--scale` (issue 15) runs, for random llamas of each `--hidden-sizes`, the forward and the Fisher pass held in
memory, with frozen int8 weights (optimum-quanto) and with every other block offloaded to disk (accelerate), each
in its own process: tokens/s, the Fisher / forward ratio of the same placement, peak RSS above the loaded model,
and the model's size. Writes results/fisher_scale.json.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import platform
import statistics
import time

from _report import recorded_args, relative, write_json


def _rss_kib(field: str) -> int:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith(field):
                return int(line.split()[1])
    return 0


def _build(args):
    import torch

    from optimum_blockprune import BlockRemovalConfig, prepare_calibration_data

    torch.manual_seed(0)
    if args.model == "smollm2":
        from optimum_blockprune.demo import CALIBRATION_PLAYS, load_smollm2_pruner, shakespeare_passages

        pruner = load_smollm2_pruner()
        model, tokenizer = pruner.model, pruner.tokenizer
        texts = shakespeare_passages(CALIBRATION_PLAYS, min_chars=4 * args.seq_len)
        data = prepare_calibration_data(
            texts,
            tokenizer,
            **BlockRemovalConfig(
                num_calibration_samples=args.samples, max_length=args.seq_len
            ).calibration_options(),
        )
    else:
        from transformers import LlamaConfig, LlamaForCausalLM

        from optimum_blockprune.estimation.calibration import CalibrationData

        config = LlamaConfig(
            vocab_size=32000,
            hidden_size=256,
            intermediate_size=1024,
            num_hidden_layers=12,
            num_attention_heads=4,
            num_key_value_heads=4,
            max_position_embeddings=4096,
        )
        model = LlamaForCausalLM(config).eval()
        generator = torch.Generator().manual_seed(0)
        ids = torch.randint(3, 32000, (args.samples, args.seq_len), generator=generator)
        data = CalibrationData(samples=ids.tolist(), source="random")
    return model.to(args.device), data


def _phase(name, args, queue):
    import torch

    from optimum_blockprune import estimate_fisher

    torch.set_num_threads(args.threads)
    model, data = _build(args)
    cuda = args.device.startswith("cuda")
    batch_size = 1 if name == "bs1_loop" else args.batch_size

    def run_once():
        if name == "forward":
            with torch.no_grad():
                for batch in data.batches(batch_size, 0):
                    batch.pop("labels")
                    model(**{k: v.to(args.device) for k, v in batch.items()}, use_cache=False)
        else:
            estimate_fisher(model, data, batch_size=batch_size, show_progress=False)
        if cuda:
            torch.cuda.synchronize()

    with torch.no_grad():  # warm-up: one batch
        first = next(data.batches(batch_size, 0))
        first.pop("labels")
        model(**{k: v.to(args.device) for k, v in first.items()}, use_cache=False)
    base_rss = _rss_kib("VmRSS")
    if cuda:
        torch.cuda.reset_peak_memory_stats()
        base_cuda = torch.cuda.memory_allocated()
    times = []
    for _ in range(args.repeats if name != "bs1_loop" else max(1, args.repeats // 3)):
        start = time.perf_counter()
        run_once()
        times.append(time.perf_counter() - start)
    peak = (
        (torch.cuda.max_memory_allocated() - base_cuda) / 2**20
        if cuda
        else (_rss_kib("VmHWM") - base_rss) / 1024
    )
    queue.put(
        {
            "phase": name,
            "seconds": statistics.median(times),
            "runs": times,
            "peak_extra_mib": peak,
            "tokens": data.num_tokens,
            "samples": data.num_samples,
        }
    )


def _scale_model(hidden: int, path: str) -> None:
    """A random 12-block llama of width `hidden`, saved (placement and quantizers load from a checkpoint)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=32000,
        hidden_size=hidden,
        intermediate_size=4 * hidden,
        num_hidden_layers=12,
        num_attention_heads=max(4, hidden // 64),
        num_key_value_heads=max(4, hidden // 64),
        max_position_embeddings=4096,
    )
    LlamaForCausalLM(config).save_pretrained(path)


def _scale_phase(path: str, placement: str, pass_name: str, args, queue) -> None:
    import torch
    from transformers import AutoModelForCausalLM, QuantoConfig

    from optimum_blockprune import estimate_fisher
    from optimum_blockprune.estimation.calibration import CalibrationData
    from optimum_blockprune.estimation.forward import GatedForward

    torch.set_num_threads(args.threads)
    before = _rss_kib("VmRSS")
    kwargs = {"dtype": torch.float32}
    if placement == "int8":
        kwargs["quantization_config"] = QuantoConfig(weights="int8")
    elif placement == "offload":
        kwargs["device_map"] = {
            "model.embed_tokens": "cpu",
            "model.rotary_emb": "cpu",
            "model.norm": "cpu",
            "lm_head": "cpu",
        }
        kwargs["device_map"].update({f"model.layers.{i}": "disk" if i % 2 else "cpu" for i in range(12)})
        kwargs["offload_folder"] = os.path.join(path, "offload")
    model = AutoModelForCausalLM.from_pretrained(path, **kwargs).eval()
    loaded = _rss_kib("VmRSS")
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(3, 32000, (args.samples, args.seq_len), generator=generator)
    data = CalibrationData(samples=ids.tolist(), source="random")

    def run_once():
        if pass_name == "forward":
            with GatedForward(model, data, gates=False, batch_size=args.batch_size) as run:
                for batch in run:
                    run.outputs(batch)
        else:
            estimate_fisher(model, data, batch_size=args.batch_size, show_progress=False)

    run_once()  # warm-up
    times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        run_once()
        times.append(time.perf_counter() - start)
    queue.put(
        {
            "seconds": statistics.median(times),
            "tokens_per_s": data.num_tokens / statistics.median(times),
            "weights_mib": sum(_resident_bytes(p) for p in model.parameters()) / 2**20,
            "rss_loaded_mib": (loaded - before) / 1024,
            "peak_rss_mib": _rss_kib("VmHWM") / 1024,
            "parameters": sum(p.numel() for p in model.parameters()),
        }
    )


def _resident_bytes(tensor) -> int:
    """Bytes a parameter really holds in memory: 0 when offloaded (meta); a quantized tensor subclass (quanto,
    torchao) counts its inner tensors (int8 data, scales), not the float dtype it presents."""
    if tensor.device.type == "meta":
        return 0
    flatten = getattr(tensor, "__tensor_flatten__", None)
    if flatten is not None:
        names, _ = flatten()
        return sum(_resident_bytes(getattr(tensor, name)) for name in names)
    return tensor.numel() * tensor.element_size()


def run_scale(args) -> None:
    import tempfile

    context = mp.get_context("spawn")
    rows = []
    output = (
        args.output
        if args.output_given
        else os.path.join(os.path.dirname(__file__), "results", "fisher_scale.json")
    )
    with tempfile.TemporaryDirectory() as scratch:
        for hidden in args.hidden_sizes:
            path = os.path.join(scratch, f"llama-{hidden}")
            process = context.Process(target=_scale_model, args=(hidden, path))
            process.start()
            process.join()
            for placement in ("memory", "int8", "offload"):
                measured = {}
                for pass_name in ("forward", "fisher"):
                    queue = context.Queue()
                    process = context.Process(
                        target=_scale_phase, args=(path, placement, pass_name, args, queue)
                    )
                    process.start()
                    measured[pass_name] = queue.get()
                    process.join()
                rows.append(
                    {
                        "hidden": hidden,
                        "placement": placement,
                        "parameters": measured["fisher"]["parameters"],
                        "forward": measured["forward"],
                        "fisher": measured["fisher"],
                        "fisher_over_forward": measured["fisher"]["seconds"] / measured["forward"]["seconds"],
                    }
                )
                r = rows[-1]
                print(
                    f"hidden {hidden} {placement}: forward {r['forward']['tokens_per_s']:.0f} tok/s, Fisher "
                    f"{r['fisher']['tokens_per_s']:.0f} tok/s ({r['fisher_over_forward']:.2f}x), weights "
                    f"{r['fisher']['weights_mib']:.0f} MiB resident, peak RSS {r['fisher']['peak_rss_mib']:.0f} MiB "
                    f"(forward {r['forward']['peak_rss_mib']:.0f})",
                    flush=True,
                )
                write_json(
                    output,
                    {
                        "args": {**recorded_args(args), "output": relative(output)},
                        "machine": platform.platform(),
                        "rows": rows,
                    },
                )
    print(
        "\n| hidden | parameters | weights | resident weights (MiB) | forward tok/s | Fisher tok/s | Fisher / forward | "
        "peak RSS forward / Fisher (MiB) |\n|---|---|---|---|---|---|---|---|"
    )
    for r in rows:
        print(
            f"| {r['hidden']} | {r['parameters'] / 1e6:.0f}M | {r['placement']} | {r['fisher']['weights_mib']:.0f} | "
            f"{r['forward']['tokens_per_s']:.0f} | {r['fisher']['tokens_per_s']:.0f} | "
            f"{r['fisher_over_forward']:.2f} | {r['forward']['peak_rss_mib']:.0f} / {r['fisher']['peak_rss_mib']:.0f} |"
        )
    print(f"Wrote {relative(output)}")


def main(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", choices=["random-llama", "smollm2"], default="random-llama")
    parser.add_argument("--samples", type=int, default=32)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--output", default=None)
    parser.add_argument("--scale", action="store_true", help="memory vs size, int8 weights, disk offload")
    parser.add_argument("--hidden-sizes", type=int, nargs="+", default=[256, 512])
    args = parser.parse_args(argv)
    args.output_given = args.output is not None
    if args.scale:
        return run_scale(args)
    args.output = args.output or os.path.join(os.path.dirname(__file__), "results", "fisher.json")

    context = mp.get_context("spawn")
    results = {}
    for name in ("forward", "fisher", "bs1_loop"):
        queue = context.Queue()
        process = context.Process(target=_phase, args=(name, args, queue))
        process.start()
        results[name] = queue.get()
        process.join()
    forward = results["forward"]["seconds"]
    rows = [
        ("forward only (no grad)", results["forward"], 1.0),
        ("Fisher pass (batched)", results["fisher"], results["fisher"]["seconds"] / forward),
        ("Fisher, batch-size-1 loop", results["bs1_loop"], results["bs1_loop"]["seconds"] / forward),
    ]
    print(
        f"\nmodel={args.model} samples={args.samples} seq_len={args.seq_len} batch={args.batch_size} "
        f"device={args.device} threads={args.threads}"
    )
    print("| phase | seconds (median) | x forward | peak extra memory (MiB) |\n|---|---|---|---|")
    for label, result, ratio in rows:
        print(f"| {label} | {result['seconds']:.2f} | {ratio:.2f} | {result['peak_extra_mib']:.0f} |")
    speedup = results["bs1_loop"]["seconds"] / results["fisher"]["seconds"]
    print(
        f"\nBatched Fisher vs batch-size-1 loop: {speedup:.2f}x faster. Target: Fisher <= 2.5x forward "
        f"({'met' if results['fisher']['seconds'] / forward <= 2.5 else 'NOT met'})."
    )
    payload = {
        "args": recorded_args(args),
        "machine": platform.platform(),
        "results": results,
        "ratios": {
            "fisher_over_forward": results["fisher"]["seconds"] / forward,
            "bs1_loop_over_forward": results["bs1_loop"]["seconds"] / forward,
            "bs1_loop_over_fisher": speedup,
        },
    }
    write_json(args.output, payload)
    print(f"Wrote {args.output}")


if __name__ == "__main__":
    main()
