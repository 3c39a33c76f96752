"""Assertions about training noise, with messages that say what deviated and by how much.

Each one takes the noise in whatever form a pipeline has it: an array or tensor (N, ...), a
:class:`~noisepair.PairedBatch`, or any iterable of either (a list of batches, a loader;
``batches=`` stops an endless one). The statistics are :mod:`noisepair.checks`' own, so a
passing assertion and a passing ``noisepair check`` mean the same thing.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from typing import Any

import numpy as np
from scipy import linalg, stats

from noisepair.backend import flat, get_backend, is_array, to_numpy
from noisepair.checks import GaussianityReport, check_loader, gaussianity_report
from noisepair.pairing import match


def assert_gaussian(
    noise: Any,
    alpha: float = 1e-3,
    *,
    mean: Any = None,
    cov: Any = None,
    batches: int | None = None,
) -> GaussianityReport:
    """Assert the noise vectors, pooled over batches, are i.i.d. N(0, I) (or N(mean, cov)).

    Runs :func:`noisepair.checks.gaussianity_report` (three exact tests, Bonferroni at
    ``alpha``, the false-alarm rate). With ``mean`` and/or ``cov`` (a variance, a vector of
    variances, or a D x D matrix) the vectors are whitened first, so any Gaussian with known
    parameters is tested with the same exact tests. Returns the report.
    """
    __tracebackhide__ = True  # pytest shows the caller's line, not this frame
    z = vectors(noise, batches)
    if mean is not None or cov is not None:
        z = _whiten(z, mean, cov)
    report = gaussianity_report(z, alpha=alpha)
    if not report.passed:
        target = (
            "N(0, I)" if mean is None and cov is None else "N(mean, cov) (tested after whitening)"
        )
        raise AssertionError(describe(report, target))
    return report


def describe(report: GaussianityReport, target: str = "N(0, I)") -> str:
    """The report as a message: each test's verdict and the size of what it measures."""
    n, d, level = report.n, report.dim, report.alpha / 3
    verdict = "is not" if not report.passed else "is consistent with"
    mark = {True: "REJECTED", False: "passed"}
    chance_cov = np.sqrt(min(d, 512) / n)
    return "\n".join(
        [
            (
                f"noise {verdict} {target} at alpha={report.alpha:g} ({n} vectors, D={d}; "
                f"each test at alpha/3={level:.2g}):"
            ),
            (
                f"  squared-norm KS vs chi2(D): {mark[report.norm_ks_pvalue < level]}, "
                f"p={report.norm_ks_pvalue:.3g}; mean |z|^2/D = {report.norm2_mean_ratio:.4f} "
                f"(1 expected, sd {np.sqrt(2 / (n * d)):.2g} by chance)"
            ),
            (
                f"  mean n|mean|^2 vs chi2(D): {mark[report.mean_chi2_pvalue < level]}, "
                f"p={report.mean_chi2_pvalue:.3g}; largest |coordinate mean| = {report.mean_abs_max:.3g} "
                f"(each has sd 1/sqrt(n) = {1 / np.sqrt(n):.2g})"
            ),
            (
                f"  pooled coordinates KS vs N(0, 1): {mark[report.ks_pvalue < level]}, "
                f"p={report.ks_pvalue:.3g}; KS distance {report.ks_stat:.3g}"
            ),
            (
                f"  covariance |S - I|_F/sqrt(D) = {report.cov_deviation:.3g} (about {chance_cov:.2g} by "
                "chance; described, not tested)"
            ),
        ]
    )


