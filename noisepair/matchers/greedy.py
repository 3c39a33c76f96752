"""DANSM's greedy pairing, vectorised: nearest pairs first, with no Python loop over samples.

Each round matches every mutually-nearest (sample, noise) pair among those still free, then
drops them. The globally nearest free pair is always mutual, so every round makes progress,
and the result is the classic greedy matching in order of increasing distance (for distinct
costs). It is order-independent, unlike a sequential scan over the sample stream.
"""
from __future__ import annotations

import numpy as np

from noisepair._frameworks import is_torch
from noisepair.matchers.base import Matcher


class Greedy(Matcher):
    name = "greedy"

    def solve(self, cost):
        if is_torch(cost):
            import torch

            def arange(n):
                return torch.arange(n, device=cost.device)

            cols = torch.full((cost.shape[0],), -1, dtype=torch.long, device=cost.device)
        else:
            arange = np.arange
            cols = np.full(cost.shape[0], -1, dtype=np.int64)
        rows_left, cols_left = arange(cost.shape[0]), arange(cost.shape[1])
        sub = cost
        while rows_left.shape[0]:
            best_col = sub.argmin(1)
            best_row = sub.argmin(0)
            mutual = best_row[best_col] == arange(rows_left.shape[0])
            cols[rows_left[mutual]] = cols_left[best_col[mutual]]
            keep_cols = _not_in(cols_left.shape[0], best_col[mutual], cost)
            rows_left, cols_left = rows_left[~mutual], cols_left[keep_cols]
            sub = sub[~mutual][:, keep_cols]
        return cols


def _not_in(n, taken, like):
    if is_torch(like):
        import torch

        keep = torch.ones(n, dtype=torch.bool, device=like.device)
    else:
        keep = np.ones(n, dtype=bool)
    keep[taken] = False
    return keep
