"""Optional back-ends behind extras, imported only when used: dimod samplers and Gurobi.

dimod samplers know no constraints, so the cardinality becomes a penalty lambda * (sum x - r)^2 with
lambda = c * lambda_safe (lambda_safe = max_j Q_jj + 2 sum_{k != j} |Q_jk| makes every infeasible state worse than
some feasible one). SOLVERS.md measured that the safe lambda ruins the landscape and small ones let infeasible
reads win; the fraction of infeasible reads is reported in the ranking's stats, never hidden.
"""

from __future__ import annotations

import numpy as np

from ..qubo import QUBO, CardinalityProblem
from .base import SearchOutcome, Solver, register_solver


def _require(module: str, extra: str):
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise ImportError(
            f"This solver needs `{module}`. Install it with `pip install 'optimum-blockprune[{extra}]'`."
        ) from None


def qubo_to_bqm(qubo: QUBO):
    """A dimod `BinaryQuadraticModel` (variables 0..N-1) with the same energy on every binary state."""
    dimod = _require("dimod", "dimod")
    q = qubo.matrix
    n = q.shape[0]
    rows, cols = np.triu_indices(n, k=1)
    quadratic = {(int(i), int(j)): 2.0 * q[i, j] for i, j in zip(rows, cols) if q[i, j] != 0.0}
    return dimod.BinaryQuadraticModel({i: q[i, i] for i in range(n)}, quadratic, qubo.offset, dimod.BINARY)


def qubo_from_bqm(bqm) -> QUBO:
    """The inverse of `qubo_to_bqm` (spin models are converted to binary first); variables must be 0..N-1."""
    dimod = _require("dimod", "dimod")
    binary = bqm.change_vartype(dimod.BINARY, inplace=False)
    n = binary.num_variables
    if set(binary.variables) != set(range(n)):
        raise ValueError("The BQM's variables must be the integers 0..N-1 (relabel it first).")
    q = np.zeros((n, n))
    for i, bias in binary.linear.items():
        q[i, i] = bias
    for (i, j), bias in binary.quadratic.items():
        q[i, j] = q[j, i] = bias / 2.0
    return QUBO(q, float(binary.offset))


class _DimodSolver(Solver):
    sampler_name: str
    requires = ("dimod", "dwave.samplers")
    extra = "dimod"

    def __init__(self, penalty_scale: float, num_reads: int = 20, **sampler_kwargs):
        self.penalty_scale = penalty_scale
        self.num_reads = num_reads
        self.sampler_kwargs = sampler_kwargs

    def _search(self, problem, num_states, *, seed, show_progress) -> SearchOutcome:
        dimod = _require("dimod", "dimod")
        samplers = _require("dwave.samplers", "dimod")
        n, r = problem.qubo.num_variables, problem.num_selected
        strength = self.penalty_scale * problem.qubo.flip_bound()
        bqm = qubo_to_bqm(problem.qubo)
        bqm.update(dimod.generators.combinations(list(range(n)), r, strength=strength))
        sampler = getattr(samplers, self.sampler_name)()
        sampleset = sampler.sample(bqm, num_reads=self.num_reads, seed=seed % 2**31, **self.sampler_kwargs)
        reads = sampleset.record.sample
        feasible = reads.sum(axis=1) == r
        states = [tuple(np.flatnonzero(row).tolist()) for row in reads[feasible]]
        stats = {
            "penalty_strength": strength,
            "num_reads": int(len(reads)),
            "infeasible_read_fraction": float(1.0 - feasible.mean()) if len(reads) else 1.0,
        }
        return SearchOutcome(states, proven=False, stats=stats)


@register_solver
class TabuSolver(_DimodSolver):
    """dwave-samplers' tabu search on the penalty QUBO (heuristic; `pip install "optimum-blockprune[dimod]"`)."""

    name = "tabu"
    sampler_name = "TabuSampler"

    def __init__(self, penalty_scale: float = 0.1, num_reads: int = 5, timeout_ms: int = 50):
        super().__init__(penalty_scale, num_reads, timeout=timeout_ms)


@register_solver
class DimodAnnealSolver(_DimodSolver):
    """dwave-samplers' simulated annealing on the penalty QUBO (heuristic; for comparison with `anneal`)."""

    name = "dimod_sa"
    sampler_name = "SimulatedAnnealingSampler"

    def __init__(self, penalty_scale: float = 0.03, num_reads: int = 20, num_sweeps: int = 1000):
        super().__init__(penalty_scale, num_reads, num_sweeps=num_sweeps)


@register_solver
class GurobiSolver(Solver):
    """Gurobi's MIQP with the cardinality and side constraints as linear rows, zero MIP gap (near-ties are 1e-5
    apart), and the solution pool in mode 2 for a certified top-k. The pip licence allows at most 200 variables
    with a quadratic objective and non-production use only; `pip install "optimum-blockprune[gurobi]"`."""

    name = "gurobi"
    time_limited = True
    requires = ("gurobipy",)
    extra = "gurobi"

    def __init__(self, time_limit_s: float = 60.0, threads: int = 1):
        self.time_limit_s = time_limit_s
        self.threads = threads

    def _search(self, problem: CardinalityProblem, num_states, *, seed, show_progress) -> SearchOutcome:
        gp = _require("gurobipy", "gurobi")
        q = problem.qubo.matrix
        n = q.shape[0]
        with gp.Env(params={"OutputFlag": 0}) as env, gp.Model(env=env) as model:
            model.Params.MIPGap = 0.0
            model.Params.MIPGapAbs = 0.0
            model.Params.TimeLimit = self.time_limit_s
            model.Params.Threads = self.threads
            model.Params.Seed = seed % 2**31
            model.Params.PoolSearchMode = 2
            model.Params.PoolSolutions = num_states
            if np.linalg.eigvalsh(q)[0] < -1e-9 * max(1.0, np.abs(q).max()):
                model.Params.NonConvex = 2
            x = model.addMVar(n, vtype=gp.GRB.BINARY)
            model.setObjective(x @ q @ x, gp.GRB.MINIMIZE)
            model.addConstr(x.sum() == problem.num_selected)
            for c in problem.constraints:
                if np.isfinite(c.lower):
                    model.addConstr(c.weights @ x >= c.lower)
                if np.isfinite(c.upper):
                    model.addConstr(c.weights @ x <= c.upper)
            try:
                model.optimize()
            except gp.GurobiError as error:
                raise RuntimeError(
                    f"Gurobi failed on a problem with {n} variables: {error}. The pip licence allows at most 200 "
                    "variables with a quadratic objective; use the 'exact' solver instead."
                ) from error
            states = []
            for i in range(model.SolCount):
                model.Params.SolutionNumber = i
                states.append(tuple(np.flatnonzero(np.round(x.Xn) > 0.5).tolist()))
            proven = model.Status == gp.GRB.OPTIMAL
            stats = {
                "status": int(model.Status),
                "nodes": int(model.NodeCount),
                "gap": float(model.MIPGap) if model.SolCount else None,
            }
        return SearchOutcome(states, proven=proven, stats=stats)
