"""Entropic OT (POT's Sinkhorn, which runs on numpy or torch/GPU) rounded to a permutation.

A Sinkhorn plan is nearly uniform and its row argmax repeats a large share of the noise, so the
plan is rounded with an exact assignment that maximises the plan mass kept: the result is always
a true permutation. Needs POT (the ``pot`` extra).
"""

from __future__ import annotations

from noisepair.backend import get_backend
from noisepair.matchers.base import Matcher
from noisepair.matchers.exact import Hungarian, import_pot


class Sinkhorn(Matcher):
    name = "sinkhorn"

    def __init__(self, reg: float = 0.05, num_iter_max: int = 1000, stop_thr: float = 1e-9):
        """``reg`` is relative to the median cost (the absolute one is reg * median(C))."""
        if not (isinstance(reg, (int, float)) and not isinstance(reg, bool) and reg > 0):
            raise ValueError(
                f"sinkhorn needs reg > 0 (the entropic regularisation, relative to the median "
                f"cost; e.g. 0.05), got reg={reg!r}. For the exact assignment (reg -> 0) use "
                "method='hungarian' or 'emd'."
            )
        self.reg, self.num_iter_max, self.stop_thr = float(reg), num_iter_max, stop_thr

    def solve(self, cost, *, dim=None):
        ot = import_pot(self.name)
        b = get_backend(cost)
        n = cost.shape[0]
        c = b.float64(cost)
        scale = b.median(c)
        c = c / scale if float(scale) > 0 else c
        w = b.full(n, 1.0 / n, c, dtype=c.dtype)
        plan = ot.sinkhorn(
            w,
            w,
            c,
            self.reg,
            method="sinkhorn_log",
            numItermax=self.num_iter_max,
            stopThr=self.stop_thr,
        )
        cols, _ = Hungarian().solve(-plan * n)
        return cols, {}

    def __repr__(self):
        return f"Sinkhorn(reg={self.reg})"
