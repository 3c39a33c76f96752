"""The pairing step: samples and their noise draws in, an index into the draws out.

This is the one place that validates samples, computes the cost, solves per label group and
measures the result; both ``noisepair.match`` and the loader call it, and matchers only solve
(see :mod:`noisepair.matchers.base`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np

from noisepair.backend import backend_of, flat, get_backend, to_numpy
from noisepair.cost import candidate_costs, check_options, cost_matrix
from noisepair.matchers import Matcher, Selector, get_matcher


def require_array(x: Any, what: str = "the sample is") -> None:
    """Raise a clear error when the sample is not an ndarray or tensor (a string, None, ...)."""
    if backend_of(x) is None:
        raise TypeError(
            f"{what} a {type(x).__name__}, not an array or tensor; collate the batch into "
            "one ndarray/tensor (e.g. np.stack) or pass key= to pick the sample field."
        )


def require_data(sample: Any) -> None:
    """A batch holds data: not a 0-d value, a meta tensor (no storage) or a sparse tensor."""
    if sample.ndim == 0:
        raise ValueError(
            f"the sample is a 0-d {type(sample).__name__} (a single number): the loader must yield "
            "batches of shape (B, ...); batch it (e.g. DataLoader(batch_size=...))."
        )
    if getattr(sample, "is_meta", False):
        raise ValueError(
            "the sample is a meta tensor (a shape with no data); materialise it before the loader "
            "(e.g. load real values or use torch.empty on a real device)."
        )
    if str(getattr(sample, "layout", "torch.strided")) != "torch.strided":
        raise ValueError(
            f"the sample is a {sample.layout} tensor; matching needs dense data: call "
            ".to_dense() in the dataset transform."
        )


def validate_sample(x: Any) -> None:
    """Raise a clear error for samples that cannot be matched."""
    require_array(x)
    b = get_backend(x)
    if x.ndim < 1 or x.shape[0] == 0:
        raise ValueError(
            f"the sample has shape {tuple(x.shape)}: it needs a batch dimension with items."
        )
    if not b.is_floating(x):
        raise TypeError(
            f"the sample has dtype {x.dtype}; noise is matched to floating-point data. Convert it "
            "in your transform (e.g. x.float() / 127.5 - 1, or x.astype(np.float32))."
        )
    if not b.all_finite(x):
        raise ValueError(
            f"the sample holds {b.count_nonfinite(x)} non-finite values (NaN/inf); fix the data or "
            "its transform before matching (distances to NaN are undefined)."
        )


def pair(
    x: Any,
    z: Any,
    matcher: Matcher | Selector,
    *,
    metric: str = "sqeuclidean",
    precision: str = "float32",
    groups: Any = None,
) -> tuple[Any, dict]:
    """Pair samples ``x`` (B, ...) with draws ``z`` (B * matcher.candidates, ...).

    Returns ``(idx, info)``: ``z[idx][i]`` is the noise for ``x[i]``. With ``groups`` (one label
    per sample) a permutation matcher only exchanges noise among samples of the same label;
    labels must be comparable values (NaN is refused: it equals no label, not even itself).
    """
    validate_sample(x)
    check_options(metric, precision)
    b = get_backend(x, z)
    n = x.shape[0]
    if tuple(z.shape[1:]) != tuple(x.shape[1:]) or z.shape[0] != n * matcher.candidates:
        raise ValueError(
            f"noise of shape {tuple(z.shape)} does not fit samples of shape {tuple(x.shape)}: "
            f"{matcher!r} needs {matcher.candidates} candidate(s) per sample, i.e. noise of shape "
            f"({n * matcher.candidates}, {', '.join(map(str, x.shape[1:]))})."
        )
    start = time.perf_counter()
    xf, zf = flat(x), flat(z)
    parts = None if groups is None else label_groups(groups, n)  # checked for every matcher
    if isinstance(matcher, Selector):  # no exchange between samples: groups change nothing
        idx, matched, unmatched, extra = _select(matcher, xf, zf, metric, precision)
        return idx, summary(matcher, n, matched, unmatched, extra, start)

    def cost_of(rows: np.ndarray | None) -> Any:
        sel = None if rows is None else b.as_index(rows, x)
        cost = cost_matrix(
            xf if sel is None else xf[sel], zf if sel is None else zf[sel], metric, precision
        )
        _require_finite(cost, x, precision)
        return cost

    cols, info = assign(matcher, n, parts, cost_of, dim=int(xf.shape[1]), start=start)
    return b.as_index(cols, x), info


def assign(
    matcher: Matcher,
    n: int,
    parts: list[np.ndarray] | None,
    cost_of: Callable[[np.ndarray | None], Any],
    *,
    dim: int | None = None,
    start: float | None = None,
) -> tuple[Any, dict]:
    """Solve the cost of each label group (``parts``: rows per label; None: one group of all
    ``n``) with ``matcher`` and summarise: ``(cols, info)``. ``cost_of(rows)`` gives the cost
    of those rows (None: all). The single-process and the across-rank pairing both end here."""
    start = time.perf_counter() if start is None else start
    if parts is None:
        cols, matched, unmatched, extra = _solve(matcher, cost_of(None), dim)
        return cols, summary(matcher, n, matched, unmatched, extra, start)
    cols_np = np.arange(n)
    matched = unmatched = 0.0
    extra: dict = {}
    for rows in parts:
        cols, m, u, part = _solve(matcher, cost_of(rows), dim)
        cols_np[rows] = rows[to_numpy(cols)]
        matched, unmatched = matched + m, unmatched + u
        gap = extra.get("gap", 0.0) + part["gap"] if "gap" in part else None
        extra = dict(part) if gap is None else dict(part, gap=gap)
    return cols_np, summary(matcher, n, matched, unmatched, extra, start)


def summary(
    matcher: Matcher | Selector, n: int, matched: float, unmatched: float, extra: dict, start: float
) -> dict:
    """The info of every pairing path: costs matched and as drawn, the certified gap, timing."""
    extra = dict(extra)
    gap = extra.pop("gap", 0.0 if matcher.exact else None)
    extra.pop("gap_bound", None)
    return {
        "method": matcher.name,
        "cost": matched / n,
        "cost_random": unmatched / n,
        "cost_ratio": matched / unmatched if unmatched > 0 else 1.0,
        "seconds": time.perf_counter() - start,
        "exact_permutation": matcher.permutation,
        # relative gap to the optimal total cost: 0 when exact, a certified bound for the auction
        "gap_bound": None if gap is None else (gap / matched if matched > 0 else 0.0),
        **extra,
        "batch_size": n,
    }


def as_labels(groups: Any, n: int | None = None) -> np.ndarray:
    """One label per sample as a 1-d numpy array, from an array, tensor, list or tuple.

    NaN is refused: it equals no label, not even itself, so a sample labelled NaN would belong
    to no group. ``n``: the number of samples the labels must cover.
    """
    b = backend_of(groups)
    labels = (b.to_numpy(groups) if b is not None else np.asarray(groups)).reshape(-1)
    if n is not None and labels.shape[0] != n:
        raise ValueError(f"group_by gave {labels.shape[0]} labels for a batch of {n} samples.")
    if labels.dtype == object and any(v is None for v in labels.tolist()):
        bad = [i for i, v in enumerate(labels.tolist()) if v is None]
        raise ValueError(
            f"group_by gave None labels for {len(bad)} sample(s) (rows {bad[:8]}): None equals no "
            "class, and labels must be comparable to be grouped. Give every sample a label "
            "(e.g. map missing labels to -1 in the dataset)."
        )
    if labels.dtype.kind in "fc" and np.isnan(labels).any():
        bad = np.flatnonzero(np.isnan(labels))
        raise ValueError(
            f"group_by gave NaN labels for {bad.size} sample(s) (rows {bad[:8].tolist()}): NaN "
            "equals no label, so these samples belong to no group. Give every sample a label "
            "(e.g. map missing labels to -1 in group_by)."
        )
    return labels


def label_groups(groups: Any, n: int) -> list[np.ndarray]:
    """The rows of each label (labels in sorted order), every row in exactly one group."""
    _, inverse = np.unique(as_labels(groups, n), return_inverse=True)
    inverse = inverse.reshape(-1)
    order = np.argsort(inverse, kind="stable")
    return np.split(order, np.flatnonzero(np.diff(inverse[order])) + 1)


def _solve(matcher: Matcher | Selector, cost: Any, dim: int | None):
    """The matcher's solve on a checked cost: ``(cols, matched, as drawn, info)``. A selector
    with one candidate per sample (``random``) keeps each sample's own draw."""
    b = get_backend(cost)
    if isinstance(matcher, Selector):
        n = cost.shape[0]
        drawn = float(cost[:n, :n].diagonal().sum())
        return b.arange(n, cost), drawn, drawn, {}
    cols, info = matcher.solve(cost, dim=dim)
    n = min(cost.shape)
    if b.device(cost) == "cpu":  # the costs summed in numpy: no copy, and far fewer dispatches
        c, rows, cols_on = b.to_numpy(cost), np.arange(cost.shape[0]), to_numpy(cols)
    else:
        c, rows, cols_on = cost, b.arange(cost.shape[0], cost), b.as_index(cols, cost)
    return cols, float(c[rows, cols_on].sum()), float(c[:n, :n].diagonal().sum()), dict(info)


