"""Exact assignment on CPU: Jonker-Volgenant (the lapjv package, or scipy) and POT's EMD.

Costs on a GPU are copied to the host once: no exact GPU solver ships with noisepair.
"""

from __future__ import annotations

import functools

import numpy as np
from lapjv import lapjv
from scipy.optimize import linear_sum_assignment

from noisepair.backend import to_numpy
from noisepair.matchers.base import Matcher, is_permutation


class Hungarian(Matcher):
    """Exact linear assignment (minimum total cost).

    ``solver="lapjv"`` (default: the AVX float32 Jonker-Volgenant of the ``lapjv`` package,
    the fastest exact solver from a handful of dimensions on) or ``"scipy"``
    (scipy.optimize.linear_sum_assignment, the Immiscible Diffusion reference). Both release
    the GIL, so the prefetch thread does not stall the training loop. lapjv works in float32:
    where a cost does not fit float32, or lapjv's answer is not a permutation (it cannot tell
    some near-ties apart), scipy answers.
    """

    name = "hungarian"
    exact = True

    def __init__(self, solver: str | None = None):
        if solver not in (None, "lapjv", "scipy"):
            raise ValueError(f"unknown solver {solver!r}; choose 'lapjv' or 'scipy'.")
        self.solver = solver or "lapjv"

    def solve(self, cost, *, dim=None):
        c = to_numpy(cost)
        if c.shape[0] == 1:
            return np.zeros(1, dtype=np.int64), {}
        if self.solver == "lapjv":
            lo = c.min()
            if c.dtype == np.float32 and c.flags.c_contiguous and lo >= 0:
                c32 = c  # noisepair's own costs: no copy of the (B, B) matrix
            else:
                with np.errstate(over="ignore"):
                    c32 = np.ascontiguousarray(c - lo, dtype=np.float32)
            if np.isfinite(c32.max()):  # lapjv corrupts memory on inf: beyond float32, scipy
                cols = lapjv(c32)[0].astype(np.int64)
                if is_permutation(cols, c.shape[0]):
                    return cols, {}
        return linear_sum_assignment(c)[1].astype(np.int64), {}

    def __repr__(self):
        return f"Hungarian(solver={self.solver!r})"


class EMD(Matcher):
    """POT's exact network-simplex solver (``ot.emd``): the fastest exact solver on
    low-dimensional, near-tied costs, where Jonker-Volgenant codes slow down. The optimal plan
    for uniform weights is a permutation matrix, read off by row argmax and verified. Needs POT
    (the ``pot`` extra)."""

    name = "emd"
    exact = True

    def __init__(self, num_iter_max: int = 10_000_000):
        self.num_iter_max = num_iter_max

    def solve(self, cost, *, dim=None):
        ot = import_pot(self.name)
        c = np.asarray(to_numpy(cost), dtype=np.float64)
        n = c.shape[0]
        w = np.full(n, 1.0 / n)
        plan = ot.emd(w, w, c, numItermax=self.num_iter_max)
        cols = plan.argmax(1).astype(np.int64)
        if not is_permutation(cols, n):  # degenerate plan: round it exactly
            cols, _ = Hungarian().solve(-plan)
        return cols, {}


@functools.cache
def has_pot() -> bool:
    """Whether POT (the ``pot`` extra) is installed."""
    try:
        import ot  # noqa: F401
    except ImportError:
        return False
    return True


def import_pot(method: str):
    """POT's ``ot`` module, or an ImportError that names the extra to install."""
    try:
        import ot
    except ImportError:
        raise ImportError(f"method={method!r} needs POT: pip install 'noisepair[pot]'") from None
    return ot
