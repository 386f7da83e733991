"""Ranking and result objects: what a solve and a prune return, with JSON round-trip."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True)
class RankedState:
    """One feasible configuration: the 0-based blocks it removes and its energy (rank 0 = ground state)."""

    rank: int
    removed_blocks: tuple[int, ...]
    energy: float
    proven: bool

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["removed_blocks"] = list(self.removed_blocks)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RankedState:
        return cls(
            int(data["rank"]), tuple(data["removed_blocks"]), float(data["energy"]), bool(data["proven"])
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
    first_order: bool = False
    stats: dict[str, Any] = field(default_factory=dict)
    granularity: str = "block"
    kinds: tuple[str, ...] = ()  # the kind of every variable (block or sublayer), when known

    def __len__(self) -> int:
        return len(self.states)

    def __getitem__(self, rank: int) -> RankedState:
        return self.states[rank]

    def __iter__(self) -> Iterator[RankedState]:
        return iter(self.states)

    @property
    def ground_state(self) -> RankedState:
        return self.states[0]

    def to_dict(self) -> dict[str, Any]:
        return {
            "states": [s.to_dict() for s in self.states],
            "num_blocks": self.num_blocks,
            "num_blocks_to_remove": self.num_blocks_to_remove,
            "candidates": list(self.candidates),
            "solver": self.solver,
            "proven": self.proven,
            "solve_time_s": self.solve_time_s,
            "first_order": self.first_order,
            "stats": dict(self.stats),
            "granularity": self.granularity,
            "kinds": list(self.kinds),
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
            first_order=bool(data.get("first_order", False)),
            stats=dict(data.get("stats", {})),
            granularity=data.get("granularity", "block"),
            kinds=tuple(data.get("kinds", ())),
        )

    def to_markdown(self, max_rows: int | None = None, selected_rank: int | None = None) -> str:
        """A markdown table: rank, removed blocks (0-based, with their kind when blocks differ), energy, energy
        above the ground state."""
        ground = self.states[0].energy if self.states else 0.0
        unit = "sublayers" if self.granularity == "sublayer" else "blocks"
        lines = [
            f"| state | removed {unit} (0-based) | energy | ΔE vs ground | proven |",
            "|---|---|---|---|---|",
        ]
        show_kinds = len(set(self.kinds)) > 1
        for state in self.states[:max_rows]:
            label = f"CBO:{state.rank}" + (" (applied)" if state.rank == selected_rank else "")
            blocks = ", ".join(
                f"{i} ({self.kinds[i]})" if show_kinds else str(i) for i in state.removed_blocks
            )
            lines.append(
                f"| {label} | {blocks} | {state.energy:.6g} | {state.energy - ground:+.4g} | "
                f"{'yes' if state.proven else 'no'} |"
            )
        return "\n".join(lines)

    def __str__(self) -> str:
        header = (
            f"{len(self)} lowest-energy states removing {self.num_blocks_to_remove} of {self.num_blocks} "
            f"{'sublayers' if self.granularity == 'sublayer' else 'blocks'} "
            f"(solver: {self.solver}, {'proven' if self.proven else 'not proven'}, {self.solve_time_s:.3f} s)"
        )
        return header + "\n" + self.to_markdown()


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
