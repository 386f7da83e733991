"""QUBO algebra and solvers, checked against brute force."""

from __future__ import annotations

import itertools
import json
import os

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from optimum_blockprune import QUBO, CardinalityProblem, Ranking, solve_ranking
from optimum_blockprune.constraints import kind_limit, parameter_budget
from optimum_blockprune.qubo import LinearConstraint
from optimum_blockprune.solvers import available_solvers, get_solver


def fisher_like(n: int, seed: int, samples: int = 64) -> np.ndarray:
    """H = A^T A / m with boundary-heavy block scales and correlated neighbours, like real block Fishers."""
    rng = np.random.default_rng(seed)
    scale = 1 + 20 * np.exp(-np.arange(n) / 2) + 5 * np.exp(-(n - 1 - np.arange(n)) / 2)
    z = rng.normal(size=(samples, n))
    z[:, 1:] += 0.6 * z[:, :-1]
    a = (z + 0.3) * scale * np.exp(0.3 * rng.normal(size=n))
    return a.T @ a / samples


def brute_force(q: np.ndarray, m: int, candidates, k: int):
    states = [(float(q[np.ix_(c, c)].sum()), c) for c in itertools.combinations(candidates, m)]
    return sorted(states)[:k]


def test_energy_by_hand():
    q = np.array([[1.0, 0.5, 0.0], [0.5, 2.0, -1.0], [0.0, -1.0, 3.0]])
    qubo = QUBO(q, offset=0.25)
    # x = (1, 0, 1): Q00 + Q22 + 2*Q02 = 1 + 3 + 0
    assert qubo.energy_of([0, 2]) == pytest.approx(4.25)
    # x = (1, 1, 1): sum of all entries
    assert qubo.energies(np.ones(3)) == pytest.approx(q.sum() + 0.25)
    assert qubo.energies(np.array([[0, 1, 1], [1, 1, 0]])).tolist() == pytest.approx([3.0 + 0.25, 4.0 + 0.25])


def test_linear_and_quadratic_terms_round_trip():
    rng = np.random.default_rng(2)
    linear, pairs = rng.normal(size=4), rng.normal(size=(4, 4))
    pairs = (pairs + pairs.T) / 2
    np.fill_diagonal(pairs, 0)
    qubo = QUBO.from_terms(linear, pairs, offset=1.5)
    np.testing.assert_allclose(qubo.linear, linear)
    np.testing.assert_allclose(qubo.quadratic, pairs)
    x = np.array([1, 0, 1, 1.0])
    assert qubo.energies(x) == pytest.approx(linear @ x + x @ pairs @ x + 1.5)


def test_ising_form_reproduces_every_energy():
    rng = np.random.default_rng(1)
    q = rng.normal(size=(5, 5))
    qubo = QUBO(q, offset=-0.5)
    fields, couplings, offset = qubo.to_ising()
    assert np.allclose(np.diag(couplings), 0) and np.allclose(couplings, couplings.T)
    for bits in itertools.product([0, 1], repeat=5):
        x = np.array(bits, dtype=float)
        s = 2 * x - 1
        assert s @ couplings @ s + fields @ s + offset == pytest.approx(qubo.energies(x))


def test_flip_bound_bounds_every_single_flip():
    rng = np.random.default_rng(5)
    qubo = QUBO(rng.normal(size=(6, 6)))
    states = np.array(list(itertools.product([0, 1], repeat=6)), dtype=float)
    energies = qubo.energies(states)
    largest = max(
        abs(energies[i] - qubo.energies(np.where(np.arange(6) == j, 1 - states[i], states[i])))
        for i in range(len(states))
        for j in range(6)
    )
    assert largest <= qubo.flip_bound() + 1e-12


def test_qubo_rejects_broken_input():
    with pytest.raises(ValueError, match="square"):
        QUBO(np.zeros((2, 3)))
    with pytest.raises(ValueError, match="NaN"):
        QUBO(np.array([[np.nan]]))


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(3, 10),
    m_fraction=st.floats(0.1, 0.9),
    seed=st.integers(0, 10_000),
    num_protected=st.integers(0, 2),
    k=st.integers(1, 25),
    psd=st.booleans(),
)
def test_enumeration_equals_brute_force(n, m_fraction, seed, num_protected, k, psd):
    rng = np.random.default_rng(seed)
    if psd:
        a = rng.normal(size=(n + 3, n))
        q = a.T @ a
    else:
        q = rng.normal(size=(n, n))
    protected = list(rng.choice(n, size=min(num_protected, n - 1), replace=False))
    candidates = [i for i in range(n) if i not in protected]
    m = max(1, min(len(candidates), round(m_fraction * len(candidates))))
    problem = CardinalityProblem.from_matrix(q, m, protected=protected)
    ranking = solve_ranking(problem, k, solver="enumerate")
    expected = brute_force(problem.qubo.matrix, m, candidates, k)
    assert [s.energy for s in ranking] == pytest.approx([e for e, _ in expected], abs=1e-9)
    assert ranking.proven and all(s.proven for s in ranking)
    for state in ranking:
        assert len(state.removed_blocks) == m and not set(state.removed_blocks) & set(protected)


