"""``method="auto"``: the fastest solver measured for the batch size, dimension and device.

Rules, from benchmarks/results/matching.md and ../shared/reference/solver-baselines.md (2-core
AVX-512 CPU):

- exact (the default): for low-dimensional data (D <= 16) scipy below B=256 and POT's network
  simplex (``emd``) from B >= 256, where near-tied costs slow every Jonker-Volgenant code badly (D=2, B=1024: emd
  0.12 s, lapjv 0.6 s, scipy 0.65 s); the AVX float32 Jonker-Volgenant of the ``lapjv`` package
  (``hungarian``) everywhere else (12-40x faster than scipy at B >= 512, D >= 64). Both return
  the same optimum as scipy and release the GIL. CUDA tensors are solved on the host (one
  device-to-host copy of the cost matrix): no exact GPU solver ships with noisepair.
- ``approximate=True``: the auction (relative gap <= ``tol`` reported in ``info["gap_bound"]``)
  on CUDA tensors (torch backend: cost and assignment stay on the device), and on CPU from
  B >= 1024 at D > 16 when numba is installed (compiled candidate backend: 1.3x lapjv's solve
  speed at B=1024, about 6x at B=4096, D >= 3072); the exact choice above otherwise.
"""
from __future__ import annotations

from typing import Any

from noisepair._frameworks import is_torch
from noisepair.matchers.auction import Auction, has_numba
from noisepair.matchers.base import Matcher
from noisepair.matchers.exact import EMD, Hungarian

#: at or below this dimension the costs are near-tied and the network simplex wins.
LOW_DIM = 16
#: from this batch size on (at low dimension) the network simplex beats Jonker-Volgenant.
EMD_MIN_BATCH = 256
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
        low_dim = dim is not None and dim <= LOW_DIM
        if self.approximate and batch >= AUCTION_MIN_BATCH and not low_dim and has_numba():
            return self._auction
        if low_dim:
            # near-tied costs: lapjv is 2x slower than scipy at B=128 and 5x slower than emd at 1024
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