def assert_same_distribution(
    noise: Any,
    reference: Any,
    alpha: float = 1e-3,
    *,
    n_reference: int | None = None,
    projections: int = 8,
    seed: int = 0,
    batches: int | None = None,
) -> dict[str, float]:
    """Two-sample test of the noise against a reference sampler (or reference draws).

    ``reference`` is a callable ``n -> (n, ...)`` array/tensor, or the reference vectors
    themselves. Each vector is reduced to scalars whose values are i.i.d. across vectors under
    the null (squared norm, coordinate mean, ``projections`` fixed random directions), and each
    scalar gets a two-sample KS test, Bonferroni at ``alpha``: the false-alarm rate is exact for
    any reference, with no parameters to know. Returns the p-value of each scalar.
    """
    __tracebackhide__ = True
    z = vectors(noise, batches)
    m = len(z) if n_reference is None else int(n_reference)
    ref = vectors(reference(m) if callable(reference) else reference)
    if ref.shape[1] != z.shape[1]:
        raise ValueError(f"the reference has D={ref.shape[1]}, the noise D={z.shape[1]}.")
    directions = np.random.default_rng(seed).standard_normal((z.shape[1], projections))
    directions /= np.linalg.norm(directions, axis=0)
    names = ["squared norm / D", "coordinate mean"] + [
        f"projection {i}" for i in range(projections)
    ]

    def scalars(v):
        return np.column_stack([(v * v).mean(1), v.mean(1), v @ directions])

    a, b = scalars(z), scalars(ref)
    pvalues = {name: float(stats.ks_2samp(a[:, j], b[:, j]).pvalue) for j, name in enumerate(names)}
    level = alpha / len(names)
    bad = [j for j, name in enumerate(names) if pvalues[name] < level]
    if bad:
        lines = [
            (
                f"noise does not match the reference at alpha={alpha:g} ({len(z)} vectors vs "
                f"{len(ref)} reference draws, D={z.shape[1]}; each scalar at alpha/{len(names)}):"
            )
        ]
        for j in bad:
            lines.append(
                f"  {names[j]}: REJECTED, two-sample KS p={pvalues[names[j]]:.3g}; mean "
                f"{a[:, j].mean():.4g} (sd {a[:, j].std():.3g}) vs reference {b[:, j].mean():.4g} "
                f"(sd {b[:, j].std():.3g})"
            )
        raise AssertionError("\n".join(lines))
    return pvalues


def assert_permutation_of_draws(
    emitted: Any, reference: Iterable | None = None, *, batches: int | None = None
) -> int:
    """Assert the emitted noise is, cycle by cycle, exactly the multiset of noise drawn.

    ``reference`` yields the as-drawn noise of each cycle: one array per batch for per-batch
    matching, per match group for ``scope=k``, per pool refill for a pool. The emitted vectors
    are read in stream order and cut into pieces of the cycles' sizes; each piece must hold the
    same vectors as its cycle, bit for bit, each as often (a check that stopped after
    ``batches`` may end inside a cycle, whose piece must then be part of it). Left out, the
    reference of a :class:`~noisepair.MatchedNoiseLoader` is the same loader with
    ``method="random"``: the same seed, so the same draws, unmatched. Returns the vectors checked.
    """
    __tracebackhide__ = True
    if reference is None:
        reference = _as_drawn(emitted)
    stream = _vector_stream(emitted, batches)
    pending = np.empty((0, 0))
    checked = 0
    for cycle, drawn in enumerate(reference):
        drawn = _rows(drawn)
        need = len(drawn)
        parts = [pending] if len(pending) else []
        have = len(pending)
        for part in stream:
            parts.append(part)
            have += len(part)
            if have >= need:
                break
        if have == 0:
            break
        got = np.concatenate(parts) if len(parts) > 1 else parts[0]
        if got.shape[1] != drawn.shape[1]:
            raise AssertionError(
                f"cycle {cycle}: emitted vectors have D={got.shape[1]}, the draws "
                f"D={drawn.shape[1]}."
            )
        piece, pending = got[:need], got[need:]
        _compare(piece, drawn, cycle, checked)
        checked += len(piece)
        if len(piece) < need:
            break
    extra = len(pending) + sum(len(p) for p in stream)
    if extra:
        raise AssertionError(
            f"the loader emitted {extra} noise vectors beyond the {checked} the "
            "reference drew: more noise out than in."
        )
    if checked == 0:
        raise ValueError("nothing to compare: the loader or the reference yielded no noise.")
    return checked


