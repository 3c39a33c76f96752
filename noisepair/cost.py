"""Cost matrices between a batch of samples and a batch of noise.

Squared L2 through one matrix product, |x|^2 + |z|^2 - 2 x z^T, in float32 by default: the
product is the fastest formulation on CPU and GPU, and float32 keeps the cost accurate to far
below its spread across a batch. float16/bfloat16 are an explicit option only: they are slower
on most CPUs and bfloat16 errors reach the size of the cost spread at image dimensions.
"""

from __future__ import annotations

import math
from typing import Any

from noisepair.backend import flat, get_backend

METRICS = ("sqeuclidean", "euclidean")
PRECISIONS = ("float32", "float16", "bfloat16", "float64")


def cost_matrix(
    x: Any,
    z: Any,
    metric: str = "sqeuclidean",
    precision: str = "float32",
    chunk: int | None = None,
) -> Any:
    """(B, M) matrix of distances between rows of ``x`` (B, ...) and ``z`` (M, ...).

    ``chunk``: compute the product ``chunk`` rows of ``x`` at a time into the output, so that the
    temporaries (precision casts, the product block) stay ``chunk`` rows large.

    The result is float32 (float64 when asked) in the framework and on the device of ``x``.
    Half precisions scale the inputs by 1/sqrt(D) before the product so that squared norms
    cannot overflow (the Immiscible Diffusion code scales by 0.1 for the same reason).
    """
    check_options(metric, precision)
    b = get_backend(x, z)
    x, z = flat(x), flat(z)
    if x.shape[1] != z.shape[1]:
        raise ValueError(f"sample and noise differ in size per item: {x.shape[1]} vs {z.shape[1]}.")
    if chunk is not None and 0 < int(chunk) < x.shape[0]:
        step, c = int(chunk), None
        for s in range(0, x.shape[0], step):
            part = cost_matrix(x[s : s + step], z, metric, precision)
            c = b.empty_rows(x.shape[0], part) if c is None else c
            c = b.set_rows(c, s, part)
        return c
    scale = 1.0 / math.sqrt(x.shape[1]) if precision in ("float16", "bfloat16") else 1.0
    if scale != 1.0:
        x, z = x * scale, z * scale
    c = b.sqeuclidean(x, z, precision)
    if scale != 1.0:
        c = c / (scale * scale)
    return c**0.5 if metric == "euclidean" else c


def candidate_costs(
    x: Any, z: Any, k: int, metric: str = "sqeuclidean", precision: str = "float32"
) -> Any:
    """(B, k) distances from each row of ``x`` (B, D) to its own ``k`` candidates, the rows
    ``z[i*k:(i+1)*k]`` of ``z`` (B*k, D), in float32 (float64 when asked); no B x B matrix is
    formed. Differences are taken directly, so half precisions gain nothing here."""
    b = get_backend(x, z)
    n, d = x.shape
    cast = b.float64 if precision == "float64" else b.float32
    diff = cast(z).reshape(n, k, d) - cast(x)[:, None, :]
    dist = (diff * diff).sum(-1)
    return dist**0.5 if metric == "euclidean" else dist


def check_options(metric: str, precision: str) -> None:
    if metric not in METRICS:
        raise ValueError(f"unknown cost {metric!r}; choose one of {METRICS}.")
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; choose one of {PRECISIONS}.")
