"""Approximate assignment by Bertsekas' auction with epsilon-scaling, within a certified bound.

Two implementations behind ``method="auction"``: when numba is installed, the compiled auction on
a candidate graph (:mod:`.candidates`), on the host (a CUDA cost is copied there first); without
numba, or with ``backend="device"``, the auction in torch that runs where the cost lives
(:mod:`.device`: blocks of bidding rounds with no host synchronisation inside, captured in CUDA
graphs on a GPU). Both end with an LP-duality bound on the distance to the optimal total cost,
reported as ``info["gap"]``, and both always return a permutation.

Why the host for CUDA costs by default: the torch auction measured on a GPU so far (the one
``.device`` replaced) synchronised with the host at every round and lost to one copy of the
B x B cost and the compiled auction (benchmarks/results/gpu.md). The device auction is chosen
only when asked for until its own GPU rows are measured. On a CPU the compiled candidate
auction beats lapjv from about a thousand samples on.
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

    ``backend``: ``"auto"`` (the compiled candidate auction when numba is installed, else the
    device auction), ``"candidates"`` or ``"device"`` (``"torch"``, its former name, is the
    same). ``neighbors``: k, noises kept per sample by the candidate auction. ``warm_start``
    (Sinkhorn iterations for the starting prices) and ``block`` (bidding rounds between host
    checks): the device auction's. Where a bound misses ``tol`` the exact solver answers
    (``info["fallback"] = "hungarian"``).
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
        warm_start: int = 32,
        block: int = 8,
    ):
        if not tol > 0:
            raise ValueError(f"tol must be > 0 (a relative gap), got {tol}.")
        if int(neighbors) < 1:
            raise ValueError(f"neighbors must be >= 1 (noises kept per sample), got {neighbors}.")
        if backend not in ("auto", "candidates", "device", "torch"):
            raise ValueError(
                f"backend must be 'auto', 'candidates' or 'device' ('torch'), got {backend!r}."
            )
        if int(warm_start) < 0 or int(block) < 1:
            raise ValueError(
                f"warm_start must be >= 0 (Sinkhorn iterations) and block >= 1 (rounds between "
                f"host checks), got warm_start={warm_start}, block={block}."
            )
        self.tol, self.theta, self.eps0 = float(tol), float(theta), float(eps0)
        self.max_rounds, self.neighbors = int(max_rounds), int(neighbors)
        self.backend = "device" if backend == "torch" else backend
        self.warm_start, self.block = int(warm_start), int(block)

    def solve(self, cost: Any, *, dim: int | None = None) -> tuple[Any, dict]:
        b = get_backend(cost)
        if self.backend == "candidates" or (self.backend == "auto" and has_numba()):
            cols, info = self._solve_candidates(b.to_numpy(cost))
            return b.as_index(cols, cost), info
        return self._solve_device(cost, b)

    def _solve_device(self, cost: Any, b) -> tuple[Any, dict]:
        """The device auction on a torch tensor where it lives (other arrays: a CPU tensor)."""
        import torch

        from noisepair.matchers.auction.device import device_auction

        on_torch = b.name == "torch"
        c = cost if on_torch else torch.from_numpy(np.ascontiguousarray(b.to_numpy(cost)))
        cols, info = device_auction(
            c,
            tol=self.tol,
            theta=self.theta,
            eps0=self.eps0,
            warm_start=self.warm_start,
            block=self.block,
            max_rounds=self.max_rounds,
        )
        if info["gap_bound"] > self.tol:  # rounding at the last phase, or max_rounds
            cols, _ = Hungarian().solve(cost)
            info.update(gap=0.0, gap_bound=0.0, gap_bound_gain=0.0, fallback="hungarian")
        return b.as_index(cols if on_torch else np.asarray(cols), cost), info

    def _solve_candidates(self, c: np.ndarray) -> tuple[np.ndarray, dict]:
        if not has_numba():
            raise ImportError(
                'backend="candidates" needs numba: pip install numba (the "fast" '
                'extra of noisepair), or use backend="device".'
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
