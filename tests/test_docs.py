"""The documentation cannot go stale: generated pages match the code, the site builds with warnings as errors, the
README links into it, and every code block that can run offline runs."""

from __future__ import annotations

import copy
import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import TEXTS, build_tokenizer, worker_threads

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs"
PAGES = DOCS / "pages"
sys.path.insert(0, str(DOCS))
import generate  # noqa: E402  (docs/generate.py)

#: A block preceded by this comment is not run; the reason says why (a download, a GPU, your training script).
SKIP = re.compile(r"<!-- snippet: skip \((?P<reason>[^)]+)\) -->\s*$")


def _written_pages() -> list[Path]:
    generated = {PAGES / relative for relative in generate.GENERATED_PAGES}
    return sorted(p for p in PAGES.rglob("*.md") if p not in generated)


def _python_blocks(path: Path) -> list[tuple[int, str, str | None]]:
    """(line, code, skip reason or None) of each ```python block."""
    lines = path.read_text(encoding="utf-8").split("\n")
    blocks, index = [], 0
    while index < len(lines):
        if lines[index].strip() == "```python":
            start = index
            end = next(i for i in range(index + 1, len(lines)) if lines[i].strip() == "```")
            before = next((lines[i] for i in range(start - 1, -1, -1) if lines[i].strip()), "")
            skip = SKIP.search(before)
            blocks.append((start + 1, "\n".join(lines[start + 1 : end]), skip["reason"] if skip else None))
            index = end
        index += 1
    return blocks


SNIPPETS = [
    pytest.param(path, line, code, reason, id=f"{path.relative_to(REPO)}:{line}")
    for path in [REPO / "README.md", *_written_pages()]
    for line, code, reason in _python_blocks(path)
]


def test_generated_pages_are_current():
    assert generate.stale_pages() == [], "run `python docs/generate.py`"


def test_the_api_reference_covers_every_public_name():
    import optimum_blockprune

    page = (PAGES / "reference" / "api.md").read_text()
    for name in optimum_blockprune.__all__:
        assert f"## `{name}`" in page, name


def test_every_config_field_and_cli_command_is_in_the_reference():
    from dataclasses import fields

    from optimum_blockprune import BlockRemovalConfig
    from optimum_blockprune.cli import SUBCOMMANDS

    config_page = (PAGES / "reference" / "config.md").read_text()
    assert all(f"| `{f.name}` |" in config_page for f in fields(BlockRemovalConfig))
    cli_page = (PAGES / "reference" / "cli.md").read_text()
    assert all(f"## `{name}`" in cli_page for name in SUBCOMMANDS)


def test_readme_is_a_front_page_whose_links_resolve_into_the_site():
    readme = (REPO / "README.md").read_text()
    assert len(readme.splitlines()) < 200
    nav = (DOCS / "mkdocs.yml").read_text()
    links = re.findall(r"\]\((docs/pages/[^)#]+)", readme)
    assert len(links) >= 8
    for link in links:
        assert (REPO / link).is_file(), link
        assert link.removeprefix("docs/pages/") in nav, f"{link} is not in the site's nav"


@pytest.mark.skipif(importlib.util.find_spec("mkdocs") is None, reason="the docs extra is not installed")
def test_the_site_builds_with_warnings_as_errors(tmp_path):
    built = subprocess.run(
        [
            sys.executable,
            "-m",
            "mkdocs",
            "build",
            "--strict",
            "-f",
            str(DOCS / "mkdocs.yml"),
            "-d",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )
    assert built.returncode == 0, built.stderr[-3000:]
    assert (tmp_path / "reference" / "api" / "index.html").is_file()


@pytest.fixture(scope="module")
def snippet_namespace():
    """What the runnable snippets assume exists: a small language model (16 blocks, so the pages' M fit), its
    tokenizer, calibration texts, a pruner and a Fisher estimate."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from optimum_blockprune import BlockRemovalConfig, Pruner

    torch.manual_seed(0)
    tokenizer = build_tokenizer()
    model = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=tokenizer.vocab_size,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=16,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=256,  # the sweep's speed timing prompts 128 tokens
        )
    ).eval()
    texts = [
        f"{a} {b}" for a in TEXTS for b in TEXTS[:4]
    ]  # 48 distinct samples: a Fisher of 16 gates has full rank
    pruner = Pruner(model, tokenizer)
    with worker_threads():
        fisher = pruner.estimate(texts, BlockRemovalConfig(max_length=24, show_progress=False))
    return {
        "model": model,
        "tokenizer": tokenizer,
        "texts": texts,
        "pruner": pruner,
        "fisher": fisher,
        "kinds": [b.kind for b in pruner.original_blocks],
    }


@pytest.mark.parametrize("path, line, code, reason", SNIPPETS)
def test_code_blocks_run(path, line, code, reason, snippet_namespace, tmp_path, monkeypatch):
    if reason is not None:
        pytest.skip(reason)
    from optimum_blockprune import BlockRemovalConfig, Pruner

    monkeypatch.chdir(tmp_path)  # a block that saves writes here
    model = copy.deepcopy(
        snippet_namespace["model"]
    )  # a block may prune it: each starts from the unpruned one
    namespace = dict(snippet_namespace, BlockRemovalConfig=BlockRemovalConfig, Pruner=Pruner, model=model)
    namespace["pruner"] = Pruner(model, snippet_namespace["tokenizer"])
    with worker_threads():  # one thread: a small model's many tiny matrix products are slower on more
        exec(compile(code, f"{path}:{line}", "exec"), namespace)


def test_every_block_that_is_not_run_says_why():
    skipped = [p for p in SNIPPETS if p.values[3] is not None]
    assert all(len(p.values[3]) > 5 for p in skipped)
    assert len(SNIPPETS) - len(skipped) >= 4  # the offline ones do run
