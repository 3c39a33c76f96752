"""``method="auto"``: the fastest solver measured for the batch size, dimension and device.

Rules, from benchmarks/results/matching.md, ../shared/reference/solver-baselines.md and a sweep of
D in {2, 3, 4, 8, 16, 32} on clustered and Gaussian data (2-core AVX-512 CPU):

- exact (the default): at D <= 3 scipy below B=128 and POT's network simplex (``emd``) from
  B >= 128: near-tied costs slow every Jonker-Volgenant code badly there (D=2, B=1024 on 8
  gaussians: emd 0.15 s, lapjv 0.6 s, scipy 0.5 s; at B=128 emd is 1.04-1.37x faster than scipy
  on 8 gaussians, the common 2-D toy, over 5 seeds; on one Gaussian blob scipy is 1.4x faster
  than emd, so emd is the safer bet, not always the best). From D=4 on the AVX float32
  Jonker-Volgenant of the ``lapjv`` package (``hungarian``) is the fastest or within 1.4x of it
  (D=16, B=1024: lapjv 25-95 ms, emd 250-340 ms, scipy 150-440 ms; 12-40x faster than scipy at
  B >= 512, D >= 64). All return the same optimum as scipy and release the GIL. CUDA tensors are
  solved on the host (one device-to-host copy of the cost matrix): no exact GPU solver ships
  with noisepair.
- ``approximate=True``: the auction (relative gap <= ``tol`` reported in ``info["gap_bound"]``)
  on CUDA tensors (torch backend: cost and assignment stay on the device), and on CPU from
  B >= 1024 at D > 16 when numba is installed (compiled candidate backend: 1.6-1.9x lapjv's
  solve at B=1024, 10-13x at B=4096); the exact choice above otherwise. Below D=17 tight clusters
  are common (toy data) and defeat the auction's candidates, which then fall back to lapjv.
"""
from __future__ import annotations

from typing import Any

from noisepair._frameworks import is_torch
from noisepair.matchers.auction import Auction, has_numba
from noisepair.matchers.base import Matcher
from noisepair.matchers.exact import EMD, Hungarian

#: at or below this dimension costs are near-tied: scipy and the network simplex beat lapjv.
NEAR_TIE_DIM = 3
#: from this batch size on (at D <= NEAR_TIE_DIM) the network simplex beats scipy.
EMD_MIN_BATCH = 128
#: from this dimension on the compiled CPU auction is tried (approximate=True only).
AUCTION_MIN_DIM = 17
#: from this batch size on the compiled CPU auction beats lapjv (approximate=True only).
AUCTION_MIN_BATCH = 1024


class Auto(Matcher):
    name = "auto"

    def __init__(self, approximate: bool = False, tol: float = 1e-3):
        self.approximate = bool(approximate)
        self.tol = float(tol)
        self._hungarian = Hungarian()
        self._emd = EMD()
        self._scipy = Hungarian("scipy")
        self._auction = Auction(tol=self.tol)
        self.last_info: dict = {}
        self._dim: int | None = None

    @property
    def exact(self) -> bool:
        return not self.approximate

    def choose(self, batch: int, dim: int | None = None, device: str = "cpu") -> Matcher:
        """The matcher used for a batch of ``batch`` items of ``dim`` values on ``device``."""
        if self.approximate and device == "cuda":
            return self._auction
        auction_dim = dim is None or dim >= AUCTION_MIN_DIM
        if self.approximate and batch >= AUCTION_MIN_BATCH and auction_dim and has_numba():
            return self._auction
        if dim is not None and dim <= NEAR_TIE_DIM:
            return self._emd if batch >= EMD_MIN_BATCH else self._scipy
        return self._hungarian

    def pair(self, x, z, metric="sqeuclidean", precision="float32"):
        self._dim = int(x.shape[1])
        try:
            return super().pair(x, z, metric, precision)
        finally:
            self._dim = None

    def solve(self, cost: Any) -> Any:
        device = cost.device.type if is_torch(cost) else "cpu"
        chosen = self.choose(int(cost.shape[0]), self._dim, device)
        cols = chosen.solve(cost)
        self.last_info = dict(getattr(chosen, "last_info", None) or {"gap": 0.0}, solver=chosen.name)
        if is_torch(cost) and not is_torch(cols):
            import torch

            cols = torch.as_tensor(cols, device=cost.device)
        return cols

    def __repr__(self):
        return f"Auto(approximate={self.approximate})"
