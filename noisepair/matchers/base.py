"""The matcher contract: what a matcher is, and the one function it implements.

Like ``scipy.optimize.linear_sum_assignment`` and POT's ``ot.emd``, a matcher is a solver and
nothing else: pairing (noisepair.pairing) computes the cost once and hands it over.

- A :class:`Matcher` permutes the noise drawn. ``solve(cost, *, dim=None) -> (cols, info)``
  gets the (B, B) cost matrix (sample i, noise j) and returns ``cols``, a permutation of
  range(B) (``cols[i]`` is the noise paired with sample i, in the framework and on the device
  of ``cost`` or as a numpy array), and ``info``, a dict of what the solver wants reported. The
  only key pairing reads is ``gap``: a certified upper bound on (cost of ``cols`` - optimal
  cost), absolute; every other key is passed through to ``PairedBatch.info``. ``dim`` is the
  number of values per sample, for solvers whose choice depends on it.
  ``solve`` is a pure function of its arguments: no state is kept between calls, so one
  instance may serve many loaders and threads.
- A :class:`Selector` does not permute: each sample picks one of its own ``candidates`` fresh
  draws (KNN). ``select(dist) -> choice`` gets the (B, candidates) distances of each sample to
  its candidates and returns the index of the one kept. The noise emitted is then no longer a
  permutation of N(0, I) draws, which is why it is a kind of its own.

Both declare ``permutation`` (the noise emitted is a reordering of the noise drawn: it stays
exactly N(0, I)), ``exact`` (the result is an optimal assignment) and ``candidates`` (noise
draws per sample). Any callable ``cost -> cols`` or ``cost -> (rows, cols)`` is wrapped as a
Matcher by :class:`FunctionMatcher`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from noisepair.backend import get_backend, to_numpy


class Matcher:
    """Permutes the noise drawn: subclasses implement :meth:`solve`."""

    name = "matcher"
    #: the noise emitted is a permutation of the noise drawn (the Gaussian invariant).
    permutation = True
    #: ``solve`` returns an optimal assignment (a certified ``gap`` of 0).
    exact = False
    #: noise vectors drawn per sample.
    candidates = 1

    def solve(self, cost: Any, *, dim: int | None = None) -> tuple[Any, dict]:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class Selector:
    """Keeps one of each sample's ``candidates`` own draws: subclasses implement :meth:`select`."""

    name = "selector"
    permutation = False
    exact = False
    candidates = 1

    def select(self, dist: Any) -> Any:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class Random(Selector):
    """No matching: each sample keeps the noise drawn for it. The baseline arm of every A/B.

    The identity is a permutation, so the noise stays exactly N(0, I); as a selector over one
    candidate it needs only the B distances of the pairs as drawn, not a B x B cost matrix."""

    name = "random"
    permutation = True

    def select(self, dist: Any) -> Any:
        b = get_backend(dist)
        return b.full(dist.shape[0], 0, dist, dtype=b.int64())


class FunctionMatcher(Matcher):
    """A user's solver: ``fn(cost) -> cols`` or scipy-style ``fn(cost) -> (rows, cols)``."""

    def __init__(self, fn: Callable):
        self.fn = fn
        self.name = getattr(fn, "__name__", type(fn).__name__)

    def solve(self, cost, *, dim=None):
        out = self.fn(cost)
        if isinstance(out, tuple) and len(out) == 2:
            rows, cols = (self._indices(o) for o in out)
            ordered = np.full_like(cols, -1)
            ordered[rows] = cols
            out = ordered
        cols = self._indices(out).reshape(-1)
        n = cost.shape[0]
        if not is_permutation(cols, n):
            raise ValueError(
                f"matcher {self.name!r} did not return a permutation of range({n}); a matcher "
                "must return cols (or scipy-style (rows, cols)) assigning each noise exactly once."
            )
        return cols, {}

    def _indices(self, out: Any) -> np.ndarray:
        """Integer indices; float ones are refused, not truncated (2.7 is no column)."""
        values = np.asarray(to_numpy(out))
        if values.dtype.kind not in "iu":
            raise TypeError(
                f"matcher {self.name!r} returned {values.dtype} indices; a matcher returns integer "
                "column indices (e.g. scipy's linear_sum_assignment(cost)[1], or cols.astype(int) "
                "if your solver's are whole numbers in floats)."
            )
        return values.astype(np.int64)

    def __repr__(self):
        return f"FunctionMatcher({self.name})"


def is_permutation(cols: Any, n: int) -> bool:
    cols = to_numpy(cols).reshape(-1)
    return cols.shape == (n,) and np.array_equal(np.sort(cols), np.arange(n))
