"""Improved Immiscible Diffusion's KNN: each sample draws k fresh noises and keeps the nearest.

O(B k D), fully parallel, but not a permutation: the noise emitted is no longer exactly
N(0, I) (its norm shrinks and it leans towards the data mean as k grows). It is opt-in,
marks its batches ``exact_permutation=False``, and ``noisepair.checks`` detects it at large k.
"""
from __future__ import annotations

from noisepair._frameworks import is_torch
from noisepair.matchers.base import Matcher


class KNN(Matcher):
    name = "knn"
    permutation = False

    def __init__(self, k: int = 4):
        if int(k) < 1:
            raise ValueError(f"knn needs k >= 1 candidates per sample, got k={k}.")
        self.k = self.candidates = int(k)

    def pair(self, x, z, metric="sqeuclidean", precision="float32"):
        b, d = x.shape
        if z.shape[0] != b * self.k:
            raise ValueError(
                f"knn with k={self.k} needs k*B = {b * self.k} candidate noises, got {z.shape[0]}."
            )
        zk = z.reshape(b, self.k, d)
        if is_torch(x):
            import torch

            x32, zk32 = x.float(), zk.float()
            dist = ((zk32 - x32[:, None, :]) ** 2).sum(-1)
            choice = dist.argmin(1)
            rows = torch.arange(b, device=x.device)
        else:
            import numpy as np

            x32, zk32 = x.astype(np.float32), zk.astype(np.float32)
            dist = ((zk32 - x32[:, None, :]) ** 2).sum(-1)
            choice = dist.argmin(1)
            rows = np.arange(b)
        if metric == "euclidean":
            dist = dist ** 0.5
        return rows * self.k + choice, float(dist[rows, choice].sum()), float(dist[:, 0].sum())

    def __repr__(self):
        return f"KNN(k={self.k})"
