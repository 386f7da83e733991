"""Render the sample model cards from the provenance their runs saved, so they cannot drift from the template.

    python model_cards/render.py           # write model_cards/<name>/README.md from <name>/blockprune_config.json
    python model_cards/render.py --check   # exit 1 if a committed card is not what the template renders (CI)

Each sample is the `blockprune_config.json` (and pictures) of a real run, copied from its output directory:
`python examples/prune_smollm2_shakespeare.py --output-dir DIR` (the default method) for the 6-of-30 card (its speed
timed right before and after the surgery, on 2 idle cores),
`python examples/prune_then_distill_smollm2.py --output-dir DIR` for the distilled one.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))


def samples() -> list[str]:
    return sorted(
        os.path.join(HERE, name)
        for name in os.listdir(HERE)
        if os.path.isfile(os.path.join(HERE, name, "blockprune_config.json"))
    )


def render(directory: str) -> str:
    from optimum_blockprune.hub import render_model_card

    with open(os.path.join(directory, "blockprune_config.json"), encoding="utf-8") as handle:
        provenance = json.load(handle)
    return render_model_card(provenance)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--check", action="store_true", help="compare instead of writing")
    args = parser.parse_args(argv)
    stale = []
    for directory in samples():
        card, path = render(directory), os.path.join(directory, "README.md")
        if args.check:
            with open(path, encoding="utf-8") as handle:
                if handle.read() != card:
                    stale.append(path)
        else:
            with open(path, "w", encoding="utf-8") as handle:
                handle.write(card)
            print(f"wrote {os.path.relpath(path)}")
    for path in stale:
        print(f"stale: {os.path.relpath(path)} (run `python model_cards/render.py`)", file=sys.stderr)
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main())
