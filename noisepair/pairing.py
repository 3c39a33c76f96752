"""The pairing step: samples and their noise draws in, an index into the draws out.

This is the one place that validates samples, flattens them, solves per label group, and
measures the result; both ``noisepair.match`` and the loader call it.
"""
from __future__ import annotations

import time
from typing import Any

import numpy as np

from noisepair._frameworks import all_finite, as_index, flat, is_floating, is_torch, to_numpy
from noisepair.matchers import Matcher, get_matcher


def require_array(x: Any) -> None:
    """Raise a clear error when the sample is not an ndarray or tensor (a string, None, ...)."""
    if not (is_torch(x) or isinstance(x, np.ndarray)):
        raise TypeError(
            f"the sample is a {type(x).__name__}, not an array or tensor; collate the batch into "
            "one ndarray/tensor (e.g. np.stack) or pass key= to pick the sample field."
        )


def validate_sample(x: Any) -> None:
    """Raise a clear error for samples that cannot be matched."""
    require_array(x)
    if x.ndim < 1 or x.shape[0] == 0:
        raise ValueError(f"the sample has shape {tuple(x.shape)}: it needs a batch dimension with items.")
    if not is_floating(x):
        raise TypeError(
            f"the sample has dtype {x.dtype}; noise is matched to floating-point data. Convert it "
            "in your transform (e.g. x.float() / 127.5 - 1, or x.astype(np.float32))."
        )
    if not all_finite(x):
        bad = int((~np.isfinite(to_numpy(x))).sum())
        raise ValueError(
            f"the sample holds {bad} non-finite values (NaN/inf); fix the data or its transform "
            "before matching (distances to NaN are undefined)."
        )


def pair(
    x: Any, z: Any, matcher: Matcher, *, metric: str = "sqeuclidean",
    precision: str = "float32", groups: Any = None,
) -> tuple[Any, dict]:
    """Pair samples ``x`` (B, ...) with draws ``z`` (B * matcher.candidates, ...).

    Returns ``(idx, info)``: ``z[idx][i]`` is the noise for ``x[i]``. With ``groups`` (one label
    per sample) a permutation matcher only exchanges noise among samples of the same label.
    """
    validate_sample(x)
    b = x.shape[0]
    if tuple(z.shape[1:]) != tuple(x.shape[1:]) or z.shape[0] != b * matcher.candidates:
        raise ValueError(
            f"noise of shape {tuple(z.shape)} does not fit samples of shape {tuple(x.shape)}: "
            f"{matcher!r} needs {matcher.candidates} candidate(s) per sample, i.e. noise of shape "
            f"({b * matcher.candidates}, {', '.join(map(str, x.shape[1:]))})."
        )
    start = time.perf_counter()
    xf, zf = flat(x), flat(z)
    if groups is None or not matcher.permutation:
        cols, matched, unmatched = matcher.pair(xf, zf, metric, precision)
        # a torch index on the sample's device is kept as is (no host round trip on CUDA)
        idx = cols if is_torch(cols) and is_torch(x) and cols.device == x.device else as_index(to_numpy(cols), x)
        extra = dict(getattr(matcher, "last_info", None) or {})
    else:
        labels = to_numpy(groups).reshape(-1)
        if labels.shape[0] != b:
            raise ValueError(f"group_by gave {labels.shape[0]} labels for a batch of {b} samples.")
        idx_np = np.empty(b, dtype=np.int64)
        matched = unmatched = 0.0
        extra = {}
        for label in np.unique(labels):
            rows = np.flatnonzero(labels == label)
            sel = as_index(rows, x)
            cols, m, u = matcher.pair(xf[sel], zf[sel], metric, precision)
            idx_np[rows] = rows[to_numpy(cols)]
            matched, unmatched = matched + m, unmatched + u
            part = getattr(matcher, "last_info", None) or {}
            extra = dict(part, gap=extra.get("gap", 0.0) + part["gap"]) if "gap" in part else dict(part)
        idx = as_index(idx_np, x)
    info = {
        "method": matcher.name,
        "cost": matched / b,
        "cost_random": unmatched / b,
        "cost_ratio": matched / unmatched if unmatched > 0 else 1.0,
        "seconds": time.perf_counter() - start,
        "exact_permutation": matcher.permutation,
        # relative gap to the optimal total cost: 0 for exact solvers, a certified bound for the auction
        "gap_bound": (extra.get("gap", 0.0) / matched if matched > 0 else 0.0)
        if "gap" in extra else (0.0 if getattr(matcher, "exact", False) else None),
        **{k: v for k, v in extra.items() if k not in ("gap", "gap_bound")},
        "batch_size": b,
    }
    return idx, info


def match(
    x: Any, z: Any, method: Any = "hungarian", cost: str = "sqeuclidean", *,
    precision: str = "float32", groups: Any = None, **options,
) -> Any:
    """Index ``perm`` such that ``z[perm][i]`` is the noise paired with ``x[i]``.

    Function-first, like ``scipy.optimize.linear_sum_assignment``: numpy in, numpy out; torch
    in, torch out (on the sample's device). ``method`` is a name (``hungarian``, ``emd``,
    ``sinkhorn``, ``greedy``, ``knn``, ``random``), a Matcher, or a callable ``cost -> cols``.
    For ``knn``, ``z`` holds k candidates per sample: ``z[i*k:(i+1)*k]`` belong to ``x[i]``.
    """
    idx, _ = pair(x, z, get_matcher(method, **options), metric=cost, precision=precision,
                  groups=groups)
    return idx
