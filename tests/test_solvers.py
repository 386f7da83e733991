"""QUBO algebra and solvers, checked against brute force."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from optimum_blockprune import QUBO, CardinalityProblem, Ranking, solve_ranking
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


def test_auto_enumerates_small_and_searches_large():
    small = CardinalityProblem.from_matrix(fisher_like(10, 0), 3)
    assert solve_ranking(small, 5).solver == "enumerate"
    large = CardinalityProblem.from_matrix(fisher_like(40, 0), 20)
    ranking = solve_ranking(large, 5, max_enumeration_states=1000)
    assert ranking.solver == "local_search" and not ranking.proven and len(ranking) == 5


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
