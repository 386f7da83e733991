"""Ranking and result objects: what a solve and a prune return, with JSON round-trip."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True)
class RankedState:
    """One feasible configuration: the 0-based blocks it removes and its energy (rank 0 = ground state).

    `energy` is the ranking method's objective (the QUBO energy for CBO, a baseline's own score otherwise; NaN for
    a candidate from another method when the ranking's objective cannot price it); `score` is what
    `selection="auto"` measured for the state on held-out data (None when not evaluated); `source` names the
    method a candidate came from when it is not the ranking's own (`auto_candidates`).
    """

    rank: int
    removed_blocks: tuple[int, ...]
    energy: float
    proven: bool
    score: float | None = None
    source: str | None = None

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["removed_blocks"] = list(self.removed_blocks)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RankedState:
        score = data.get("score")
        return cls(
            int(data["rank"]),
            tuple(data["removed_blocks"]),
            float(data["energy"]),
            bool(data["proven"]),
            None if score is None else float(score),
            data.get("source"),
        )


@dataclass(frozen=True)
class Ranking:
    """The lowest-energy feasible states, best first (the paper's CBO:0, CBO:1, ...).

    `proven` is True when the solver certifies that these are exactly the k lowest states.
    """

    states: tuple[RankedState, ...]
    num_blocks: int
    num_blocks_to_remove: int
    candidates: tuple[int, ...]
    solver: str
    proven: bool
    solve_time_s: float
    stats: dict[str, Any] = field(default_factory=dict)
    granularity: str = "block"
    kinds: tuple[str, ...] = ()  # the kind of every variable (block or sublayer), when known
    method: str = "cbo"  # the registered method that ranked (`optimum_blockprune.methods`)
    label: str = "CBO"  # how states are named in tables: label:rank (the paper's CBO:k)
    objective: str = "energy"  # what `RankedState.energy` holds for this method
    energy_name: str | None = None  # the registered energy minimised, for methods that minimise one
    selection_metric: str | None = None  # "kl" or "loss" when states were scored by `selection="auto"`

    def __len__(self) -> int:
        return len(self.states)

    def __getitem__(self, rank: int) -> RankedState:
        return self.states[rank]

    def __iter__(self) -> Iterator[RankedState]:
        return iter(self.states)

    @property
    def ground_state(self) -> RankedState:
        return self.states[0]

    def best_scored(self) -> RankedState:
        """The evaluated state with the lowest measured score (ties: the lower rank)."""
        scored = [s for s in self.states if s.score is not None]
        if not scored:
            raise ValueError("No state of this ranking has a measured score; rank with `selection='auto'`.")
        return min(scored, key=lambda s: (s.score, s.rank))

    def to_dict(self) -> dict[str, Any]:
        return {
            "states": [s.to_dict() for s in self.states],
            "num_blocks": self.num_blocks,
            "num_blocks_to_remove": self.num_blocks_to_remove,
            "candidates": list(self.candidates),
            "solver": self.solver,
            "proven": self.proven,
            "solve_time_s": self.solve_time_s,
            "stats": dict(self.stats),
            "granularity": self.granularity,
            "kinds": list(self.kinds),
            "method": self.method,
            "label": self.label,
            "objective": self.objective,
            "energy_name": self.energy_name,
            "selection_metric": self.selection_metric,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Ranking:
        return cls(
            states=tuple(RankedState.from_dict(s) for s in data["states"]),
            num_blocks=int(data["num_blocks"]),
            num_blocks_to_remove=int(data["num_blocks_to_remove"]),
            candidates=tuple(data["candidates"]),
            solver=data["solver"],
            proven=bool(data["proven"]),
            solve_time_s=float(data["solve_time_s"]),
            stats=dict(data.get("stats", {})),
            granularity=data.get("granularity", "block"),
            kinds=tuple(data.get("kinds", ())),
            method=data.get("method", "cbo"),
            label=data.get("label") or data.get("method", "CBO"),
            objective=data.get("objective", "energy"),
            energy_name=data.get("energy_name"),
            selection_metric=data.get("selection_metric"),
        )

    def state_label(self, state: RankedState) -> str:
        """How a state is named: `CBO:3` for the ranking's own, `oneshot_ppl` for another method's candidate."""
        return state.source or f"{self.label}:{state.rank}"

    def to_markdown(
        self, max_rows: int | None = None, selected_rank: int | None = None, mark: str = "applied"
    ) -> str:
        """A markdown table: rank, removed blocks (0-based, with their kind when blocks differ), energy (or the
        baseline's objective), difference to the best state, and the held-out score where one was measured."""
        ground = self.states[0].energy if self.states else 0.0
        unit = "sublayers" if self.granularity == "sublayer" else "blocks"
        scored = self.selection_metric is not None and any(s.score is not None for s in self.states)
        score_header = f" held-out {'KL' if self.selection_metric == 'kl' else 'loss'} |" if scored else ""
        lines = [
            f"| state | removed {unit} (0-based) | {self.objective} | Δ vs rank 0 | proven |{score_header}",
            "|---|---|---|---|---|" + ("---|" if scored else ""),
        ]
        show_kinds = len(set(self.kinds)) > 1
        for state in self.states[:max_rows]:
            label = self.state_label(state) + (f" ({mark})" if state.rank == selected_rank else "")
            blocks = ", ".join(
                f"{i} ({self.kinds[i]})" if show_kinds else str(i) for i in state.removed_blocks
            )
            score = ""
            if scored:
                score = " – |" if state.score is None else f" {state.score:.5g} |"
            priced = (
                state.energy == state.energy
            )  # NaN: another method's candidate the objective cannot price
            energy = f"{state.energy:.6g} | {state.energy - ground:+.4g}" if priced else "– | –"
            lines.append(f"| {label} | {blocks} | {energy} | {'yes' if state.proven else 'no'} |{score}")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.describe()

    def describe(self, selected_rank: int | None = None, mark: str = "applied") -> str:
        """The header line and the table, with the state that was (or would be) applied marked."""
        header = (
            f"{len(self)} {self.label} states (lowest {self.objective} first) removing {self.num_blocks_to_remove} "
            f"of {self.num_blocks} "
            f"{'sublayers' if self.granularity == 'sublayer' else 'blocks'} "
            f"(solver: {self.solver}, {'proven' if self.proven else 'not proven'}, {self.solve_time_s:.3f} s)"
        )
        return header + "\n" + self.to_markdown(selected_rank=selected_rank, mark=mark)


@dataclass(frozen=True)
class PruningResult:
    """What `Pruner.prune` / `Pruner.apply` did: the ranking, the applied state, and the model before/after."""

    ranking: Ranking | None
    selected_rank: int | None
    removed_blocks: tuple[int, ...]
    kept_blocks: tuple[int, ...]
    num_parameters_before: int
    num_parameters_after: int

    @property
    def num_blocks_before(self) -> int:
        return len(self.removed_blocks) + len(self.kept_blocks)

    @property
    def num_blocks_after(self) -> int:
        return len(self.kept_blocks)

    @property
    def parameter_reduction(self) -> float:
        return 1.0 - self.num_parameters_after / self.num_parameters_before

    def to_dict(self) -> dict[str, Any]:
        return {
            "removed_blocks": list(self.removed_blocks),
            "kept_blocks": list(self.kept_blocks),
            "selected_rank": self.selected_rank,
            "num_parameters_before": self.num_parameters_before,
            "num_parameters_after": self.num_parameters_after,
            "ranking": self.ranking.to_dict() if self.ranking is not None else None,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PruningResult:
        return cls(
            ranking=Ranking.from_dict(data["ranking"]) if data.get("ranking") else None,
            selected_rank=data.get("selected_rank"),
            removed_blocks=tuple(data["removed_blocks"]),
            kept_blocks=tuple(data["kept_blocks"]),
            num_parameters_before=int(data["num_parameters_before"]),
            num_parameters_after=int(data["num_parameters_after"]),
        )
