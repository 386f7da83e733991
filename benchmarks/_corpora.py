"""The benchmarks' two corpora and the picks their selection runs recorded, read one way by every script."""

from __future__ import annotations

import json

CORPORA = ("shakespeare", "python_docs")


def passages(corpus: str, part: str, *, max_length: int) -> list[str]:
    """`part` ('calibration' or 'held_out') of `corpus`, in passages long enough for `max_length` tokens: ten plays
    and six others for Shakespeare, half the Python reference's topics and the other half."""
    from optimum_blockprune import demo

    min_chars = 4 * max_length
    if corpus == "shakespeare":
        plays = demo.CALIBRATION_PLAYS if part == "calibration" else demo.HELD_OUT_PLAYS
        return demo.shakespeare_passages(plays, min_chars=min_chars)
    return demo.python_docs_passages(part, min_chars=min_chars)


def recorded_picks(paths: list[str], num_removed: list[int], methods: list[str] | None = None):
    """Every (path, results, row) of `selection_smollm2.py`'s JSON files at an M in `num_removed` (and, given, of one
    of `methods`)."""
    for path in paths:
        with open(path, encoding="utf-8") as handle:
            results = json.load(handle)
        if not {"corpus", "samples"} <= set(results.get("args", {})) or "rows" not in results:
            # e.g. a healing or MMLU result, whose rows also name methods and M but hold no pick's run settings
            raise SystemExit(f"{path} was not written by selection_smollm2.py; pass the JSON files it wrote.")
        for row in results["rows"]:
            if row["num_removed"] in num_removed and (methods is None or row["method"] in methods):
                yield path, results, row


def picks_by_blocks(recorded) -> dict[int, dict[tuple[int, ...], dict]]:
    """The distinct picks of `recorded_picks` per M (`{M: {blocks: {"held_out_perplexity": ..., "picked_by": [...]}}}`),
    each set of blocks once, naming every method (with its calibration size) that picked it."""
    picks: dict[int, dict[tuple[int, ...], dict]] = {}
    for _, results, row in recorded:
        pick = picks.setdefault(row["num_removed"], {}).setdefault(
            tuple(row["removed_blocks"]), {"held_out_perplexity": row["held_out_perplexity"], "picked_by": []}
        )
        label = f"{row['method']} ({results['args']['samples']} passages)"
        if label not in pick["picked_by"]:  # two runs of one protocol may both hold it
            pick["picked_by"].append(label)
    return picks


def one_setting(picks: list[tuple], keys: tuple[str, ...]) -> tuple:
    """The values of `keys` (settings of `selection_smollm2.py`) that the runs behind `picks` all share; refused,
    naming every combination found, when they differ (picks measured on different data cannot be compared)."""
    found = {tuple(results["args"][key] for key in keys) for _, results, _ in picks}
    if len(found) != 1:
        raise SystemExit(f"The picks must share one ({', '.join(keys)}); got {sorted(found)}.")
    (values,) = found
    return values
