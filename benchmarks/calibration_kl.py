"""Is a pick's held-out quality its calibration KL? Every pick at `--num-removed` in selection results, measured by KL
to the unpruned model and by next-token loss on the benchmark's own calibration passages: on all of them, on the
guided search's subset and on the rest, beside its held-out perplexity.

    python benchmarks/calibration_kl.py benchmarks/results/search_m12_shakespeare.json \
        benchmarks/results/guided3_m12_shakespeare_32.json --num-removed 12 --samples 32

The passages are prepared as `selection_smollm2.py` prepares them (same corpus, count, length and config), so the
KL of the pick a method made is the objective it was chosen by (the loss is SLEB's); when a lower calibration KL and
loss do not give a lower held-out perplexity, the calibration set, not the search, decided (arXiv:2604.24938). Picks
of files that ran on fewer passages are measured on these `--samples` too, so all rows compare on the same data.
"""

from __future__ import annotations

import argparse
import os

from _corpora import one_setting, passages, picks_by_blocks, recorded_picks
from _report import recorded_args, write_json

HERE = os.path.dirname(__file__)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("results", nargs="+", help="JSON files written by selection_smollm2.py (one corpus)")
    parser.add_argument("--num-removed", type=int, required=True)
    parser.add_argument("--samples", type=int, default=32, help="calibration passages to measure on")
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--output", default=None, help="default: results/calibration_kl_<corpus>_m<M>.json")
    args = parser.parse_args()

    recorded = list(recorded_picks(args.results, [args.num_removed]))
    if not recorded:
        raise SystemExit(f"No rows at --num-removed {args.num_removed} in {args.results}.")
    (corpus,) = one_setting(recorded, ("corpus",))
    picks = picks_by_blocks(recorded)[args.num_removed]
    args.output = args.output or os.path.join(
        HERE, "results", f"calibration_kl_{corpus}_m{args.num_removed}.json"
    )

    import numpy as np
    import torch

    from optimum_blockprune import BlockRemovalConfig, demo
    from optimum_blockprune.evaluation import removal_losses
    from optimum_blockprune.methods.guided import GuidedSearch, search_subset
    from optimum_blockprune.selection import prepare_scoring_data

    torch.set_num_threads(args.threads)
    pruner = demo.load_smollm2_pruner()
    texts = passages(corpus, "calibration", max_length=args.max_length)
    config = BlockRemovalConfig(
        num_blocks_to_remove=args.num_removed,
        num_calibration_samples=args.samples,
        max_length=args.max_length,
        batch_size=args.batch_size,
    )
    data = prepare_scoring_data(texts[: args.samples], pruner.tokenizer, config, model=pruner.model)
    states = list(picks)
    measured = {
        metric: removal_losses(
            pruner.model,
            data,
            states,
            metric=metric,
            adapter=pruner.adapter,
            batch_size=args.batch_size,
            pad_token_id=pruner.pad_token_id,
            reuse_prefix=True,
        )
        for metric in ("kl", "loss")
    }
    everything = np.arange(data.num_samples)
    search = search_subset(data.num_samples, GuidedSearch.search_samples, config.seed)
    rest = np.setdiff1d(everything, search)

    parts = {"all": everything, "search_samples": search, "rest": rest}
    rows = [
        {"removed_blocks": list(state), **picks[state]}
        | {
            f"{metric}_{part}": float(m.sums[i][samples].sum() / m.tokens[samples].sum())
            for metric, m in measured.items()
            for part, samples in parts.items()
        }
        for i, state in enumerate(states)
    ]
    rows.sort(key=lambda r: r["kl_all"])
    payload = {
        "args": recorded_args(args, "results"),
        "corpus": corpus,
        "calibration_tokens": data.num_tokens,
        "search_samples": [int(i) for i in search],
        "rows": rows,
    }
    write_json(args.output, payload)
    print(
        f"| pick | picked by | calibration KL, all {data.num_samples} | search {len(search)} | rest {len(rest)} "
        f"| calibration loss, all | search | rest | held-out ppl |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        values = " | ".join(f"{r[f'{m}_{p}']:.4f}" for m in ("kl", "loss") for p in parts)
        print(
            f"| {r['removed_blocks']} | {', '.join(r['picked_by'])} | {values} | {r['held_out_perplexity']:.1f} |"
        )


if __name__ == "__main__":
    main()