@pytest.mark.parametrize("n,m", [(12, 3), (16, 8), (20, 5), (24, 12), (24, 6)])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_local_search_against_exact(n, m, seed):
    q = fisher_like(n, seed)
    problem = CardinalityProblem.from_matrix(q, m, protected=[0])
    exact = solve_ranking(problem, 10, solver="enumerate")
    heuristic = solve_ranking(problem, 10, solver="local_search", seed=seed)
    assert not heuristic.proven
    # Never below the proven optimum (it would be a bug in either), and finds the ground state here.
    assert heuristic[0].energy >= exact[0].energy - 1e-9
    assert heuristic[0].energy == pytest.approx(exact[0].energy, rel=1e-12)
    for state in heuristic:
        assert len(state.removed_blocks) == m and 0 not in state.removed_blocks
        assert problem.qubo.energy_of(state.removed_blocks) == pytest.approx(state.energy)
    # The excited states are usually found too on Fisher-like instances.
    assert [s.energy for s in heuristic] == pytest.approx([s.energy for s in exact], rel=1e-12)


def test_ties_are_ordered_lexicographically():
    problem = CardinalityProblem.from_matrix(np.zeros((5, 5)), 2)
    for solver in ("enumerate", "local_search"):
        ranking = solve_ranking(problem, 4, solver=solver)
        assert [s.removed_blocks for s in ranking] == [(0, 1), (0, 2), (0, 3), (0, 4)], solver
    # All 10 states tie; asking for all of them, every solver returns them in lexicographic order.
    for solver in ("exact", "anneal"):
        ranking = solve_ranking(problem, 10, solver=solver)
        assert [s.removed_blocks for s in ranking] == list(itertools.combinations(range(5), 2)), solver


def test_auto_is_exact_and_falls_back_to_anneal_under_a_time_limit():
    small = CardinalityProblem.from_matrix(fisher_like(10, 0), 3)
    exact = solve_ranking(small, 5)
    assert exact.solver == "exact" and exact.proven
    rng = np.random.default_rng(7)
    b = rng.normal(size=(90, 90))
    hard = CardinalityProblem.from_matrix(b.T @ b / 90, 30)
    ranking = solve_ranking(hard, 5, time_limit_s=0.05)
    assert ranking.solver == "exact+anneal" and not ranking.proven and len(ranking) == 5
    assert ranking.stats["timed_out"] and ranking.stats["lower_bound"] <= ranking[0].energy + 1e-9
    assert ranking.stats["gap"] >= 0 and all(not s.proven for s in ranking)


def test_fewer_feasible_states_than_requested():
    ranking = solve_ranking(CardinalityProblem.from_matrix(np.eye(4), 3), 20)
    assert len(ranking) == 4  # C(4, 3)


def test_ranking_round_trips_through_json():
    ranking = solve_ranking(CardinalityProblem.from_matrix(fisher_like(8, 3), 2, protected=[7]), 6)
    restored = Ranking.from_dict(json.loads(json.dumps(ranking.to_dict())))
    assert restored == ranking
    table = ranking.to_markdown()
    assert "CBO:0" in table and "CBO:5" in table


def test_solver_registry_errors():
    assert {"enumerate", "local_search"} <= set(available_solvers())
    with pytest.raises(ValueError, match="registered"):
        get_solver("quantum")
    with pytest.raises(ValueError, match="max_states"):
        get_solver("enumerate", max_states=10).solve(CardinalityProblem.from_matrix(np.eye(10), 5))


# -- the exact branch and bound, the annealer and the side constraints ------------------------------------------