def assert_independent_of_order(
    method: Any, sample: Any, noise: Any, *, shuffles: int = 3, seed: int = 0, **options
) -> None:
    """Assert a matcher pairs a batch as a set: shuffling its samples and noise changes no pair.

    Holds for exact assignment on tie-free costs (a unique optimum) and for DANSM's
    nearest-first greedy; not for random pairing (noise by position), KNN (candidates drawn
    per position, so it is refused here) or a pool that matches in stream order.
    """
    __tracebackhide__ = True
    x, z = sample, noise
    if len(z) != len(x):
        raise ValueError(
            f"order independence applies to permutation matchers: {len(x)} samples "
            f"need {len(x)} noise vectors, got {len(z)} (KNN's candidates are per "
            "position, so it does not apply)."
        )
    base = np.asarray(to_numpy(match(x, z, method, **options)))
    rng = np.random.default_rng(seed)
    for s in range(shuffles):
        p, q = rng.permutation(len(x)), rng.permutation(len(z))
        b = get_backend(x, z)
        cols = np.asarray(
            to_numpy(match(x[b.as_index(p, x)], z[b.as_index(q, z)], method, **options))
        )
        after = np.empty_like(base)
        after[p] = q[cols]  # noise index (original order) of each sample (original order)
        moved = np.flatnonzero(after != base)
        if len(moved):
            i = moved[0]
            raise AssertionError(
                f"method {method!r} depends on the order of the batch: after shuffle {s}, "
                f"{len(moved)} of {len(x)} samples got a different noise vector (sample {i} got "
                f"noise {base[i]} in the original order, noise {after[i]} shuffled)."
            )


def assert_paths_shorter(loader: Iterable, ratio: float = 1.0, *, batches: int = 10):
    """Assert matched noise-to-sample paths average below ``ratio`` x the as-drawn ones.

    Reads the ``cost`` / ``cost_random`` that every PairedBatch carries, over the first
    ``batches`` batches (:func:`noisepair.check_loader`). Returns the PathGain.
    """
    __tracebackhide__ = True
    _, gain = check_loader(loader, batches=batches)
    if not gain.ratio < ratio:
        raise AssertionError(
            f"matched paths are {gain.ratio:.4f} x the as-drawn ones over {gain.batches} batches "
            f"(summed cost {gain.cost_matched:.6g} vs {gain.cost_random:.6g}); required below "
            f"{ratio:g}."
        )
    return gain


# -- reading noise in any form ---------------------------------------------------------------
def vectors(noise: Any, batches: int | None = None) -> np.ndarray:
    """Noise in any accepted form as one float64 (N, D) array."""
    parts = [p.astype(np.float64, copy=False) for p in _vector_stream(noise, batches)]
    if not parts:
        raise ValueError("no noise to test: the loader or list yielded no batches.")
    return np.concatenate(parts) if len(parts) > 1 else parts[0]


def _vector_stream(noise: Any, batches: int | None = None):
    """Yield (n, D) numpy rows per batch; closes a loader's iterator when stopped early."""
    if is_array(noise) or hasattr(noise, "noise"):
        noise = [noise]
    it = iter(noise)

    def gen():
        try:
            for i, item in enumerate(it):
                if batches is not None and i >= batches:
                    break
                yield _rows(item.noise if hasattr(item, "noise") else item)
        finally:
            close = getattr(it, "close", None)
            if close is not None:
                close()

    return gen()


def _rows(x: Any) -> np.ndarray:
    """(n, D) numpy rows, bit-exact (bfloat16 widens losslessly to float32)."""
    if hasattr(x, "noise"):
        x = x.noise
    if not is_array(x):
        raise TypeError(
            f"expected noise as an array or tensor (or PairedBatches of them), got "
            f"{type(x).__name__}."
        )
    return np.ascontiguousarray(to_numpy(flat(x)))  # bfloat16 widens losslessly to float32


def _whiten(z: np.ndarray, mean: Any, cov: Any) -> np.ndarray:
    d = z.shape[1]
    if mean is not None:
        z = z - np.broadcast_to(np.asarray(to_numpy(mean), dtype=np.float64).reshape(-1), (d,))
    if cov is None:
        return z
    c = np.asarray(to_numpy(cov), dtype=np.float64)
    if c.ndim <= 1:
        var = np.broadcast_to(c.reshape(-1), (d,))
        if (var <= 0).any():
            raise ValueError("cov: variances must be positive.")
        return z / np.sqrt(var)
    if c.shape != (d, d):
        raise ValueError(
            f"cov must be a variance, {d} variances or a {d} x {d} matrix, got shape {c.shape}."
        )
    try:
        lower = linalg.cholesky(c, lower=True)
    except linalg.LinAlgError:
        raise ValueError(
            "cov is not positive definite: give the full-rank covariance of the reference Gaussian."
        ) from None
    return linalg.solve_triangular(lower, z.T, lower=True).T


