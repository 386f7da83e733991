"""Is the exact solver warm in a new process? `rank --fisher-file` for N = 32 blocks, end to end, in fresh processes.

    python benchmarks/warm_solver.py

Each row is a new Python process running `optimum-blockprune rank --fisher-file F --solver exact` on a 32-block
Fisher file (a random-weight llama, 40 token-id samples), with its own empty numba cache directory: the first process
compiles the branch-and-bound kernel and writes it to disk, the later ones should load it. The baseline in the same
run is a process that only imports the CLI (the floor any command pays). Writes results/warm_solver.json.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time

from _report import write_json

HERE = os.path.dirname(__file__)


def _fisher_file(directory: str, num_blocks: int, samples: int) -> str:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from optimum_blockprune import BlockRemovalConfig, Pruner

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=64,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=num_blocks,
        num_attention_heads=2,
        num_key_value_heads=2,
    )
    pruner = Pruner(LlamaForCausalLM(config).eval(), model_id="random-llama-32")
    data = [{"input_ids": torch.randint(4, 64, (24,)).tolist()} for _ in range(samples)]
    fisher = pruner.estimate(
        data, BlockRemovalConfig(num_calibration_samples=samples, batch_size=8, show_progress=False)
    )
    return fisher.save(os.path.join(directory, "fisher.safetensors"))


def _timed(command: list[str], env: dict) -> float:
    start = time.perf_counter()
    subprocess.run(command, env=env, check=True, capture_output=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--blocks", type=int, default=32)
    parser.add_argument("--remove", type=int, default=8)
    parser.add_argument("--warm-runs", type=int, default=3)
    parser.add_argument("--output", default=os.path.join(HERE, "results", "warm_solver.json"))
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as directory:
        fisher = _fisher_file(directory, args.blocks, samples=40)
        env = {**os.environ, "NUMBA_CACHE_DIR": os.path.join(directory, "numba")}
        rank = [sys.executable, "-m", "optimum_blockprune.cli", "rank", "--fisher-file", fisher]
        rank += ["--energy", "paper", "--solver", "exact", "--num-blocks-to-remove", str(args.remove)]
        rank += ["--no-show-progress"]
        floor = _timed([sys.executable, "-c", "import optimum_blockprune.cli"], env)
        rows = [{"run": "import only (floor)", "seconds": floor}]
        rows.append({"run": "rank, first process (compiles)", "seconds": _timed(rank, env)})
        for i in range(args.warm_runs):
            rows.append({"run": f"rank, process {i + 2} (cached)", "seconds": _timed(rank, env)})

    print(
        f"| `rank --fisher-file`, N = {args.blocks}, M = {args.remove}, exact | seconds | vs import floor |"
    )
    print("|---|---|---|")
    for row in rows:
        row["ratio_to_floor"] = row["seconds"] / floor
        print(f"| {row['run']} | {row['seconds']:.2f} | {row['ratio_to_floor']:.1f}x |")
    write_json(args.output, {"blocks": args.blocks, "remove": args.remove, "rows": rows})


if __name__ == "__main__":
    main()
