"""What a user who installed the wheel does first; `.ci/run` runs it from outside the checkout, in a venv that holds
only the wheel and its dependencies.

It checks that the package imports from site-packages (not a checkout), that both command lines answer, and that
`optimum-blockprune prune` prunes a tiny model whose checkpoint plain transformers reloads and generates from with
the KV cache exactly as without it.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path


def run(*command: str) -> str:
    print("$", " ".join(command), flush=True)
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"{command[0]} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    return done.stdout


def main() -> None:
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

    import optimum_blockprune

    location = Path(optimum_blockprune.__file__).resolve()
    assert "site-packages" in location.parts, (
        f"optimum_blockprune was imported from {location}, not the wheel"
    )
    assert optimum_blockprune.__version__ in run("optimum-blockprune", "--version")
    assert "prune" in run("optimum-blockprune", "--help")
    assert "prune" in run("optimum-cli", "blockprune", "--help")

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        torch.manual_seed(0)
        config = LlamaConfig(
            vocab_size=64,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=6,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=64,
            bos_token_id=1,
            eos_token_id=2,
            pad_token_id=0,
        )
        LlamaForCausalLM(config).save_pretrained(tmp / "tiny")
        ids = torch.randint(3, 64, (20, 24), generator=torch.Generator().manual_seed(0))
        (tmp / "calibration.jsonl").write_text(
            "".join(json.dumps({"input_ids": row}) + "\n" for row in ids.tolist())
        )
        common = [
            "--dataset",
            str(tmp / "calibration.jsonl"),
            "--num-blocks-to-remove",
            "2",
            "--no-show-progress",
        ]
        run("optimum-blockprune", "prune", str(tmp / "tiny"), "--output-dir", str(tmp / "pruned"), *common)
        run("optimum-cli", "blockprune", "rank", str(tmp / "tiny"), *common)

        model = AutoModelForCausalLM.from_pretrained(tmp / "pruned").eval()
        assert model.config.num_hidden_layers == 4, model.config.num_hidden_layers
        prompt = torch.tensor([[1, 5, 6, 7, 8]])
        with torch.no_grad():
            cached = model.generate(prompt, max_new_tokens=6, do_sample=False, use_cache=True, pad_token_id=0)
            uncached = model.generate(
                prompt, max_new_tokens=6, do_sample=False, use_cache=False, pad_token_id=0
            )
        assert torch.equal(cached, uncached), (cached, uncached)
    print(
        f"optimum-blockprune {optimum_blockprune.__version__} from the wheel: prune, save, reload, generate OK"
    )


if __name__ == "__main__":
    main()
