"""The shape of the package: no import cycles, lower layers never import the facade, and a method, an energy or
a solver registered from outside the package shows up in config, CLI, ranking and card with no other edit."""

from __future__ import annotations

import ast
import itertools
import json
from pathlib import Path

import numpy as np
import pytest
from conftest import TEXTS, build_tiny_model

from optimum_blockprune import BlockRemovalConfig, ConfigurationError, Pruner
from optimum_blockprune.cli import main
from optimum_blockprune.energies import ENERGIES, Energy, available_energies, register_energy
from optimum_blockprune.methods import METHODS, ImportanceMethod, available_methods, register_method
from optimum_blockprune.solvers import SearchOutcome, Solver, available_solvers, register_solver
from optimum_blockprune.solvers.base import SOLVERS

PACKAGE = Path(__file__).resolve().parents[1] / "optimum_blockprune"
FAST = dict(num_calibration_samples=6, max_length=24, batch_size=3, show_progress=False)


# -- the import graph -----------------------------------------------------------------------------------------------
def _modules() -> dict[str, tuple[Path, bool]]:
    modules = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        modules[".".join(parts[:-1] if is_package else parts)] = (path, is_package)
    return modules


def _imports(name: str, path: Path, is_package: bool, modules) -> set[str]:
    """Every package module `name` imports, at any depth (lazy imports included), except under TYPE_CHECKING."""
    found: set[str] = set()
    here = name.split(".") if is_package else name.split(".")[:-1]

    class Visitor(ast.NodeVisitor):
        def visit_If(self, node):
            test = node.test
            if getattr(test, "id", None) == "TYPE_CHECKING" or getattr(test, "attr", None) == "TYPE_CHECKING":
                for child in node.orelse:
                    self.visit(child)
                return
            self.generic_visit(node)

        def visit_Import(self, node):
            found.update(alias.name for alias in node.names if alias.name in modules)

        def visit_ImportFrom(self, node):
            base = here[: len(here) - node.level + 1] if node.level else []
            target = ".".join(base + (node.module.split(".") if node.module else []))
            for alias in node.names:
                candidate = f"{target}.{alias.name}"
                found.add(candidate if candidate in modules else target)

    Visitor().visit(ast.parse(path.read_text()))
    return {module for module in found if module in modules and module != name}


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(name, path, is_package, modules) for name, (path, is_package) in modules.items()}


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node):
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_the_package_has_no_import_cycle():
    graph = _graph()
    assert "optimum_blockprune.pruner" in graph and graph["optimum_blockprune.pruner"]
    assert _cycle(graph) is None, " -> ".join(_cycle(graph))


def test_the_cycle_finder_finds_a_cycle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]


def test_only_the_entry_points_import_the_facade():
    importers = {name for name, imported in _graph().items() if "optimum_blockprune.pruner" in imported}
    assert importers <= {"optimum_blockprune.cli", "optimum_blockprune.demo"}, importers


def test_one_place_runs_gated_forwards_and_shifts_targets():
    """`GatedForward` is the only runner of calibration batches, `next_token_targets` the only shift."""
    for path in PACKAGE.rglob("*.py"):
        text = path.read_text()
        if path.name not in ("forward.py", "gates.py", "callback.py"):
            assert "CouplingGates(" not in text, path
        if path.name != "forward.py":
            assert "[:, 1:]" not in text.replace("norms[:, 1:]", ""), path


# -- registering a new method, energy and solver ----------------------------------------------------------------------
class FirstBlocks(ImportanceMethod):
    """A toy rule for the test: remove the first removable blocks."""

    name = "toy_first_blocks"
    description = "the first M removable blocks (a toy)"
    objective = "position from the start"
    cost = "none"
    reference = "tests/test_design.py"

    def importance(self, problem, context):
        return np.arange(problem.qubo.num_variables, dtype=np.float64)


class NegativeDiagonal(Energy):
    name = "toy_negative_diagonal"
    description = "-diag(H): prefers the blocks the paper's energy keeps (a toy)"

    def matrix(self, problem, context):
        return -np.diag(np.diag(context.fisher().hessian))


class SmallestDiagonal(Solver):
    """One state: the free variables with the smallest diagonal (exact only for diagonal problems)."""

    name = "toy_smallest_diagonal"

    def _search(self, problem, num_states, *, seed, show_progress):
        order = np.argsort(np.diag(problem.qubo.matrix), kind="stable")
        return SearchOutcome([tuple(sorted(order[: problem.num_selected].tolist()))], proven=False)


@pytest.fixture
def toys():
    register_method(FirstBlocks)
    register_energy(NegativeDiagonal)
    register_solver(SmallestDiagonal)
    yield
    METHODS.unregister(FirstBlocks.name)
    ENERGIES.unregister(NegativeDiagonal.name)
    SOLVERS.unregister(SmallestDiagonal.name)


def test_registries_refuse_duplicates_and_name_the_choices(toys):
    for register, cls in (
        (register_method, FirstBlocks),
        (register_energy, NegativeDiagonal),
        (register_solver, SmallestDiagonal),
    ):
        with pytest.raises(ValueError, match="already registered"):
            register(cls)
    with pytest.raises(
        ConfigurationError, match=r"`energy`='nope' is not a registered energy; choose one of \["
    ):
        BlockRemovalConfig(energy="nope")


