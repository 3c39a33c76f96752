"""Seeded Gaussian draws, one stream per (seed, rank, epoch, batch index).

The stream depends on nothing else (not on prefetch depth, thread timing or the method), so two
runs with the same seed see the same draws, and a resumed run sees the noise it would have seen.
Draws are made in the sample's framework: numpy in, numpy out; torch in, torch out, on the
requested device.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from noisepair._frameworks import is_torch


def seed_sequence(seed: int, rank: int, epoch: int, index: int) -> np.random.SeedSequence:
    return np.random.SeedSequence([int(seed), int(rank), int(epoch), int(index)])


def draw_like(
    sample: Any, count: int, *, seed: int, rank: int = 0, epoch: int = 0, index: int = 0,
    device: Any = None,
) -> Any:
    """``count`` standard normal vectors shaped like one item of ``sample``, same dtype."""
    ss = seed_sequence(seed, rank, epoch, index)
    shape = (count, *sample.shape[1:])
    if is_torch(sample):
        import torch

        device = sample.device if device is None else torch.device(device)
        gen = torch.Generator(device=device)
        gen.manual_seed(int(ss.generate_state(1, np.uint64)[0] >> np.uint64(1)))
        draw_dtype = sample.dtype if sample.dtype in (torch.float32, torch.float64) else torch.float32
        z = torch.randn(shape, generator=gen, device=device, dtype=draw_dtype)
        return z.to(sample.dtype)
    draw_dtype = sample.dtype if sample.dtype in (np.float32, np.float64) else np.float32
    z = np.random.default_rng(ss).standard_normal(shape, dtype=draw_dtype)
    return z.astype(sample.dtype, copy=False)
