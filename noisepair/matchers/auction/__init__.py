"""Approximate assignment by Bertsekas' auction with epsilon-scaling, within a certified bound.

Two implementations behind ``method="auction"``: when numba is installed, the compiled auction on
a candidate graph (:mod:`.candidates`), on the host (a CUDA cost is copied there first); without
numba, or with ``backend="torch"``, the dense auction vectorised in torch (:mod:`.dense`), which
runs where the cost lives. Both end with an LP-duality bound on the distance to the optimal total
cost, reported as ``info["gap"]``, and both always return a permutation.

Why the host for CUDA costs too: the dense auction synchronises with the host at every bidding
round, and it needs thousands of rounds, so on a GPU it loses to one copy of the B x B cost and
the compiled auction (benchmarks/results/gpu.md); on a CPU it spends its time in Python between
rounds. The compiled candidate auction beats lapjv from about a thousand samples on.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from noisepair.backend import get_backend
from noisepair.matchers.auction.common import has_numba
from noisepair.matchers.base import Matcher
from noisepair.matchers.exact import Hungarian


class Auction(Matcher):
    """Epsilon-scaling auction. ``tol``: target relative gap to the optimal total cost.

    ``backend``: ``"auto"`` (the compiled candidate auction when numba is installed, else
    torch), ``"candidates"`` or ``"torch"``. ``neighbors``: k, noises kept per sample by the
    candidate auction.
    """

    name = "auction"

    def __init__(
        self,
        tol: float = 1e-3,
        theta: float = 6.0,
        eps0: float = 4.0,
        max_rounds: int = 200_000,
        backend: str = "auto",
        neighbors: int = 48,
    ):
        if not tol > 0:
            raise ValueError(f"tol must be > 0 (a relative gap), got {tol}.")
        if int(neighbors) < 1:
            raise ValueError(f"neighbors must be >= 1 (noises kept per sample), got {neighbors}.")
        if backend not in ("auto", "candidates", "torch"):
            raise ValueError(f"backend must be 'auto', 'candidates' or 'torch', got {backend!r}.")
        self.tol, self.theta, self.eps0 = float(tol), float(theta), float(eps0)
        self.max_rounds, self.backend, self.neighbors = int(max_rounds), backend, int(neighbors)

    def solve(self, cost: Any, *, dim: int | None = None) -> tuple[Any, dict]:
        b = get_backend(cost)
        if self.backend == "candidates" or (self.backend == "auto" and has_numba()):
            cols, info = self._solve_candidates(b.to_numpy(cost))
            return b.as_index(cols, cost), info
        from noisepair.matchers.auction.dense import auction_on_torch

        return auction_on_torch(
            cost, tol=self.tol, theta=self.theta, eps0=self.eps0, max_rounds=self.max_rounds
        )

    def _solve_candidates(self, c: np.ndarray) -> tuple[np.ndarray, dict]:
        if not has_numba():
            raise ImportError(
                'backend="candidates" needs numba: pip install numba (the "fast" '
                'extra of noisepair), or use backend="torch".'
            )
        from noisepair.matchers.auction.candidates import candidate_auction

        if c.ndim != 2 or c.shape[0] != c.shape[1]:
            raise ValueError(f"the auction needs a square cost matrix, got {tuple(c.shape)}.")
        cols, info = candidate_auction(
            c, tol=self.tol, k=self.neighbors, theta=self.theta, eps0=self.eps0
        )
        info = dict(info, backend="candidates")
        if info["gap_bound"] > self.tol:  # near-tied costs can defeat the candidates
            cols, _ = Hungarian().solve(c)
            info.update(gap=0.0, gap_bound=0.0, gap_bound_gain=0.0, fallback="hungarian")
        return cols, info

    def __repr__(self):
        return f"Auction(tol={self.tol})"


__all__ = ["Auction", "has_numba"]
