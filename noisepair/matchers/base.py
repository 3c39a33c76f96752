"""The matcher interface: a small solver that says which noise goes with which sample.

A matcher sees the (B, M) cost matrix and returns ``cols``: ``cols[i]`` is the row of the noise
draws paired with sample i. Permutation matchers (every one but KNN) return a permutation of
range(B), so the noise emitted is exactly the noise drawn, reordered, and stays N(0, I).
Any callable ``cost -> cols`` (or scipy-style ``cost -> (rows, cols)``) is a matcher too.
"""
from __future__ import annotations

from typing import Any, Callable

import numpy as np

from noisepair._frameworks import is_torch, to_numpy
from noisepair.cost import cost_matrix


class Matcher:
    """Base class. Subclasses implement :meth:`solve`; KNN overrides :meth:`pair`."""

    name = "matcher"
    #: True when the noise emitted is a permutation of the noise drawn (the Gaussian invariant).
    permutation = True
    #: noise vectors drawn per sample (KNN draws k and keeps one).
    candidates = 1

    def solve(self, cost: Any) -> Any:
        raise NotImplementedError

    def pair(self, x: Any, z: Any, metric: str = "sqeuclidean", precision: str = "float32"):
        """Pair flattened samples ``x`` (B, D) with draws ``z`` (B * candidates, D).

        Returns ``(cols, matched_cost, random_cost)``: the index into ``z`` for each sample and
        the summed cost of the matched and of the as-drawn (identity) pairing.
        """
        cost = cost_matrix(x, z, metric, precision)
        cols = self.solve(cost)
        return cols, _sum_at(cost, cols), _trace(cost)

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class Random(Matcher):
    """No matching: each sample keeps the noise drawn for it. The baseline arm of every A/B."""

    name = "random"

    def solve(self, cost: Any) -> Any:
        return _arange(cost.shape[0], cost)

    def pair(self, x, z, metric="sqeuclidean", precision="float32"):
        diff = (x - z).float() if is_torch(x) else (x - z).astype(np.float32, copy=False)
        cost_diag = (diff * diff).sum(1)
        if metric == "euclidean":
            cost_diag = cost_diag ** 0.5
        total = float(cost_diag.sum())
        return _arange(x.shape[0], x), total, total


class FunctionMatcher(Matcher):
    """A user's solver: ``fn(cost) -> cols`` or scipy-style ``fn(cost) -> (rows, cols)``."""

    def __init__(self, fn: Callable):
        self.fn = fn
        self.name = getattr(fn, "__name__", type(fn).__name__)

    def solve(self, cost):
        out = self.fn(cost)
        if isinstance(out, tuple) and len(out) == 2:
            rows, cols = (to_numpy(o).astype(np.int64) for o in out)
            ordered = np.empty_like(cols)
            ordered[rows] = cols
            out = ordered
        cols = to_numpy(out).astype(np.int64).reshape(-1)
        n = cost.shape[0]
        if cols.shape != (n,) or not np.array_equal(np.sort(cols), np.arange(n)):
            raise ValueError(
                f"matcher {self.name!r} did not return a permutation of range({n}); a matcher "
                "must return cols (or scipy-style (rows, cols)) assigning each noise exactly once."
            )
        return cols

    def __repr__(self):
        return f"FunctionMatcher({self.name})"


def is_permutation(cols: Any, n: int) -> bool:
    cols = to_numpy(cols).reshape(-1)
    return cols.shape == (n,) and np.array_equal(np.sort(cols), np.arange(n))


def _arange(n: int, like: Any) -> Any:
    if is_torch(like):
        import torch

        return torch.arange(n, device=like.device)
    return np.arange(n)


def _sum_at(cost: Any, cols: Any) -> float:
    rows = _arange(cost.shape[0], cost)
    if is_torch(cost):
        import torch

        cols = torch.as_tensor(cols, device=cost.device)
    return float(cost[rows, cols].sum())


def _trace(cost: Any) -> float:
    n = min(cost.shape)
    return float(cost[:n, :n].diagonal().sum())
