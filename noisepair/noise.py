"""Seeded Gaussian draws, one stream per (seed, rank, epoch, batch index).

The stream depends on nothing else (not on prefetch depth, thread timing or the method), so two
runs with the same seed see the same draws, and a resumed run sees the noise it would have seen.
Draws are made in the sample's framework (numpy in, numpy out; torch or JAX likewise) and on
the requested device; each framework derives its own stream from the four integers (numpy's
SeedSequence, a torch Generator seeded from it, JAX's ``fold_in``).
"""

from __future__ import annotations

from typing import Any

from noisepair.backend import get_backend


def draw_like(
    sample: Any,
    count: int,
    *,
    seed: int,
    rank: int = 0,
    epoch: int = 0,
    index: int = 0,
    device: Any = None,
) -> Any:
    """``count`` standard normal vectors shaped like one item of ``sample``, same dtype."""
    parts = (int(seed), int(rank), int(epoch), int(index))
    return get_backend(sample).normal_from_seed(parts, (count, *sample.shape[1:]), sample, device)
