"""Semi-discrete optimal transport from N(0, I) to a data set (SD-FM): the noise picks the data.

A potential ``g_j`` per data point ``x_j`` (j < N) defines a map from noise to data: ``z`` goes
to ``argmin_j |z - x_j|^2 - g_j``, a maximum inner-product search ``argmax_j z . x_j + h_j``
once ``h_j = (g_j - |x_j|^2) / 2`` is folded in. The potentials that give each point
probability 1/N maximise the semi-dual ``E_z[min_j (|z - x_j|^2 - g_j)] + mean(g)``, whose
gradient is ``1/N - p_j(g)``; the map is then the optimal transport (squared L2 cost) from
N(0, I) to the uniform measure on the data.

:meth:`SemiDiscrete.fit` is stochastic gradient ascent on the semi-dual with fresh Gaussian
draws at every step, as ott-jax's ``SemidiscreteSolver`` with epsilon = 0 (hard assignment):

- it starts from the map z -> the point nearest to ``m + sigma z`` (m the data's mean, sigma^2
  their mean coordinate variance): g = 0 for data on the noise's scale, and far nearer the
  optimum than g = 0 for data that are not;
- the step of ``g_j`` is ``lr * s * (B/N) / sqrt(1 + e) * (1 - N c_j / B)``, where ``c_j`` of
  the step's B draws chose point j and e = draws / N. The factor N makes the gradient unitless;
  ``s`` is the cost scale at which cells trade mass, 1 / (the density at 0 of the gap between
  a noise's best and second-best cost), estimated on 1024 draws at the start and at every
  check, so one ``lr`` serves data of any scale, size and dimension. B is at most N / 4
  (larger batches needed more draws);
- the potentials returned are an average of the iterates weighted towards the recent ones
  (polynomial-decay averaging, weights growing like t^3);
- the stopping rule is ott-jax's: the chi-square divergence of the assignment frequencies from
  uniform, ``N sum_j p_j^2 - 1``, at most ``tol`` (ott's ``threshold``, 1e-3 there and here),
  on a fixed set of draws. The estimate ``N sum_j c_j (c_j - 1) / (M (M - 1)) - 1`` from the
  counts of M draws is unbiased (Mousavi-Hosseini et al. 2025, eq. 3.5), with a standard error
  of about ``sqrt(2N) / M``; ott-jax averages it over 16 separate batches, here the counts of
  all M draws are pooled, which keeps the pairs across batches and quarters the standard error
  for the same draws. Chi-square rather than L1: the L1 distance of empirical frequencies is
  biased by about sqrt(N / M) and needs M >> N draws to see an error, the chi-square estimate
  none, so a few sqrt(N) / tol draws suffice. It reads as a mean squared relative error
  (tol = 1e-3: frequencies off by about 3% root mean square). The fit stops at the first check
  under tol, so the error on fresh draws can come out somewhat above tol.

Cost: even with exact averaging, M draws leave a chi-square error of about N / M, so the rule
needs of the order of N / tol draws, each searched against all N points: O(N^2 d / tol)
operations, a GPU job for N of 10^5 and more (benchmarks/results/semidiscrete.md).

Sampling with replacement. Each noise's data index is an independent draw with (to the fit's
tolerance) probability 1/N per point: the data are drawn *with replacement*. An "epoch" of N
draws does not show every sample once: about 1 - 1/e = 63% of the points appear in it, some
several times, the rest not at all; over k epochs each point appears about k times (Poisson,
standard deviation sqrt(k)). The coupling guarantees every sample's frequency, not its
coverage. The noise stays exactly N(0, I): each batch's noise is a fresh draw; the data follow.

The search holds the data once as float32 (no copy when they already are float32 and
contiguous) and runs over blocks of at most ``block_bytes`` of scores. Numpy data need no
torch; a torch tensor on a device is searched on that device. faiss's exact inner-product
search on the vectors augmented with h was measured against it and is not used: slower with
faiss's default settings, on par with its BLAS path forced (a process-wide setting), and it
needs an (N, d + 1) copy of the data.

The batch sampler's state is two integers, ``{"epoch": e, "index": i}`` (the next batch of
epoch e), beside its fixed settings: every batch's noise is a function of (seed, rank, epoch,
index), and its indices a function of that noise and the potentials.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from noisepair.backend import Backend, backend_of, flat, get_backend, to_numpy
from noisepair.distributed import rank_and_world
from noisepair.noise import draw_like

#: the fit's own draws use epochs from here on: far from any epoch a sampler will see.
FIT_STREAM = 2**41
EVAL_STREAM = FIT_STREAM + 1  # the stopping rule's fixed draws
SCALE_STREAM = FIT_STREAM + 2
CHECK_STREAM = FIT_STREAM + 3  # marginal_error's
BLOCK_BYTES = 64 * 2**20
QUERY_ROWS = 4096  # noise rows searched at once
EVAL_ROWS = 8192  # noise rows drawn at once to estimate the marginal error
SCALE_DRAWS = 1024  # draws that estimate the fit's cost scale
AVERAGING_POWER = 3  # iterate weights grow like t^3 in the returned average
CHECK_GROWTH = 1.25  # the stopping rule is checked at steps this far apart (a ratio)


@dataclass(frozen=True)
class FitReport:
    """How a fit went. ``history`` holds ``(steps, draws, chi2)`` at each check; ``chi2`` and
    ``chi2_se`` are the last check's estimate and its standard error (on the draws it used of
    ``eval_draws``); ``scale`` is the cost scale ``s`` of the steps, as last estimated."""

    converged: bool
    steps: int
    draws: int
    chi2: float
    chi2_se: float
    eval_draws: int
    scale: float
    history: tuple


class SemiDiscrete:
    """The semi-discrete coupling of N(0, I) with the points of ``data``, given potentials.

    Usually made by :meth:`fit`; ``SemiDiscrete(data, potentials)`` restores one whose
    potentials were saved (``np.save(path, to_numpy(sd.potentials))``).

    Args:
        data: ``(N, ...)`` array or tensor of N samples (the data set or its latents), on the
            scale of the noise it is coupled with.
        potentials: ``(N,)`` potentials ``g``, defined up to an additive constant. None: all
            zero, so that each noise goes to its nearest point (far from uniform).
        block_bytes: the most memory one block of scores takes during a search.
    """

    def __init__(self, data: Any, potentials: Any = None, *, block_bytes: int = BLOCK_BYTES):
        self._backend, self._item, self._x = _prepare(data)
        self._block_elems = _block_elems(block_bytes)
        self._sq = self._backend.concat(  # |x_j|^2, in slices: no (N, d) temporary
            [(part * part).sum(1) for part in _slices(self._x)]
        )
        if potentials is None:
            potentials = np.zeros(len(self))
        g = self._backend.float64(_like_data(self._backend, potentials, self._x, "potentials"))
        if tuple(g.shape) != (len(self),):
            raise ValueError(
                f"potentials must hold one value per data point ({len(self)},), got shape "
                f"{tuple(g.shape)}."
            )
        if not self._backend.all_finite(g):
            raise ValueError("potentials must be finite (a fit that diverged?).")
        self._set(g)
        self.report: FitReport | None = None

    def __len__(self) -> int:
        return self._x.shape[0]

    @property
    def potentials(self) -> Any:
        """``(N,)`` float64 potentials (float32 where the framework has no float64 at hand, e.g.
        JAX without x64), mean zero, in the data's framework and on its device."""
        return self._g

    @property
    def item_shape(self) -> tuple:
        """The shape of one data item (and of one noise vector)."""
        return self._item

    @classmethod
    def fit(
        cls,
        data: Any,
        *,
        tol: float = 1e-3,
        batch_size: int = 1024,
        lr: float = 3.0,
        max_draws: int | None = None,
        eval_draws: int | None = None,
        seed: int = 0,
        block_bytes: int = BLOCK_BYTES,
    ) -> SemiDiscrete:
        """Fit the potentials of ``data`` by stochastic gradient ascent on the semi-dual.

        Stops at the first check (checks come at geometrically spaced steps, 1.25 times apart)
        where the chi-square error of the assignment frequencies, estimated on ``eval_draws``
        fixed draws, is at most ``tol``, or with a warning after ``max_draws`` noise draws
        (default ``20 N / tol``, several times what the rule took in the benchmarks). The
        result's ``report`` says which, and how far it got.

        Args:
            data: ``(N, ...)`` distinct samples (duplicates share one cell and cannot each get
                1/N: a clear error names them).
            tol: the chi-square error to reach (ott-jax's ``threshold``).
            batch_size: noise draws per step (at most N / 4 are used).
            lr: the step in units of the cost scale ``s`` (see the module docstring).
            max_draws: the most noise draws to spend.
            eval_draws: draws in the stopping rule's estimate (default ``4 sqrt(2N) / tol``:
                a standard error of tol / 4, at least 2^14).
            seed: the fit's draws (the sampler's noise uses a stream of its own).
            block_bytes: as for the constructor.
        """
        if not tol > 0:
            raise ValueError(f"tol must be > 0, got {tol}.")
        if not lr > 0:
            raise ValueError(f"lr must be > 0, got {lr}.")
        batch_size = _positive_int(batch_size, "batch_size")
        sd = cls(data, block_bytes=block_bytes)
        n = len(sd)
        _check_distinct(sd._x)
        max_draws = (
            int(20 * n / tol) if max_draws is None else _positive_int(max_draws, "max_draws")
        )
        eval_draws = (
            max(2**14, math.ceil(4 * math.sqrt(2 * n) / tol))
            if eval_draws is None
            else _positive_int(eval_draws, "eval_draws")
        )
        sd.report = sd._fit(tol, min(batch_size, max(1, n // 4)), lr, max_draws, eval_draws, seed)
        if not sd.report.converged:
            warnings.warn(
                f"SemiDiscrete.fit stopped after {sd.report.draws} draws with a chi-square error "
                f"of {sd.report.chi2:.3g} (tol {tol:g}); raise max_draws, or tol.",
                RuntimeWarning,
                stacklevel=2,
            )
        return sd

    def assign(self, noise: Any) -> Any:
        """The data index each noise vector goes to: ``argmin_j |z - x_j|^2 - g_j``.

        ``noise`` is ``(B, ...)`` with items of the data's size, in the data's framework and on
        its device; the ``(B,)`` int64 indices come back there too.
        """
        z = self._noise_rows(noise)
        return self._search(z, self._h)

    def marginal_error(self, draws: int = 2**16, *, seed: int = 0) -> tuple[float, float]:
        """The chi-square error of the assignment frequencies over ``draws`` fresh draws, and
        its standard error: ``(chi2, se)``. Near 0 (within a few se) when every point gets 1/N."""
        *_, (counts, m) = self._counts(self._h, _positive_int(draws, "draws"), seed, CHECK_STREAM)
        return _chi2(counts, m), math.sqrt(2 * len(self)) / m

    def batch_sampler(
        self,
        batch_size: int,
        *,
        seed: int = 0,
        rank: int | None = None,
        world_size: int | None = None,
        num_batches: int | None = None,
    ) -> SemiDiscreteBatchSampler:
        """A batch sampler for ``DataLoader(dataset, batch_sampler=...)`` whose batches are the
        data indices chosen by fresh noise; see :class:`SemiDiscreteBatchSampler`."""
        return SemiDiscreteBatchSampler(
            self,
            batch_size,
            seed=seed,
            rank=rank,
            world_size=world_size,
            num_batches=num_batches,
        )

    # -- the search ---------------------------------------------------------------------------
    def _set(self, g: Any) -> None:
        g = g - g.sum() / len(self)
        self._g = g
        self._h = self._backend.float32(g * 0.5 - self._backend.float64(self._sq) * 0.5)

    def _noise_rows(self, noise: Any) -> Any:
        b = self._backend
        if backend_of(noise) is not b:
            raise TypeError(
                f"noise must be a {b.name} array like the data, got {type(noise).__name__}."
            )
        if not b.same_device(noise, self._x):
            raise ValueError("noise must be on the data's device; move it there first.")
        if len(noise.shape) < 2 or math.prod(noise.shape[1:]) != self._x.shape[1]:
            raise ValueError(
                f"noise must be (B, ...) with items of {self._x.shape[1]} values like the data "
                f"{self._item}, got shape {tuple(noise.shape)}."
            )
        return b.float32(flat(noise))

    def _search(self, z: Any, h: Any) -> Any:
        """``argmax_j z . x_j + h_j`` for each row of ``z``, block by block."""
        b, x = self._backend, self._x
        n = x.shape[0]
        found = []
        for q in range(0, z.shape[0], QUERY_ROWS):
            zq = z[q : q + QUERY_ROWS]
            rows = b.arange(zq.shape[0], zq)
            cols = max(1, self._block_elems // zq.shape[0])
            values, where = [], []
            for s in range(0, n, cols):
                scores = zq @ x[s : s + cols].T
                scores += h[s : s + cols]
                i = scores.argmax(1)
                values.append(scores[rows, i])
                where.append(i + s)
                del scores  # before the next block's is made
            k = b.stack(values).argmax(0)  # the first block holding the maximum: ties go low
            found.append(b.stack(where)[k, rows])
        return b.concat(found)

    def _cost_scale(self, h: Any, seed: int) -> float:
        """1 / (the density at 0 of the gap between a noise's best and second-best cost): the
        cost by which a potential must move for its cell to gain or lose mass."""
        b, x, draws = self._backend, self._x, SCALE_DRAWS
        z = draw_like(x, draws, seed=seed, rank=0, epoch=SCALE_STREAM)
        rows = b.arange(draws, z)
        cols = max(2, self._block_elems // draws)
        tops = []
        for s in range(0, x.shape[0], cols):
            scores = z @ x[s : s + cols].T
            scores += h[s : s + cols]
            for _ in range(min(2, scores.shape[1])):
                i = scores.argmax(1)
                tops.append(scores[rows, i])
                scores = b.put(scores, (rows, i), -math.inf)
            del scores
        tops = b.stack(tops)  # (2 per block, draws): the best two overall are among them
        i = tops.argmax(0)
        cols = b.arange(draws, z)
        first = tops[i, cols]
        second = b.put(tops, (i, cols), -math.inf).argmax(0)
        gap = to_numpy(first - tops[second, cols]).astype(np.float64)
        # the density at 0 as (10% of the draws) / (the gap's 10% quantile); scores are half
        # costs
        return 2.0 * float(np.quantile(gap, 0.1)) / 0.1

    def _counts(self, h: Any, draws: int, seed: int, epoch: int) -> Iterator[tuple]:
        """``(counts, m)``: how often each point was chosen by the first m of ``draws`` draws
        from (seed, epoch), after each chunk of them."""
        counts = np.zeros(len(self), dtype=np.int64)
        for k, lo in enumerate(range(0, draws, EVAL_ROWS)):
            m = min(EVAL_ROWS, draws - lo)
            z = draw_like(self._x, m, seed=seed, rank=0, epoch=epoch, index=k)
            counts += np.bincount(to_numpy(self._search(z, h)), minlength=len(self))
            yield counts, lo + m

    # -- the fit ------------------------------------------------------------------------------
    def _fit(self, tol, batch_size, lr, max_draws, eval_draws, seed) -> FitReport:
        b, n = self._backend, len(self)
        u = self._start()  # g / 2 of the iterate
        h = b.float32(u - b.float64(self._sq) * 0.5)
        scale = self._cost_scale(h, seed) if n > 1 else 1.0
        avg = u
        history = []
        next_check = max(1, math.ceil(n / batch_size))
        step, draws = 0, 0
        chi2, se, converged = math.inf, math.inf, n == 1
        while not converged and draws < max_draws:
            z = draw_like(self._x, batch_size, seed=seed, rank=0, epoch=FIT_STREAM, index=step)
            chosen, counts = np.unique(to_numpy(self._search(z, h)), return_counts=True)
            epochs = draws / n
            eta = lr * scale * (batch_size / n) / math.sqrt(1.0 + epochs)
            # g_j += eta (1 - N c_j / B): the uniform part shifts every g alike and changes no
            # assignment, so only the chosen points move (g / 2 by half the step)
            idx = b.as_index(chosen, u)
            u = b.put(u, idx, u[idx] - _on(b, (0.5 * eta * n / batch_size) * counts, u))
            h = b.put(h, idx, b.float32(u[idx] - b.float64(self._sq[idx]) * 0.5))
            step += 1
            draws += batch_size
            w = (AVERAGING_POWER + 1) / (step + AVERAGING_POWER)
            avg = avg + (u - avg) * w
            if step >= next_check or draws >= max_draws:
                next_check = math.ceil(step * CHECK_GROWTH)
                chi2, m = self._check(avg, tol, eval_draws, seed)
                scale = self._cost_scale(h, seed)
                se = math.sqrt(2 * n) / m
                history.append((step, draws, chi2))
                converged = chi2 <= tol
        self._set(avg * 2.0)
        if n == 1:
            chi2 = se = 0.0
        return FitReport(converged, step, draws, chi2, se, eval_draws, scale, tuple(history))

    def _start(self) -> Any:
        """g / 2 for the map z -> the point nearest to m + sigma z (the data's mean m and root
        mean coordinate variance sigma^2): far closer to the optimum than g = 0 when the data
        are not on the noise's scale."""
        b, x, n = self._backend, self._x, len(self)
        mean = x.sum(0) / n
        sq = b.float64(self._sq)
        spread = sq - b.float64(x @ mean) * 2.0 + float((mean * mean).sum())  # |x_j - m|^2
        sigma = max(math.sqrt(max(float(spread.sum()), 0.0) / (n * x.shape[1])), 1e-12)
        return (sq - spread / sigma) * 0.5

    def _check(self, avg: Any, tol: float, eval_draws: int, seed: int) -> tuple[float, int]:
        """The chi-square error of the averaged potentials on the fixed evaluation draws, and
        the draws it took: it stops early once the estimate is clearly above ``tol`` (three
        standard errors)."""
        b, n = self._backend, len(self)
        h = b.float32(avg - b.float64(self._sq) * 0.5)
        for counts, m in self._counts(h, eval_draws, seed, EVAL_STREAM):
            chi2 = _chi2(counts, m)
            if chi2 - 3 * math.sqrt(2 * n) / m > tol:
                break
        return chi2, m


class SemiDiscreteBatchSampler:
    """Batches of data indices chosen by fresh Gaussian noise through a :class:`SemiDiscrete`.

    Batch ``index`` of epoch ``epoch`` draws ``batch_size`` noise vectors with
    :func:`noisepair.noise.draw_like` from (seed, rank, epoch, index), in the data's framework
    and on its device, and yields the data index each one goes to, in noise order: item k of
    the batch is the sample chosen by noise row k of :meth:`noise` (epoch, index). The data are
    drawn with replacement (see the module docstring): an index may repeat within a batch.

    An epoch is ``num_batches`` batches, by default ``ceil(N / (batch_size * world_size))``
    per rank: about N draws over all ranks, each rank drawing its own noise stream.

    Iteration follows torch's samplers: ``set_epoch(e)`` starts epoch e; a new ``iter()`` after
    a complete pass starts the next epoch by itself, and one after an interrupted pass goes on
    from the first batch not yet handed out. Right after ``iter()``, ``(epoch, index)`` is where
    the pass starts: its k-th batch is batch ``index + k`` of ``epoch``, chosen by
    ``noise(epoch, index + k)``. ``state_dict()`` is ``{"epoch", "index"}``, the next batch to
    hand out; a loader that fetches ahead (DataLoader workers) must save its own count of
    batches delivered instead and restore that with ``load_state_dict``.
    """

    def __init__(
        self,
        coupling: SemiDiscrete,
        batch_size: int,
        *,
        seed: int = 0,
        rank: int | None = None,
        world_size: int | None = None,
        num_batches: int | None = None,
    ):
        if not isinstance(coupling, SemiDiscrete):
            raise TypeError(f"coupling must be a SemiDiscrete, got {type(coupling).__name__}.")
        self.coupling = coupling
        self.batch_size = _positive_int(batch_size, "batch_size")
        found_rank, found_world = rank_and_world()
        self.rank = found_rank if rank is None else int(rank)
        self.world_size = (
            found_world if world_size is None else _positive_int(world_size, "world_size")
        )
        if not 0 <= self.rank < self.world_size:
            raise ValueError(f"rank must be in [0, {self.world_size}), got {self.rank}.")
        self.seed = int(seed)
        self.num_batches = (
            math.ceil(len(coupling) / (self.batch_size * self.world_size))
            if num_batches is None
            else _positive_int(num_batches, "num_batches")
        )
        self.epoch = 0
        self.index = 0

    def __len__(self) -> int:
        return self.num_batches

    def __iter__(self) -> Iterator[list]:
        """The batches from ``(epoch, index)`` on. The epoch turns here, when the iterator is
        made: a loader can read where its pass starts right after ``iter()``."""
        if self.index >= self.num_batches:
            self.epoch += 1
            self.index = 0
        return self._batches()

    def _batches(self) -> Iterator[list]:
        while self.index < self.num_batches:
            index = self.index
            self.index += 1
            yield to_numpy(self.indices(self.epoch, index)).tolist()

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)
        self.index = 0

    def noise(self, epoch: int, index: int, like: Any = None) -> Any:
        """The noise of batch ``index`` of ``epoch``: the vectors that chose its indices,
        ``(batch_size, *item_shape)`` float32 in the data's framework and device. With
        ``like`` (a batch of samples), the same values (through the host) in ``like``'s
        framework, dtype and device, shaped like its items."""
        sd = self.coupling
        z = draw_like(
            sd._x, self.batch_size, seed=self.seed, rank=self.rank, epoch=epoch, index=index
        ).reshape(self.batch_size, *sd.item_shape)
        if like is None:
            return z
        target = get_backend(like)
        if math.prod(like.shape[1:]) != math.prod(sd.item_shape):
            raise ValueError(
                f"like's items hold {math.prod(like.shape[1:])} values, the data's "
                f"{math.prod(sd.item_shape)}: the noise cannot take their shape."
            )
        z = to_numpy(z).reshape(self.batch_size, *like.shape[1:])
        return target.lookup(z, slice(None), like)

    def indices(self, epoch: int, index: int) -> Any:
        """The data indices of batch ``index`` of ``epoch`` (int64, the data's framework)."""
        return self.coupling.assign(self.noise(epoch, index))

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "index": self.index}

    def load_state_dict(self, state: dict) -> None:
        epoch, index = int(state["epoch"]), int(state["index"])
        if not 0 <= index <= self.num_batches:
            raise ValueError(f"index must be in [0, {self.num_batches}], got {index}.")
        self.epoch, self.index = epoch, index


def _prepare(data: Any) -> tuple[Backend, tuple, Any]:
    b = backend_of(data)
    if b is None:
        raise TypeError(
            f"data must be a numpy array or a torch/JAX tensor, got {type(data).__name__}."
        )
    if len(data.shape) < 2 or data.shape[0] < 1:
        raise ValueError(
            f"data must be (N, ...) with N >= 1 samples, got shape {tuple(data.shape)}; a "
            "single feature per sample is (N, 1)."
        )
    if not b.is_floating(data):
        raise TypeError(f"data must hold floating-point values, got {data.dtype}.")
    x = b.float32(flat(data))
    if not b.all_finite(x):
        raise ValueError("data must be finite (NaN or inf found).")
    return b, tuple(data.shape[1:]), x


def _check_distinct(x: Any) -> None:
    """Raise on repeated rows: each row is projected on a random direction in float64 and only
    rows whose projections tie are compared in full."""
    direction = np.random.default_rng(0).standard_normal(x.shape[1])
    proj = np.concatenate([to_numpy(part).astype(np.float64) @ direction for part in _slices(x)])
    order = np.argsort(proj, kind="stable")
    ties = np.flatnonzero(proj[order][1:] == proj[order][:-1])
    for t in ties:
        i, j = sorted((int(order[t]), int(order[t + 1])))
        if np.array_equal(to_numpy(x[i]), to_numpy(x[j])):
            raise ValueError(
                f"data rows {i} and {j} are equal: a semi-discrete coupling needs distinct "
                "points (equal points share one cell and cannot each get 1/N). Deduplicate, "
                "e.g. np.unique(data, axis=0, return_inverse=True), fit on the unique rows and "
                "map the chosen unique row to one of its copies."
            )


def _slices(x: Any, rows: int = 2**16) -> list:
    return [x[s : s + rows] for s in range(0, x.shape[0], rows)]


def _like_data(b: Backend, values: Any, x: Any, name: str) -> Any:
    """``values`` (an array of the data's framework, or anything numpy takes) as an array of
    the data's framework on its device."""
    if backend_of(values) is b:
        return values
    if backend_of(values) is not None and backend_of(values).name != "numpy":
        raise TypeError(f"{name} must be in the data's framework ({b.name}).")
    return _on(b, np.asarray(values, dtype=np.float64), b.float64(x[:1, 0]))


def _on(b: Backend, table: np.ndarray, like: Any) -> Any:
    """A numpy vector as an array of ``like``'s framework, dtype and device."""
    return b.lookup(table, slice(None), like)


def _chi2(counts: np.ndarray, draws: int) -> float:
    """The unbiased estimate of ``N sum_j p_j^2 - 1`` from the counts of ``draws`` draws."""
    if draws < 2:
        return math.inf
    c = counts.astype(np.float64)
    return float(len(counts) * (c * (c - 1)).sum() / (draws * (draws - 1.0)) - 1.0)


def _block_elems(block_bytes: int) -> int:
    return max(1, _positive_int(block_bytes, "block_bytes") // 4)


def _positive_int(value: Any, name: str) -> int:
    if isinstance(value, bool) or int(value) != value or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}.")
    return int(value)