def test_a_new_method_is_in_config_cli_ranking_and_card(toys, llama, tokenizer, tmp_path, capsys):
    assert FirstBlocks.name in available_methods()
    config = BlockRemovalConfig(num_blocks_to_remove=2, method=FirstBlocks.name, protected_blocks=[0], **FAST)
    pruner = Pruner(llama, tokenizer, model_id="tiny/llama")
    selection = pruner.select(config, TEXTS)
    assert selection.removed_blocks == (1, 2)  # block 0 protected
    assert (
        selection.ranking.method == FirstBlocks.name
        and selection.ranking.objective == "position from the start"
    )
    assert "toy_first_blocks:0" in selection.ranking.to_markdown()
    pruner.apply(selection)
    pruner.save_pretrained(tmp_path / "out")
    card = (tmp_path / "out" / "README.md").read_text()
    assert "the first M removable blocks (a toy)" in card and "toy_first_blocks:0 (applied)" in card
    provenance = json.loads((tmp_path / "out" / "blockprune_config.json").read_text())
    assert provenance["method"]["name"] == FirstBlocks.name and provenance["energy"] is None
    with pytest.raises(SystemExit):
        main(["rank", "--help"])
    help_text = capsys.readouterr().out
    assert FirstBlocks.name in help_text and NegativeDiagonal.name in help_text
    assert SmallestDiagonal.name in help_text


def test_a_new_energy_and_solver_rank_through_cbo(toys, llama, tokenizer, tmp_path):
    assert NegativeDiagonal.name in available_energies() and SmallestDiagonal.name in available_solvers()
    pruner = Pruner(llama, tokenizer, model_id="tiny/llama")
    config = BlockRemovalConfig(num_blocks_to_remove=2, energy=NegativeDiagonal.name, num_states=15, **FAST)
    ranking = pruner.select(config, TEXTS).ranking
    h = np.diag(pruner.fisher.hessian)
    brute = sorted(itertools.combinations(range(6), 2), key=lambda s: (-h[list(s)].sum(), s))
    assert [s.removed_blocks for s in ranking] == brute  # exact solver, the toy energy
    assert (
        ranking.energy_name == NegativeDiagonal.name
        and ranking.objective == f"energy ({NegativeDiagonal.name})"
    )
    greedy = BlockRemovalConfig(
        num_blocks_to_remove=2, energy=NegativeDiagonal.name, solver=SmallestDiagonal.name, **FAST
    )
    solved = pruner.solve(pruner.fisher, greedy)
    assert solved.solver == SmallestDiagonal.name and solved[0].removed_blocks == brute[0]
    pruner.apply(solved[0])
    pruner.save_pretrained(tmp_path / "out")
    card = (tmp_path / "out" / "README.md").read_text()
    assert NegativeDiagonal.description in card and f"energy ({NegativeDiagonal.name})" in card


def test_a_new_method_runs_from_the_command_line(toys, tiny_model_dir, calibration_file, tmp_path):
    out = tmp_path / "out"
    args = ["prune", str(tiny_model_dir), "--dataset", str(calibration_file), "--output-dir", str(out)]
    args += ["--num-blocks-to-remove", "2", "--method", FirstBlocks.name, "--no-show-progress"]
    assert main(args) == 0
    assert json.loads((out / "blockprune_config.json").read_text())["result"]["removed_blocks"] == [0, 1]


# -- one problem per prune, a value object back -------------------------------------------------------------------
def test_a_prune_builds_its_problem_once_and_select_returns_what_it_used(llama, tokenizer, monkeypatch):
    import optimum_blockprune.problem as problem_module

    calls = []
    real = problem_module.removal_problem
    monkeypatch.setattr(problem_module, "removal_problem", lambda *a, **k: calls.append(1) or real(*a, **k))
    pruner = Pruner(llama, tokenizer)
    pruner.prune(BlockRemovalConfig(num_blocks_to_remove=2, **FAST), TEXTS)
    assert len(calls) == 1
    selection = Pruner(build_tiny_model("llama"), tokenizer).select(
        BlockRemovalConfig(num_blocks_to_remove=2, method="block_influence", **FAST), TEXTS
    )
    assert set(selection.estimates) == {"statistics"} and selection.fisher is None
    assert selection.state is selection.ranking[0]


def test_ranking_from_a_fisher_alone_refuses_methods_that_need_data(llama, tokenizer):
    pruner = Pruner(llama, tokenizer)
    fisher = pruner.estimate(TEXTS, BlockRemovalConfig(**FAST))
    for config in (
        BlockRemovalConfig(num_blocks_to_remove=2, method="block_influence"),
        BlockRemovalConfig(num_blocks_to_remove=2, selection="auto"),
    ):
        with pytest.raises(ConfigurationError, match="needs calibration data, not only a Fisher"):
            pruner.solve(fisher, config)
    assert pruner.solve(
        fisher, BlockRemovalConfig(num_blocks_to_remove=2, method="fisher_diagonal")
    ).method == ("fisher_diagonal")


def test_committed_results_record_no_absolute_paths():
    """Results are read on other machines: paths in them are relative to the repository."""
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    for path in [*(root / "benchmarks" / "results").glob("*.json"), *(root / "model_cards").rglob("*.json")]:
        text = path.read_text()
        assert not re.search(r'"(/(work|tmp|root|home|Users)/|[A-Z]:\\\\)', text), path.name
