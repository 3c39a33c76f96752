"""DANSM's greedy pairing, vectorised: nearest pairs first, with no Python loop over samples.

Each round matches every mutually-nearest (sample, noise) pair among those still free, then
drops them. The globally nearest free pair is always mutual, so every round makes progress,
and the result is the classic greedy matching in order of increasing distance (for distinct
costs). It is order-independent, unlike a sequential scan over the sample stream. It runs in
the cost's framework and on its device, or on the host where shape-changing loops recompile
every round (JAX).
"""

from __future__ import annotations

from noisepair.backend import get_backend
from noisepair.matchers.base import Matcher


class Greedy(Matcher):
    name = "greedy"

    def solve(self, cost, *, dim=None):
        b = get_backend(cost)
        if not b.dynamic_shapes:
            cols, info = self.solve(b.to_numpy(cost))
            return b.as_index(cols, cost), info
        cols = b.full(cost.shape[0], -1, cost, dtype=b.int64())
        rows_left, cols_left = b.arange(cost.shape[0], cost), b.arange(cost.shape[1], cost)
        sub = cost
        while rows_left.shape[0]:
            best_col = sub.argmin(1)
            best_row = sub.argmin(0)
            mutual = best_row[best_col] == b.arange(rows_left.shape[0], cost)
            cols = b.put(cols, rows_left[mutual], cols_left[best_col[mutual]])
            taken = b.put(b.full(cols_left.shape[0], 0, cost), best_col[mutual], 1)
            keep = taken == 0
            rows_left, cols_left = rows_left[~mutual], cols_left[keep]
            sub = sub[~mutual][:, keep]
        return cols, {}
