"""Cost of the batched Fisher pass against a forward-only pass and the paper's batch-size-1 loop.

    python benchmarks/fisher.py                       # random 12-layer llama (hidden 256, vocab 32000)
    python benchmarks/fisher.py --model smollm2       # the real SmolLM2-135M-Instruct from pip

All three phases run in the same invocation on the same model and the same calibration batches; each phase runs
in its own process so its peak memory (RSS high-water mark above the loaded model, or CUDA peak) is its own.
Times are the median of `--repeats` runs after one warm-up batch. Prints a table, writes JSON.
Target (issue 2): Fisher pass <= 2.5x forward-only on CPU.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import statistics
import time

from _report import relative


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
    parser.add_argument("--output", default=os.path.join(os.path.dirname(__file__), "results", "fisher.json"))
    args = parser.parse_args(argv)

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
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    payload = {
        "args": {**vars(args), "output": relative(args.output)},
        "machine": platform.platform(),
        "results": results,
        "ratios": {
            "fisher_over_forward": results["fisher"]["seconds"] / forward,
            "bs1_loop_over_forward": results["bs1_loop"]["seconds"] / forward,
            "bs1_loop_over_fisher": speedup,
        },
    }
    with open(args.output, "w") as handle:
        json.dump(payload, handle, indent=2)
    print(f"Wrote {args.output}")


if __name__ == "__main__":
    main()