def _select(selector: Selector, x: Any, z: Any, metric: str, precision: str):
    """Distances to each sample's own candidates, checked finite, then the selector's choice."""
    b = get_backend(x)
    k = selector.candidates
    dist = candidate_costs(x, z, k, metric, precision)
    _require_finite(dist, x, "float64" if precision == "float64" else "float32")
    choice = b.as_index(selector.select(dist), x)
    rows = b.arange(x.shape[0], x)
    idx = rows * k + choice
    return idx, float(dist[rows, choice].sum()), float(dist[:, 0].sum()), {}


def _require_finite(cost: Any, x: Any, precision: str) -> None:
    """Never hand a native solver NaN or inf (lapjv corrupts memory on them). Samples are
    finite here, so a non-finite cost is an overflow of ``precision``."""
    b = get_backend(cost)
    if b.all_finite(cost):
        return
    peak = float(abs(b.to_numpy(flat(x))).max())
    raise ValueError(
        f"the cost matrix overflows {precision}: squared distances between samples (largest "
        f"|value| {peak:.3g}) and noise exceed its range, so no assignment can be computed. "
        "Rescale the samples (noise is N(0, 1); data is usually scaled to about [-1, 1]) or pass "
        "precision='float64'."
    )


def match(
    x: Any,
    z: Any,
    method: Any = "hungarian",
    cost: str = "sqeuclidean",
    *,
    precision: str = "float32",
    groups: Any = None,
    **options,
) -> Any:
    """Index ``perm`` such that ``z[perm][i]`` is the noise paired with ``x[i]``.

    Function-first, like ``scipy.optimize.linear_sum_assignment``: numpy in, numpy out; torch
    in, torch out (on the sample's device). ``method`` is a name (``hungarian``, ``emd``,
    ``sinkhorn``, ``greedy``, ``knn``, ``random``, ``auction``, ``auto``), a Matcher, or a
    callable ``cost -> cols``. For ``knn``, ``z`` holds k candidates per sample:
    ``z[i*k:(i+1)*k]`` belong to ``x[i]``.
    """
    idx, _ = pair(
        x, z, get_matcher(method, **options), metric=cost, precision=precision, groups=groups
    )
    return idx
