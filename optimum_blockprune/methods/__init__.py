"""Ways to rank block removals: CBO and the baselines, one registered class each (see `methods.base`).

Every module of this package is imported when the registry is first read, so a new method is one new file
with a class decorated by `register_method`.
"""

from .base import (
    METHODS,
    NEEDS,
    GreedyMethod,
    ImportanceMethod,
    RankingContext,
    RankingMethod,
    available_methods,
    get_method,
    method_table,
    register_method,
)

__all__ = [
    "METHODS",
    "NEEDS",
    "GreedyMethod",
    "ImportanceMethod",
    "RankingContext",
    "RankingMethod",
    "available_methods",
    "get_method",
    "method_table",
    "register_method",
]
