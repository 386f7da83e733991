"""Are the picks' held-out differences real? Every pick at `--num-removed` in selection results, re-measured on
`--eval-samples` held-out passages (8x the 16 the selection benchmark reports) and compared with the default's pick
of the same M on the same passages, with the paired standard error.

    python benchmarks/held_out_paired.py benchmarks/results/guided4_python_docs_32.json \
        benchmarks/results/guided4_m3_m6_python_docs_32.json --num-removed 3 6 9 12 15

The held-out passages are prepared as `selection_smollm2.py` prepares them (same corpus part, seed, length), so the
first 16 are the ones its table reports (this script re-measures them and records both). The difference is the
per-token loss of a pick minus the default's on the same passages (a ratio estimator, tokens as weights), given as
a perplexity ratio with its 95 % interval. The passages are a seeded random draw from all the held-out part's
passages (as the table's 16 are), so the interval speaks for that text (the held-out plays, the reference's other
topics), not for other corpora. Nothing is chosen on these passages; they only judge picks already made.
"""

from __future__ import annotations

import argparse
import math
import os
import time

from _corpora import one_setting, passages, picks_by_blocks, recorded_picks
from _report import recorded_args, write_json

HERE = os.path.dirname(__file__)
#: the method whose pick every other is compared with (the library's default resolves to it for these models)
DEFAULT = "guided"
#: the number of passages `selection_smollm2.py` evaluates on (its `--eval-samples` default)
REPORTED = 16


def default_pick(picks: dict[tuple[int, ...], dict], m: int) -> tuple[int, ...]:
    """The one pick of `DEFAULT` at this M (refused when there is none, or several: one protocol at a time)."""
    found = [s for s, p in picks.items() if any(label.startswith(f"{DEFAULT} (") for label in p["picked_by"])]
    if len(found) != 1:
        raise SystemExit(
            f"M = {m}: {len(found)} picks of {DEFAULT!r} ({found}); pass the results of one calibration protocol, "
            "with one default pick per M."
        )
    return found[0]


def compare(sums, tokens, reference: int, first: int) -> list[dict]:
    """Each row of `sums` (per-passage loss sums) against row `reference` on the same passages: perplexity on the
    first `first` passages and on all, and the paired perplexity ratio with its 95 % interval."""
    from optimum_blockprune.evaluation import paired_difference

    out = []
    for i in range(len(sums)):
        mean, error = paired_difference(sums[i], sums[reference], tokens)
        out.append(
            {
                "perplexity_first": math.exp(sums[i][:first].sum() / tokens[:first].sum()),
                "perplexity_all": math.exp(sums[i].sum() / tokens.sum()),
                "ratio_to_default": math.exp(mean),
                "ratio_interval": [math.exp(mean - 1.96 * error), math.exp(mean + 1.96 * error)],
                "standard_errors": mean / error if error > 0 else 0.0,
            }
        )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("results", nargs="+", help="JSON files written by selection_smollm2.py (one corpus)")
    parser.add_argument(
        "--num-removed", type=int, nargs="+", required=True, help="the M whose picks are compared"
    )
    parser.add_argument("--methods", nargs="*", default=None, help="only these rows' methods (default: all)")
    parser.add_argument("--eval-samples", type=int, default=128, help="held-out passages (the table used 16)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--output", default=None, help="default: results/held_out_paired_<corpus>.json")
    args = parser.parse_args()
    if args.eval_samples < REPORTED:
        parser.error(
            f"--eval-samples {args.eval_samples}: at least the {REPORTED} the selection table reports"
        )

    # the default's pick is what all are compared with
    methods = None if args.methods is None else [DEFAULT, *args.methods]
    recorded = list(recorded_picks(args.results, args.num_removed, methods))
    corpus, max_length, eval_samples = one_setting(recorded, ("corpus", "max_length", "eval_samples"))
    if eval_samples != REPORTED:
        raise SystemExit(
            f"The picks were evaluated on {eval_samples} passages; this script re-measures {REPORTED}."
        )
    picks = picks_by_blocks(recorded)
    defaults = {m: default_pick(picks.get(m, {}), m) for m in args.num_removed}
    args.output = args.output or os.path.join(HERE, "results", f"held_out_paired_{corpus}.json")

    import numpy as np
    import torch

    from optimum_blockprune import demo
    from optimum_blockprune.estimation.calibration import prepare_calibration_data
    from optimum_blockprune.evaluation import removal_losses

    torch.set_num_threads(args.threads)
    pruner = demo.load_smollm2_pruner()
    held_out = prepare_calibration_data(
        passages(corpus, "held_out", max_length=max_length),
        pruner.tokenizer,
        num_samples=args.eval_samples,
        max_length=max_length,
    )
    payload = {
        "args": recorded_args(args, "results"),
        "corpus": corpus,
        "held_out_samples": held_out.num_samples,
        "held_out_tokens": held_out.num_tokens,
        "rows": [],
    }
    print(
        f"| M | pick | picked by | ppl, first {REPORTED} (recorded) | ppl, all {held_out.num_samples} | to default (95 %) |"
    )
    print("|---|---|---|---|---|---|")
    for m in sorted(args.num_removed, reverse=True):
        states = list(picks[m])
        start = time.perf_counter()
        measured = removal_losses(
            pruner.model,
            held_out,
            [(), *states],
            metric="loss",
            adapter=pruner.adapter,
            batch_size=args.batch_size,
            pad_token_id=pruner.pad_token_id,
            reuse_prefix=True,
            show_progress=True,  # a bar on a terminal, log lines with the time left in a log file
            desc=f"M = {m}: {len(states)} picks and the unpruned model on {held_out.num_samples} passages",
        )
        reference = 1 + states.index(defaults[m])
        compared = compare(measured.sums, np.asarray(measured.tokens, dtype=float), reference, REPORTED)
        seconds = time.perf_counter() - start
        for state, row in zip([(), *states], compared):
            if not state and payload["rows"]:
                continue  # the unpruned model once (each M measures it again: the passes resume from it)
            pick = picks[m].get(state, {"picked_by": ["unpruned"], "held_out_perplexity": None})
            recorded_ppl = pick["held_out_perplexity"]
            if not state:  # beside one M's default it would read as every M's
                row = {key: row[key] for key in ("perplexity_first", "perplexity_all")}
            # the first passages are the reported ones: a pick measured differently would not reproduce its number
            reproduced = recorded_ppl is None or abs(math.log(row["perplexity_first"] / recorded_ppl)) < 1e-3
            payload["rows"].append(
                {
                    "num_removed": m if state else 0,
                    "removed_blocks": list(state),
                    "picked_by": pick["picked_by"],
                    "recorded_perplexity": recorded_ppl,
                    **row,
                    "reproduces_recorded": reproduced,
                    "seconds": seconds,
                }
            )
            versus = "–"
            if state:
                low, high = row["ratio_interval"]
                versus = f"{row['ratio_to_default']:.3f} ({low:.3f}-{high:.3f})"
            recorded_text = f" ({recorded_ppl:.1f}{'' if reproduced else ' DIFFERS'})" if recorded_ppl else ""
            print(
                f"| {m if state else 0} | {list(state)} | {', '.join(pick['picked_by'])} | "
                f"{row['perplexity_first']:.1f}{recorded_text} | {row['perplexity_all']:.1f} | "
                f"{versus} |",
                flush=True,
            )
        write_json(args.output, payload)


if __name__ == "__main__":
    main()