@st.composite
def constrained_problems(draw):
    n = draw(st.integers(4, 11))
    seed = draw(st.integers(0, 10_000))
    rng = np.random.default_rng(seed)
    kind = draw(st.sampled_from(["psd", "fisher", "indefinite"]))
    if kind == "psd":
        a = rng.normal(size=(n + 2, n))
        q = a.T @ a
    elif kind == "fisher":
        q = fisher_like(n, seed)
    else:
        q = rng.normal(size=(n, n))
    m = draw(st.integers(1, n - 1))
    protected = [i for i in range(n) if draw(st.booleans()) and rng.random() < 0.2]
    candidates = [i for i in range(n) if i not in protected]
    if len(candidates) < m:
        protected, candidates = [], list(range(n))
    forced = [i for i in candidates[: draw(st.integers(0, min(2, m)))] if rng.random() < 0.5]
    constraints = []
    if draw(st.booleans()):
        params = rng.integers(1, 10, size=n).astype(float)
        constraints.append(
            parameter_budget(params, at_least=float(np.sort(params)[:m].sum() + 1), at_most=None)
        )
    if draw(st.booleans()):
        kinds = [("attention", "mlp")[i % 2] for i in range(n)]
        constraints.append(kind_limit(kinds, "attention", at_most=draw(st.integers(0, m))))
    problem = CardinalityProblem.from_matrix(q, m, protected, forced=forced, constraints=constraints)
    return problem, draw(st.integers(1, 12))


@settings(max_examples=60, deadline=None)
@given(case=constrained_problems())
def test_exact_and_anneal_against_enumeration_with_constraints(case):
    problem, k = case
    oracle = solve_ranking(problem, k, solver="enumerate")
    exact = solve_ranking(problem, k, solver="exact")
    assert exact.proven
    assert [s.energy for s in exact] == pytest.approx([s.energy for s in oracle], rel=1e-9, abs=1e-9)
    annealed = solve_ranking(problem, k, solver="anneal", seed=1)
    for ranking in (exact, annealed):
        if len(ranking):
            assert problem.is_feasible(problem.to_binary([s.removed_blocks for s in ranking])).all()
    if len(oracle) and len(annealed):
        assert annealed[0].energy >= oracle[0].energy - 1e-9 * max(1.0, abs(oracle[0].energy))


def _all_states(n, m):
    return [c for c in itertools.combinations(range(n), m)]


def test_constraints_give_exactly_the_brute_force_feasible_sets():
    n, m = 8, 3
    rng = np.random.default_rng(0)
    params = rng.integers(1, 100, size=n)
    kinds = ["attention", "mlp", "mlp", "attention", "mamba", "mlp", "attention", "mamba"]
    q = np.eye(n)
    cases = {
        "budget": (
            dict(constraints=[parameter_budget(params, at_least=120, at_most=200)]),
            lambda s: 120 <= params[list(s)].sum() <= 200,
        ),
        "per kind": (
            dict(constraints=[kind_limit(kinds, "attention", at_least=1, at_most=2)]),
            lambda s: 1 <= sum(kinds[i] == "attention" for i in s) <= 2,
        ),
        "protected": (dict(protected=[0, 7]), lambda s: not {0, 7} & set(s)),
        "forced": (dict(forced=[2]), lambda s: 2 in s),
        "contiguous": (dict(contiguous=True), lambda s: max(s) - min(s) == m - 1),
    }
    for name, (kwargs, predicate) in cases.items():
        problem = CardinalityProblem.from_matrix(q, m, kwargs.pop("protected", ()), **kwargs)
        states = _all_states(n, m)
        mask = problem.is_feasible(problem.to_binary(states))
        assert [s for s, ok in zip(states, mask) if ok] == [s for s in states if predicate(s)], name
        for solver in ("exact", "enumerate"):
            ranking = solve_ranking(problem, 100, solver=solver)
            assert sorted(s.removed_blocks for s in ranking) == [s for s in states if predicate(s)], (
                name,
                solver,
            )


def test_infeasible_constraints_give_an_empty_ranking():
    problem = CardinalityProblem.from_matrix(
        np.eye(4), 2, constraints=[LinearConstraint(np.ones(4), lower=3)]
    )
    for solver in ("exact", "enumerate", "anneal"):
        assert len(solve_ranking(problem, 5, solver=solver)) == 0


def test_forced_variables_fold_into_the_reduced_problem():
    q = fisher_like(9, 4)
    problem = CardinalityProblem.from_matrix(q, 4, protected=[8], forced=[1, 5])
    reduced, index = problem.reduced()
    assert list(index) == [0, 2, 3, 4, 6, 7] and reduced.num_selected == 2
    for free in itertools.combinations(range(6), 2):
        full = sorted([1, 5, *index[list(free)]])
        assert reduced.qubo.energy_of(free) == pytest.approx(problem.qubo.energy_of(full))


@pytest.mark.parametrize("n,m", [(40, 10), (64, 16), (80, 40)])
def test_exact_certifies_fisher_like_instances_beyond_enumeration(n, m):
    problem = CardinalityProblem.from_matrix(fisher_like(n, 1, samples=512), m)
    exact = solve_ranking(problem, 20, solver="exact")
    assert exact.proven and len(exact) == 20
    annealed = solve_ranking(problem, 20, solver="anneal", seed=0)
    assert annealed[0].energy == pytest.approx(exact[0].energy, rel=1e-12)
    assert all(a.energy >= e.energy - 1e-9 for a, e in zip(annealed, exact))


