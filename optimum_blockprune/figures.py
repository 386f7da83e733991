"""The model card's two pictures: the energy spectrum of the ranked states, and which blocks each state removes.

matplotlib is optional (`pip install "optimum-blockprune[plots]"`); without it the card simply has no pictures.
"""

from __future__ import annotations

import logging
import math
import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .result import Ranking

logger = logging.getLogger(__name__)

SPECTRUM_FILE = "blockprune_energy_spectrum.png"
SWEEP_FILE = "blockprune_sweep.png"
REMOVAL_MAP_FILE = "blockprune_removal_map.png"


def _pyplot():
    try:
        import matplotlib
    except ImportError:
        logger.info("matplotlib is not installed: the model card gets no pictures (pip install matplotlib).")
        return None
    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def save_card_figures(ranking: Ranking, directory: str, selected_rank: int | None) -> dict[str, str]:
    """Write the two PNGs into `directory`; returns {"spectrum": name, "removal_map": name} of those written."""
    plt = _pyplot()
    if plt is None or not ranking.states:
        return {}
    from matplotlib.patches import Rectangle
    from matplotlib.ticker import MaxNLocator

    written = {}
    states = list(ranking.states)
    label = ranking.label
    objective = ranking.objective

    energies = [s.energy for s in states]
    priced = [(s.rank, s.energy) for s in states if not math.isnan(s.energy)]
    figure, axis = plt.subplots(figsize=(7, 3.2))
    if priced:
        axis.plot([r for r, _ in priced], [e for _, e in priced], "o-", color="tab:blue", label=objective)
    if selected_rank is not None and selected_rank < len(states) and not math.isnan(energies[selected_rank]):
        axis.plot(
            [selected_rank],
            [energies[selected_rank]],
            "o",
            ms=12,
            mfc="none",
            color="tab:red",
            label="applied",
        )
    scored = [(s.rank, s.score) for s in states if s.score is not None]
    if scored:
        other = axis.twinx()
        other.plot([r for r, _ in scored], [v for _, v in scored], "s", color="tab:orange", ms=4)
        other.set_ylabel(f"held-out {ranking.selection_metric}", color="tab:orange")
    axis.set_xlabel(f"state ({label}:k)")
    axis.xaxis.set_major_locator(MaxNLocator(integer=True))  # states are whole ranks
    axis.set_ylabel(f"{objective} (lower is better)")
    axis.set_title(
        f"The {len(states)} ranked states, removing {ranking.num_blocks_to_remove} of {ranking.num_blocks}"
    )
    axis.legend(loc="upper left", fontsize=8)
    figure.tight_layout()
    figure.savefig(os.path.join(directory, SPECTRUM_FILE), dpi=110)
    plt.close(figure)
    written["spectrum"] = SPECTRUM_FILE

    figure, axis = plt.subplots(figsize=(7, 0.28 * len(states) + 1.2))
    grid = [[1.0 if b in s.removed_blocks else 0.0 for b in range(ranking.num_blocks)] for s in states]
    axis.imshow(grid, aspect="auto", cmap="Greys", vmin=0, vmax=1.4, interpolation="nearest")
    if selected_rank is not None and selected_rank < len(states):
        # an outline around the applied row: its cells stay readable
        axis.add_patch(
            Rectangle(
                (-0.5, selected_rank - 0.5),
                ranking.num_blocks,
                1,
                fill=False,
                edgecolor="tab:red",
                lw=2,
                label=f"applied ({label}:{states[selected_rank].rank})",
            )
        )
    axis.add_patch(Rectangle((0, 0), 0, 0, facecolor="0.3", edgecolor="none", label="removed block"))
    axis.add_patch(Rectangle((0, 0), 0, 0, facecolor="white", edgecolor="0.6", label="kept block"))
    axis.legend(loc="upper center", bbox_to_anchor=(0.5, -0.18), ncol=3, fontsize=7, frameon=False)
    axis.set_yticks(range(len(states)), [f"{label}:{s.rank}" for s in states], fontsize=7)
    axis.set_xticks(range(ranking.num_blocks), [str(b) for b in range(ranking.num_blocks)], fontsize=7)
    axis.set_xlabel("block (0-based; dark = removed)")
    axis.set_title("Which blocks each low-energy state removes", fontsize=10)
    figure.tight_layout()
    figure.savefig(os.path.join(directory, REMOVAL_MAP_FILE), dpi=110)
    plt.close(figure)
    written["removal_map"] = REMOVAL_MAP_FILE
    return written


def save_sweep_figure(sweep, path: str) -> str | None:
    """Held-out perplexity (log scale) and measured speed-ups against the number of blocks removed, the knee
    marked; the parameters removed label the top axis. Returns `path`, or None without matplotlib."""
    plt = _pyplot()
    if plt is None or not sweep.points:
        return None
    points = sorted(sweep.points, key=lambda p: p.num_blocks)
    ms = [0, *(p.num_blocks for p in points)]
    figure, axis = plt.subplots(figsize=(7, 3.6))
    axis.plot(
        ms,
        [sweep.unpruned_perplexity, *(p.perplexity for p in points)],
        "o-",
        color="tab:blue",
        label="held-out perplexity",
    )
    axis.set_yscale("log")
    axis.set_xlabel(f"blocks removed (of {sweep.num_blocks_total}; `{sweep.method}`)")
    axis.set_ylabel("held-out perplexity (lower is better)", color="tab:blue")
    knee = sweep.knee()
    if knee is not None:
        at = next(p for p in points if p.num_blocks == knee)
        axis.plot(
            [knee], [at.perplexity], "o", ms=13, mfc="none", color="tab:red", label=f"knee (M = {knee})"
        )
    if sweep.unpruned_speed is not None:
        other = axis.twinx()
        for kind, style in (("prefill", "s--"), ("decode", "^--")):
            values = [1.0, *(sweep.speedup(p, kind) for p in points)]
            if all(v is not None for v in values):
                other.plot(ms, values, style, color="tab:green", ms=4, label=f"{kind} speed-up")
        other.set_ylabel(f"speed-up vs unpruned ({sweep.device})", color="tab:green")
        other.legend(loc="lower right", fontsize=8)
    top = axis.secondary_xaxis("top")
    top.set_xticks(ms, ["0 %", *(f"{100 * p.parameters_removed:.0f} %" for p in points)], fontsize=7)
    top.set_xlabel("parameters removed", fontsize=8)
    axis.legend(loc="upper left", fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path
