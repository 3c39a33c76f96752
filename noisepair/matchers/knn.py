"""Improved Immiscible Diffusion's KNN: each sample draws k fresh noises and keeps the nearest.

O(B k D), fully parallel, but not a permutation: the noise emitted is no longer exactly
N(0, I) (its norm shrinks and it leans towards the data mean as k grows). It is a
:class:`~noisepair.matchers.base.Selector`, opt-in, marks its batches
``exact_permutation=False``, and ``noisepair.checks`` detects it at large k.
"""

from __future__ import annotations

from noisepair.matchers.base import Selector


class KNN(Selector):
    name = "knn"

    def __init__(self, k: int = 4):
        if int(k) < 1:
            raise ValueError(f"knn needs k >= 1 candidates per sample, got k={k}.")
        self.k = self.candidates = int(k)

    def select(self, dist):
        return dist.argmin(1)

    def __repr__(self):
        return f"KNN(k={self.k})"