# -- optional back-ends ---------------------------------------------------------------------------------------


def test_bqm_round_trip_keeps_every_energy():
    pytest.importorskip("dimod")
    from optimum_blockprune.solvers.backends import qubo_from_bqm, qubo_to_bqm

    rng = np.random.default_rng(3)
    qubo = QUBO(rng.normal(size=(6, 6)), offset=0.7)
    bqm = qubo_to_bqm(qubo)
    for bits in itertools.product([0, 1], repeat=6):
        assert bqm.energy(dict(enumerate(bits))) == pytest.approx(float(qubo.energies(np.array(bits))))
    back = qubo_from_bqm(bqm.change_vartype("SPIN", inplace=False))
    np.testing.assert_allclose(back.matrix, qubo.matrix, atol=1e-12)
    assert back.offset == pytest.approx(qubo.offset)


@pytest.mark.parametrize("solver", ["tabu", "dimod_sa"])
def test_dimod_samplers_report_infeasible_reads_and_never_beat_the_optimum(solver):
    pytest.importorskip("dwave.samplers")
    problem = CardinalityProblem.from_matrix(fisher_like(16, 2), 5)
    exact = solve_ranking(problem, 5, solver="exact")
    ranking = solve_ranking(problem, 5, solver=solver, seed=0)
    assert not ranking.proven and 0.0 <= ranking.stats["infeasible_read_fraction"] <= 1.0
    assert all(len(s.removed_blocks) == 5 for s in ranking)
    if len(ranking):
        assert ranking[0].energy >= exact[0].energy - 1e-9


def test_gurobi_certifies_the_same_top_k_as_the_branch_and_bound():
    pytest.importorskip("gurobipy")
    params = np.arange(1, 21, dtype=float)
    problem = CardinalityProblem.from_matrix(
        fisher_like(20, 5), 6, protected=[0], forced=[3], constraints=[parameter_budget(params, at_most=60)]
    )
    exact = solve_ranking(problem, 8, solver="exact")
    ranking = solve_ranking(problem, 8, solver="gurobi")
    assert ranking.proven
    assert [s.energy for s in ranking] == pytest.approx([s.energy for s in exact], rel=1e-9)


def test_solve_ranking_forwards_the_time_limit_to_every_time_limited_solver():
    from optimum_blockprune.solvers import available_solvers, solver_class

    assert {name for name in available_solvers() if solver_class(name).time_limited} == {
        "auto",
        "exact",
        "gurobi",
    }
    pytest.importorskip("gurobipy")
    rng = np.random.default_rng(7)
    b = rng.normal(size=(90, 90))
    ranking = solve_ranking(
        CardinalityProblem.from_matrix(b.T @ b / 90, 30), 5, solver="gurobi", time_limit_s=0.05
    )
    assert not ranking.proven and ranking.stats["status"] != 2  # stopped by the limit, not optimal


_CACHED_SOLVE = """
import sys
import numpy as np
from optimum_blockprune.qubo import QUBO, CardinalityProblem
from optimum_blockprune.solvers import solve_ranking
from optimum_blockprune.solvers import _kernels

a = np.random.default_rng(0).normal(size=(40, 12))
problem = CardinalityProblem(QUBO(a.T @ a / 40), 4, tuple(range(12)))
solve_ranking(problem, 5, solver="exact")
solve_ranking(problem, 5, solver="anneal")
solve_ranking(problem, 5, solver="enumerate")
kernels = _kernels.kernels()
print(sum(sum(k.stats.cache_hits.values()) for k in kernels), sum(sum(k.stats.cache_misses.values()) for k in kernels))
"""


@pytest.mark.slow
def test_a_second_process_loads_the_compiled_kernels_from_the_disk_cache(tmp_path):
    """numba's cache misses for closures (keyed on their cells): the kernels are module-level so it hits."""
    import subprocess
    import sys

    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path / "numba")}

    def hits_and_misses():
        out = subprocess.run(
            [sys.executable, "-c", _CACHED_SOLVE], env=env, capture_output=True, text=True, check=True
        )
        return tuple(int(v) for v in out.stdout.split())

    assert hits_and_misses() == (0, 3)  # the first process compiles each kernel
    files = sorted(p.name for p in (tmp_path / "numba").rglob("*") if p.is_file())
    assert hits_and_misses() == (3, 0)  # the second loads all three
    assert (
        sorted(p.name for p in (tmp_path / "numba").rglob("*") if p.is_file()) == files
    )  # and writes nothing new
