"""What every benchmark writes: JSON and markdown atomically (paths relative to the repository), the arguments it
ran with, and method-by-M markdown grids."""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Callable

REPOSITORY = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def relative(path: str) -> str:
    """`path` relative to the repository, so committed results do not record this machine's layout."""
    return os.path.relpath(os.path.abspath(path), REPOSITORY)


def recorded_args(args: argparse.Namespace, *paths: str) -> dict:
    """`args` as the JSON records them: `output` and every argument named in `paths` (a path or a list of paths)
    relative to the repository."""
    recorded = dict(vars(args))
    for name in ("output", *paths):
        value = recorded[name]
        recorded[name] = [relative(p) for p in value] if isinstance(value, list) else relative(value)
    return recorded


def write_text(path: str, text: str) -> None:
    """Write through a temporary file and rename, so a reader never sees half a result and an interrupted run leaves
    the previous file whole."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as handle:
        handle.write(text)
    os.replace(tmp, path)


def write_json(path: str, payload: dict, *, default: Callable | None = None) -> None:
    """`payload` as indented JSON, written like `write_text`; `default` converts what JSON cannot (e.g. numpy
    scalars)."""
    write_text(path, json.dumps(payload, indent=2, default=default))


def grid(
    rows: list[dict],
    first_column: str,
    cell: Callable[[dict], str],
    score: Callable[[dict], float],
    label: Callable[[str], str] = str,
) -> list[str]:
    """A markdown table, one line per `row["method"]` and one column per `row["num_removed"]`; `cell(row)` is the
    text, and the row of lowest `score(row)` in each column is bold."""
    ms = sorted({r["num_removed"] for r in rows})
    methods = list(dict.fromkeys(r["method"] for r in rows))
    by = {(r["method"], r["num_removed"]): r for r in rows}
    best = {m: min(score(r) for r in rows if r["num_removed"] == m) for m in ms}
    lines = [f"| {first_column} | " + " | ".join(f"M = {m}" for m in ms) + " |", "|---|" + "---|" * len(ms)]
    for method in methods:
        cells = []
        for m in ms:
            r = by.get((method, m))
            if r is None:
                cells.append("–")
                continue
            text = cell(r)
            cells.append(f"**{text}**" if score(r) == best[m] else text)
        name = label(method).replace("|", "\\|")  # a literal pipe would split the markdown cell
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines
