"""Print pins for the lowest versions pyproject.toml declares (`name>=X` becomes `name==X`), for `.ci/run`'s
lowest-versions job: the dependencies, plus the extras named on the command line (default: peft).

torch is left out: CI installs the one CPU wheel it has offline (README: torch first), so its bound is transformers'.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import tomllib

LOWER_BOUND = re.compile(r"^([A-Za-z0-9_.\-\[\]]+)\s*>=\s*([^,;\s]+)")


def lowest_pins(extras: list[str]) -> list[str]:
    project = tomllib.loads((Path(__file__).resolve().parents[2] / "pyproject.toml").read_text())["project"]
    requirements = [
        *project["dependencies"],
        *(r for e in extras for r in project["optional-dependencies"][e]),
    ]
    pins = []
    for requirement in requirements:
        match = LOWER_BOUND.match(requirement)
        if match is None:
            raise SystemExit(
                f"no lower bound in {requirement!r}: every dependency declares the version it was tested at"
            )
        name, version = match.groups()
        if name != "torch":
            pins.append(f"{name}=={version}")
    return pins


if __name__ == "__main__":
    print("\n".join(lowest_pins(sys.argv[1:] or ["peft"])))
