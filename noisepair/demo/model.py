"""A small velocity/epsilon network for vectors: an MLP with a sinusoidal time embedding (and,
for a conditional model, a learned class embedding added to it)."""

from __future__ import annotations

import math

import torch
from torch import nn


class TimeMLP(nn.Module):
    """``f(x, t)`` for x of shape (B, D) and t in [0, 1] of shape (B,); ``f(x, t, y)`` with
    integer labels y of shape (B,) when built with ``classes`` > 0."""

    def __init__(
        self, dim: int, hidden: int = 256, depth: int = 3, time_dim: int = 32, classes: int = 0
    ):
        super().__init__()
        self.time_dim = time_dim
        self.label = nn.Embedding(classes, time_dim) if classes > 0 else None
        layers, width = [], dim + time_dim
        for _ in range(depth):
            layers += [nn.Linear(width, hidden), nn.SiLU()]
            width = hidden
        layers.append(nn.Linear(width, dim))
        self.net = nn.Sequential(*layers)

    def embed(self, t: torch.Tensor) -> torch.Tensor:
        half = self.time_dim // 2
        freqs = torch.exp(-math.log(1000.0) * torch.arange(half, device=t.device) / half)
        angles = 1000.0 * t.float()[:, None] * freqs[None, :] / 10.0
        return torch.cat([angles.sin(), angles.cos()], 1)

    def forward(
        self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None
    ) -> torch.Tensor:
        emb = self.embed(t)
        if self.label is not None:
            if y is None:
                raise ValueError("this model is conditional: pass the labels y.")
            emb = emb + self.label(y)
        return self.net(torch.cat([x, emb], 1))
