"""Is the emitted noise still N(0, I)? And how much shorter are the matched paths?

The Gaussianity report runs three tests whose null distributions are exact for i.i.d. N(0, I)
vectors, so its false-alarm rate is controlled (Bonferroni over the three, at ``alpha``):

- KS of the pooled coordinates against N(0, 1);
- KS of the squared norms against chi2(D) (catches KNN's shrunk norms);
- n |mean|^2 against chi2(D) (catches a pull towards the data mean).

The covariance deviation is reported as a description only (no exact test at small n, large D).
Pooled over positions: given x, the matched noise is of course not independent of x.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from scipy import stats

from noisepair.backend import flat, to_numpy

#: pooled coordinates beyond this are subsampled with a fixed stride (KS is O(n log n)).
MAX_POOLED = 2_000_000


@dataclass
class GaussianityReport:
    n: int
    dim: int
    ks_stat: float
    ks_pvalue: float
    norm_ks_stat: float
    norm_ks_pvalue: float
    mean_chi2_pvalue: float
    mean_abs_max: float
    norm2_mean_ratio: float
    cov_deviation: float
    alpha: float
    passed: bool

    def as_dict(self) -> dict:
        return asdict(self)

    def failures(self) -> list[str]:
        """Names of the tests that rejected N(0, I) at the report's level."""
        level = self.alpha / 3
        tests = {
            "coordinates KS": self.ks_pvalue,
            "squared-norm KS": self.norm_ks_pvalue,
            "mean chi2": self.mean_chi2_pvalue,
        }
        return [name for name, p in tests.items() if p < level]


def gaussianity_report(noise: Any, alpha: float = 1e-3) -> GaussianityReport:
    """Test noise vectors (N, ...) against i.i.d. N(0, I); ``alpha`` is the false-alarm rate."""
    z = np.asarray(to_numpy(flat(noise)), dtype=np.float64)
    n, d = z.shape
    if n < 2:
        raise ValueError(f"need at least 2 noise vectors to test, got {n}.")
    pooled = z.reshape(-1)
    if pooled.size > MAX_POOLED:
        pooled = pooled[:: -(-pooled.size // MAX_POOLED)]
    ks = stats.kstest(pooled, "norm")
    norms2 = (z * z).sum(1)
    norm_ks = stats.kstest(norms2, stats.chi2(d).cdf)
    mean = z.mean(0)
    mean_chi2 = float(stats.chi2(d).sf(n * float(mean @ mean)))
    cov_dev = _cov_deviation(z)
    level = alpha / 3
    return GaussianityReport(
        n=n,
        dim=d,
        ks_stat=float(ks.statistic),
        ks_pvalue=float(ks.pvalue),
        norm_ks_stat=float(norm_ks.statistic),
        norm_ks_pvalue=float(norm_ks.pvalue),
        mean_chi2_pvalue=mean_chi2,
        mean_abs_max=float(np.abs(mean).max()),
        norm2_mean_ratio=float(norms2.mean() / d),
        cov_deviation=cov_dev,
        alpha=alpha,
        passed=bool(min(ks.pvalue, norm_ks.pvalue, mean_chi2) >= level),
    )


def _cov_deviation(z: np.ndarray) -> float:
    """|S - I|_F / sqrt(D) on at most 512 coordinates (0 for a perfect N(0, I) sample at n -> inf)."""
    sub = z[:, : min(z.shape[1], 512)]
    s = (sub.T @ sub) / sub.shape[0]
    return float(np.linalg.norm(s - np.eye(sub.shape[1])) / np.sqrt(sub.shape[1]))


@dataclass
class PathGain:
    batches: int
    cost_matched: float
    cost_random: float

    @property
    def ratio(self) -> float:
        """Mean matched cost / mean as-drawn cost: below 1 means shorter noise-to-sample paths."""
        return self.cost_matched / self.cost_random if self.cost_random > 0 else 1.0

    def as_dict(self) -> dict:
        return dict(asdict(self), ratio=self.ratio)


def path_gain(infos: Iterable[dict]) -> PathGain:
    """Aggregate the ``cost`` / ``cost_random`` of PairedBatch infos, weighted by batch size."""
    m = r = 0.0
    count = 0
    for info in infos:
        b = info["batch_size"]
        m += info["cost"] * b
        r += info["cost_random"] * b
        count += 1
    return PathGain(batches=count, cost_matched=m, cost_random=r)


class NoiseMonitor:
    """Loader-side monitor: keeps up to ``max_vectors`` emitted noise vectors and every batch's
    costs, so a run can report its Gaussianity and path gain as it goes.

    Pass it as ``MatchedNoiseLoader(..., monitor=NoiseMonitor())``; it is updated in the
    prefetch thread and read from anywhere (a lock guards it).
    """

    def __init__(self, max_vectors: int = 20_000, alpha: float = 1e-3):
        self.max_vectors, self.alpha = max_vectors, alpha
        self._noise: list[np.ndarray] = []
        self._kept = 0
        self._infos: list[dict] = []
        self._lock = threading.Lock()

    def update(self, pb: Any) -> None:
        z = np.asarray(to_numpy(flat(pb.noise)), dtype=np.float64)
        with self._lock:
            room = self.max_vectors - self._kept
            if room > 0:
                self._noise.append(z[:room])
                self._kept += min(room, len(z))
            self._infos.append(pb.info)

    @property
    def batches(self) -> int:
        return len(self._infos)

    def report(self) -> tuple[GaussianityReport, PathGain]:
        with self._lock:
            if not self._noise:
                raise ValueError("the monitor has seen no batches yet.")
            noise, infos = np.concatenate(self._noise), list(self._infos)
        return gaussianity_report(noise, alpha=self.alpha), path_gain(infos)


def check_loader(loader: Iterable, batches: int = 10, alpha: float = 1e-3):
    """Run ``batches`` PairedBatches of a MatchedNoiseLoader; return (GaussianityReport, PathGain).

    Stops the loader's iteration early (its thread is shut down) once enough batches are seen.
    """
    monitor = NoiseMonitor(max_vectors=10**9, alpha=alpha)
    it = iter(loader)
    try:
        for pb in it:
            monitor.update(pb)
            if monitor.batches >= batches:
                break
    finally:
        close = getattr(it, "close", None)
        if close is not None:
            close()
    if monitor.batches == 0:
        raise ValueError("the loader yielded no batches to check.")
    return monitor.report()
