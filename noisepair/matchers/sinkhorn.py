"""Entropic OT (POT's Sinkhorn, which runs on numpy or torch/GPU) rounded to a permutation.

A Sinkhorn plan is nearly uniform, and its row argmax repeats 30-90% of the noise (measured in
../shared/reference/solver-baselines.md), so the plan is rounded with an exact assignment that
maximises the plan mass kept: the result is always a true permutation.
"""
from __future__ import annotations

from noisepair._frameworks import is_torch
from noisepair.matchers.base import Matcher
from noisepair.matchers.exact import Hungarian


class Sinkhorn(Matcher):
    name = "sinkhorn"

    def __init__(self, reg: float = 0.05, num_iter_max: int = 1000, stop_thr: float = 1e-9):
        """``reg`` is relative to the median cost (the absolute one is reg * median(C))."""
        self.reg, self.num_iter_max, self.stop_thr = reg, num_iter_max, stop_thr

    def solve(self, cost):
        import ot

        n = cost.shape[0]
        if is_torch(cost):
            import torch

            c = cost.double()
            w = torch.full((n,), 1.0 / n, dtype=torch.float64, device=cost.device)
            scale = c.median()
        else:
            import numpy as np

            c = cost.astype(np.float64)
            w = np.full(n, 1.0 / n)
            scale = np.median(c)
        c = c / scale if float(scale) > 0 else c
        plan = ot.sinkhorn(w, w, c, self.reg, method="sinkhorn_log",
                           numItermax=self.num_iter_max, stopThr=self.stop_thr)
        return Hungarian().solve(-plan * n)

    def __repr__(self):
        return f"Sinkhorn(reg={self.reg})"
