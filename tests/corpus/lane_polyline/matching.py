"""Optimal one-to-one assignment for small cost matrices (host side, like scipy's linear_sum_assignment)."""
import itertools

import numpy as np


def linear_sum_assignment(cost):
    """Exact assignment by enumerating permutations of the smaller side (fine for <= 7 objects)."""
    cost = np.asarray(cost)
    transposed = cost.shape[0] > cost.shape[1]
    if transposed:
        cost = cost.T
    n_rows, n_cols = cost.shape
    best, best_cols = None, None
    for cols in itertools.permutations(range(n_cols), n_rows):
        total = cost[np.arange(n_rows), cols].sum()
        if best is None or total < best:
            best, best_cols = total, cols
    rows, cols = np.arange(n_rows), np.array(best_cols, dtype=np.int64)
    return (cols, rows) if transposed else (rows, cols)