def _compare(emitted: np.ndarray, drawn: np.ndarray, cycle: int, start: int) -> None:
    if emitted.dtype != drawn.dtype:
        raise AssertionError(
            f"cycle {cycle}: emitted noise is {emitted.dtype}, drawn {drawn.dtype}."
        )
    have, want = Counter(map(bytes, emitted)), Counter(map(bytes, drawn))
    partial = len(emitted) < len(drawn)
    foreign = sum((have - want).values())
    missing = 0 if partial else sum((want - have).values())
    if not foreign and not missing:
        return
    repeated = sum(c - want[k] for k, c in have.items() if want[k] and c > want[k])
    first = next(i for i, row in enumerate(emitted) if have[bytes(row)] > want[bytes(row)])
    gap = np.sqrt(((drawn - emitted[first]) ** 2).sum(1).min())
    raise AssertionError(
        f"cycle {cycle} (emitted vectors {start}-{start + len(emitted) - 1}) is not a permutation "
        f"of its {len(drawn)} draws: {foreign - repeated} emitted vectors were never drawn, "
        f"{repeated} were emitted more often than drawn, {missing} draws were never emitted "
        f"(e.g. emitted vector {start + first} lies {gap:.3g} from its nearest draw)."
    )


def _as_drawn(loader: Any) -> Iterable[np.ndarray]:
    """The draws of a MatchedNoiseLoader, unmatched, one array per match group."""
    from noisepair.loader import MatchedNoiseLoader

    if not isinstance(loader, MatchedNoiseLoader):
        raise TypeError(
            f"reference= is needed for a {type(loader).__name__}: pass the as-drawn "
            "noise, one array per cycle (batch, match group or pool refill)."
        )
    if loader.across_ranks:
        raise ValueError(
            "reference= is needed with across_ranks=True: each rank emits noise drawn "
            "by every rank; compare the gathered noise with the gathered draws."
        )
    if loader.pool is not None:
        return _pool_cycles(loader)
    twin = MatchedNoiseLoader(
        loader.loader,
        key=loader.key,
        method="random",
        seed=loader.seed,
        scope=loader.scope,
        encode=loader.encode,
        device=loader.device,
        prefetch=0,
    )
    twin.load_state_dict(loader.state_dict())  # now, before the loader under test moves on

    def groups():
        group: list = []
        for pb in twin:
            group.append(_rows(pb.noise))
            if len(group) == loader.scope:
                yield np.concatenate(group)
                group = []
        if group:
            yield np.concatenate(group)

    return groups()


def _pool_cycles(loader: Any) -> Iterable[np.ndarray]:
    """The draws of a pool loader's cycles from where it stands: the current cycle's unused
    noises, then every later cycle whole."""
    from noisepair.distributed import rank_and_world
    from noisepair.loader import MatchedNoiseLoader
    from noisepair.pool import NoisePool

    if loader.group_by is not None:
        raise ValueError(
            "reference= is needed for a pool with group_by: each label has a pool of its own "
            "and their cycles interleave in the stream; check one label's noise against that "
            "label's draws (NoisePool(size, seed=...).drawn(cycle, like, label))."
        )
    state = loader.state_dict()["coupling"]["pools"].get(None, {"cycle": 0, "used": []})
    pool = NoisePool(loader.pool.size, seed=loader.seed, rank=rank_and_world()[0])
    twin = MatchedNoiseLoader(
        loader.loader,
        key=loader.key,
        method="random",
        seed=loader.seed,
        encode=loader.encode,
        device=loader.device,
        prefetch=0,
    )

    def cycles():
        with twin:
            like = next(iter(twin)).sample  # the shape, dtype and framework of the noise
        cycle = state["cycle"]
        unused = np.ones(pool.size, dtype=bool)
        unused[np.asarray(state["used"], dtype=np.int64)] = False
        yield _rows(pool.drawn(cycle, like))[unused]
        while True:
            cycle += 1
            yield _rows(pool.drawn(cycle, like))

    return cycles()
