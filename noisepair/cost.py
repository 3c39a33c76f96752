"""Cost matrices between a batch of samples and a batch of noise.

Squared L2 through one matrix product, |x|^2 + |z|^2 - 2 x z^T, in float32 by default: on this
class of CPU that is the fastest formulation and stays within ~1e-4 of float64 relative to the
cost spread (../shared/reference/solver-baselines.md). float16/bfloat16 are an explicit option
only: they are slower on most CPUs and bfloat16 errors reach the size of the cost spread at
image dimensions.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np

from noisepair._frameworks import flat, is_torch

METRICS = ("sqeuclidean", "euclidean")
PRECISIONS = ("float32", "float16", "bfloat16", "float64")


def cost_matrix(x: Any, z: Any, metric: str = "sqeuclidean", precision: str = "float32",
                chunk: int | None = None) -> Any:
    """(B, M) matrix of distances between rows of ``x`` (B, ...) and ``z`` (M, ...).

    ``chunk``: compute the product ``chunk`` rows of ``x`` at a time into the output, so that the
    temporaries (precision casts, the product block) stay ``chunk`` rows large. The product is
    always accumulated in place: beyond its inputs and the (B, M) result nothing of size B x D or
    B x M is materialised.

    The result is float32 (float64 when asked) in the framework and on the device of ``x``.
    Half precisions scale the inputs by 1/sqrt(D) before the product so that squared norms
    cannot overflow (the Immiscible Diffusion code scales by 0.1 for the same reason).
    """
    if metric not in METRICS:
        raise ValueError(f"unknown cost {metric!r}; choose one of {METRICS}.")
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; choose one of {PRECISIONS}.")
    x, z = flat(x), flat(z)
    if x.shape[1] != z.shape[1]:
        raise ValueError(f"sample and noise differ in size per item: {x.shape[1]} vs {z.shape[1]}.")
    half = precision in ("float16", "bfloat16")
    scale = 1.0 / math.sqrt(x.shape[1]) if half else 1.0
    if chunk is not None and 0 < int(chunk) < x.shape[0]:
        step, c = int(chunk), None
        for s in range(0, x.shape[0], step):
            part = cost_matrix(x[s:s + step], z, metric, precision)
            if c is None:
                c = _empty_like_rows(part, x.shape[0])
            c[s:s + step] = part
        return c
    if is_torch(x):
        c = _torch_sq(x, z, precision, scale)
    else:
        c = _numpy_sq(x, z, precision, scale)
    if metric == "euclidean":
        c = c ** 0.5
    return c


def _torch_sq(x, z, precision, scale):
    import torch

    dtype = getattr(torch, precision)
    out = torch.float64 if precision == "float64" else torch.float32
    x = x.to(dtype) * scale if scale != 1.0 else x.to(dtype)
    z = z.to(dtype) * scale if scale != 1.0 else z.to(dtype)
    xx, zz = _torch_sqnorms(x, out), _torch_sqnorms(z, out)
    if x.dtype == out:  # one fused product: c = |z|^2 - 2 x z^T, then + |x|^2, all in place
        c = torch.addmm(zz[None, :], x, z.T, beta=1.0, alpha=-2.0)
    else:
        c = (x @ z.T).to(out).mul_(-2.0).add_(zz[None, :])
    c.add_(xx[:, None]).clamp_(min=0.0)
    return c / (scale * scale) if scale != 1.0 else c


def _numpy_sq(x, z, precision, scale):
    if precision == "bfloat16":
        raise ValueError("bfloat16 costs need torch tensors; numpy has no bfloat16 (use float32).")
    dtype = np.dtype(precision)
    out = np.float64 if precision == "float64" else np.float32
    x = np.asarray(x, dtype=dtype)
    z = np.asarray(z, dtype=dtype)
    if scale != 1.0:
        x, z = x * dtype.type(scale), z * dtype.type(scale)
    xx = np.einsum("ij,ij->i", x, x, dtype=out)
    zz = np.einsum("ij,ij->i", z, z, dtype=out)
    c = (x @ z.T).astype(out, copy=False)
    c *= -2.0
    c += xx[:, None]
    c += zz[None, :]
    np.maximum(c, 0.0, out=c)
    return c / (scale * scale) if scale != 1.0 else c


def _torch_sqnorms(x, out):
    """Row squared norms without a (B, D) temporary (a batched dot product)."""
    x = x.to(out)
    return (x.unsqueeze(1) @ x.unsqueeze(2)).reshape(-1)


def _empty_like_rows(part, rows):
    if is_torch(part):
        import torch

        return torch.empty((rows, part.shape[1]), dtype=part.dtype, device=part.device)
    return np.empty((rows, part.shape[1]), dtype=part.dtype)
