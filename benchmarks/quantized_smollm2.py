"""Does a weight-quantized copy rank blocks like the full-precision model? SmolLM2-135M-Instruct, Shakespeare.

    python benchmarks/quantized_smollm2.py                      # optimum-quanto int8 and int4 against float32

The same `--samples` calibration passages go through the float32 model and through copies whose weights are
quantized by transformers' quantizers (frozen, de-quantized on the fly; alpha and activations stay float32). For
each energy (`paper`: the Fisher's xᵀHx; `measured_pairs`: the default, measured single and pair removals) and
each copy: Spearman between the copy's and the float32 energies of `--states` uniformly random states at
`--spearman-m`, and the overlap |A ∩ B| / M of the ground states at each `--remove` M. Writes JSON as it goes.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time

from _report import recorded_args, relative, write_json

HERE = os.path.dirname(__file__)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--samples", type=int, default=32)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--energies", nargs="+", default=["paper", "measured_pairs"])
    parser.add_argument("--weights", nargs="+", default=["int8", "int4"], help="optimum-quanto weight types")
    parser.add_argument("--remove", type=int, nargs="+", default=[3, 6, 9, 12])
    parser.add_argument("--spearman-m", type=int, default=6)
    parser.add_argument("--states", type=int, default=200)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--output", default=os.path.join(HERE, "results", "quantized_smollm2.json"))
    args = parser.parse_args()

    import numpy as np
    import torch
    from scipy.stats import spearmanr
    from transformers import QuantoConfig

    from optimum_blockprune import BlockRemovalConfig, Pruner, demo

    torch.set_num_threads(args.threads)
    full = demo.load_smollm2_pruner()
    texts = demo.shakespeare_passages(demo.CALIBRATION_PLAYS, min_chars=4 * args.max_length)[: args.samples]
    n = full.num_blocks
    rng = np.random.default_rng(0)
    states = [np.sort(rng.choice(n, size=args.spearman_m, replace=False)) for _ in range(args.states)]
    payload = {
        "args": recorded_args(args),
        "machine": platform.platform(),
        "rows": [],
    }

    def energies_and_grounds(pruner, energy):
        """The energy matrix (the ranking's QUBO) and the ground state at each M, with the wall time spent."""
        grounds, matrix, start = {}, None, time.perf_counter()
        for m in args.remove:
            config = BlockRemovalConfig(
                num_blocks_to_remove=m,
                energy=energy,
                selection="ground",
                correction_rounds=0,  # the energy itself; the correction measures states on the model it ranks
                num_calibration_samples=args.samples,
                max_length=args.max_length,
                batch_size=args.batch_size,
                show_progress=False,
            )
            selection = pruner.select(config, texts)
            grounds[m] = list(selection.state.removed_blocks)
            matrix = selection.estimates["energy_matrix"]
        return np.asarray(matrix), grounds, time.perf_counter() - start

    with tempfile.TemporaryDirectory() as scratch:
        full.model.save_pretrained(os.path.join(scratch, "float32"))  # a plain checkpoint quantizers load
        full.tokenizer.save_pretrained(os.path.join(scratch, "float32"))
        reference = {energy: energies_and_grounds(full, energy) for energy in args.energies}
        for weights in args.weights:
            start = time.perf_counter()
            quantized = Pruner.from_pretrained(
                os.path.join(scratch, "float32"),
                dtype=torch.float32,
                quantization_config=QuantoConfig(weights=weights),
            )
            load_s = time.perf_counter() - start
            for energy in args.energies:
                q_matrix, q_grounds, seconds = energies_and_grounds(quantized, energy)
                f_matrix, f_grounds, f_seconds = reference[energy]
                x = [np.isin(np.arange(n), s).astype(float) for s in states]
                rho = spearmanr([v @ q_matrix @ v for v in x], [v @ f_matrix @ v for v in x]).statistic
                row = {
                    "weights": weights,
                    "energy": energy,
                    "spearman_m": args.spearman_m,
                    "states": args.states,
                    "spearman": float(rho),
                    "ground_overlap": {
                        m: len(set(q_grounds[m]) & set(f_grounds[m])) / m for m in args.remove
                    },
                    "ground_quantized": q_grounds,
                    "ground_float32": f_grounds,
                    "seconds": seconds,
                    "float32_seconds": f_seconds,
                    "load_seconds": load_s,
                }
                payload["rows"].append(row)
                write_json(args.output, payload)
                print(
                    f"{weights} {energy}: Spearman {rho:.3f} over {args.states} states at M = {args.spearman_m}; "
                    f"ground overlap {row['ground_overlap']}; {seconds:.0f} s (float32 {f_seconds:.0f} s)",
                    flush=True,
                )
    print(
        "\n| weights | energy | Spearman vs float32 (200 states, M = 6) | ground-state overlap M = 3 / 6 / 9 / 12 | "
        "time vs float32 |\n|---|---|---|---|---|"
    )
    for r in payload["rows"]:
        overlap = " / ".join(f"{v:.2f}" for v in r["ground_overlap"].values())
        print(
            f"| {r['weights']} | {r['energy']} | {r['spearman']:.3f} | {overlap} | "
            f"{r['seconds'] / r['float32_seconds']:.2f} |"
        )
    print(f"Wrote {relative(args.output)}")


if __name__ == "__main__":
    main()
