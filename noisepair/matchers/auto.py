"""``method="auto"``: the fastest sound solver for the batch size, dimension and device.

Rules (the measurements behind them are in benchmarks/results/matching.md):

- exact (the default): at very low dimension (D <= 3) costs are near-tied and every
  Jonker-Volgenant code slows down badly: scipy answers small batches and POT's network simplex
  (``emd``) larger ones (scipy when POT is not installed). From D=4 on the AVX float32
  Jonker-Volgenant of the ``lapjv`` package (``hungarian``) is the fastest or close to it. All
  return the same optimum and release the GIL. CUDA costs are solved on the host: no exact GPU
  solver ships with noisepair.
- ``approximate=True``: the auction (relative gap <= ``tol``, reported in ``info["gap_bound"]``)
  for large batches of non-toy dimension when numba is installed: the compiled candidate auction
  then beats lapjv, for CUDA costs too (copied to the host once; benchmarks/results/gpu.md).
  The exact choice above otherwise, without numba too. At low dimension tight clusters are
  common and defeat the auction's candidates.

The device auction (``method="auction"`` with ``backend="device"``, which stays on the GPU) is
not chosen automatically: it has not been measured on a GPU yet (benchmarks/gpu.py has its
rows). The dense torch auction it replaced was measured there (faster than the host's lapjv
only at B=4096 and D >= 3072, without numba); that rule went with it.
"""

from __future__ import annotations

from typing import Any

from noisepair.backend import get_backend
from noisepair.matchers.auction import Auction, has_numba
from noisepair.matchers.base import Matcher
from noisepair.matchers.exact import EMD, Hungarian, has_pot

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

    @property
    def exact(self) -> bool:
        return not self.approximate

    def choose(self, batch: int, dim: int | None = None, device: str = "cpu") -> Matcher:
        """The matcher used for a batch of ``batch`` items of ``dim`` values on ``device``."""
        if (
            self.approximate
            and batch >= AUCTION_MIN_BATCH
            and (dim is None or dim >= AUCTION_MIN_DIM)
            and has_numba()
        ):
            return self._auction
        if dim is not None and dim <= NEAR_TIE_DIM:
            return self._emd if batch >= EMD_MIN_BATCH and has_pot() else self._scipy
        return self._hungarian

    def solve(self, cost: Any, *, dim: int | None = None) -> tuple[Any, dict]:
        b = get_backend(cost)
        chosen = self.choose(int(cost.shape[0]), dim, b.device(cost))
        cols, info = chosen.solve(cost, dim=dim)
        info = dict(info, solver=chosen.name)
        if chosen.exact:
            info.setdefault("gap", 0.0)
        return b.as_index(cols, cost), info

    def __repr__(self):
        return f"Auto(approximate={self.approximate})"
