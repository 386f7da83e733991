"""The hardest benchmark case head to head: random PSD N = 80, M = 20, ground state, 300 s limit each.

    python benchmarks/random80_long.py

Same instance as `benchmarks/solvers.py` (random_psd(80)); Gurobi single-threaded. Writes
benchmarks/results/random80_m20_long.json.
"""

from __future__ import annotations

import os
import time

from _report import write_json
from solvers import random_psd

from optimum_blockprune.qubo import CardinalityProblem
from optimum_blockprune.solvers import get_solver


def main():
    problem = CardinalityProblem.from_matrix(random_psd(80), 20)
    results = {}
    for name in ("exact", "gurobi"):
        start = time.perf_counter()
        ranking = get_solver(name, time_limit_s=300).solve(problem, 1)
        results[name] = {
            "seconds": time.perf_counter() - start,
            "proven": ranking.proven,
            "energy": ranking[0].energy,
            "stats": {k: v for k, v in ranking.stats.items() if isinstance(v, (int, float, bool))},
        }
        print(name, results[name], flush=True)
    path = os.path.join(os.path.dirname(__file__), "results", "random80_m20_long.json")
    write_json(path, results)


if __name__ == "__main__":
    main()
