"""Does matching pay for *your* data? Measure it, then read the regime map.

:func:`advise` takes the samples of a few of your batches and, for each arm (a way of matching:
per batch, or a scope of several consecutive batches), measures what matching does to them:
the squared-path ratio matched / as drawn, and the pairing time per batch. It then places each
ratio on the regime map: the rows of benchmarks/results/regime.json with the nearest ratio say
what training gained there (50-step W2, 2-step W2, 1-step discretisation error). The map ships
condensed as noisepair/regime_map.json (made by benchmarks/regime_table.py), so an installed
package reads it too. Every number in the advice is a measurement on your data or a row of
that table.

Placement uses the map rows of assignment arms (per batch and scope) with N(0, I) noise: the
path ratio is the quantity matching changes, and across the map the gains grow as it falls.
DANSM's pool and KNN are left out: at the same ratio they trained worse (the pool's drift
within a cycle, KNN's non-Gaussian noise; see regime.md). The map was measured at 600 steps:
the advice says "early training" where it relies on a gain.

An arm is any object with ``name``, ``option``, ``batches`` (how many it reads) and
``measure(data, budget, seed) -> Measurement``. The dataset-scale couplings (LOOM-CFM's
persistent seeds, SD-FM's semi-discrete OT) are two such entries of :data:`ARMS`: the batches
read stand for the data set, and their ratio is placed on the map the same way.
"""

from __future__ import annotations

import json
import time
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from noisepair.backend import flat, to_numpy
from noisepair.matchers import get_matcher
from noisepair.pairing import pair, validate_sample

#: the largest matched set measured: its dense cost matrix is 0.5 GiB in float64.
MAX_MATCHED_SET = 8192
#: at most this much sample data is read (float32).
MAX_READ_BYTES = 1 << 30
#: solve time grows about as n ** GROWTH for a dense assignment of n samples (n^2 costs, the
#: solver between n^2 and n^3): the forecast that caps a scope to the time left.
GROWTH = 2.5
#: map rows compared with each measured ratio.
NEAREST = 3
#: a ratio this far above the map's largest is "beyond the map".
BEYOND = 0.05


@dataclass
class Measurement:
    """What one arm did to your batches."""

    arm: str  # "batch", "scope=8"
    option: str  # the MatchedNoiseLoader arguments that give it
    matched_set: int  # samples matched together
    ratio: float  # mean squared |x - z|, matched / as drawn
    pair_ms: float  # pairing time per batch (a scope's solve shared by its batches)
    solves: int
    solver: str
    note: str = ""  # why the arm was capped


@dataclass
class Placement:
    """Where a measured ratio falls on the regime map: the nearest rows and what they gained."""

    rows: list[dict]
    beyond: bool  # the ratio is above every map row's: an extrapolation
    w2_50: tuple[float, float]  # range of the rows' mean 50-step W2 change
    w2_2: tuple[float, float]
    disc1: tuple[float, float]
    verdict: str  # "gain": every row gained in 50-step W2; "some": some did; "none": none did

    @property
    def expected(self) -> float:
        """The rows' mean 50-step W2 change: how arms are ranked."""
        return float(np.mean([r["w2_50"][0] for r in self.rows]))


@dataclass
class Advice:
    """The measurements, their places on the map and the one-line recommendation."""

    dim: int
    item_shape: tuple[int, ...]
    batch_size: int
    batches: int
    read_seconds: float
    step_ms: float | None
    measurements: list[Measurement]
    placements: list[Placement]
    recommendation: str
    regime: dict = field(repr=False)

    def as_dict(self) -> dict:
        out = asdict(self)
        out["regime"] = {k: v for k, v in self.regime.items() if k != "rows"}
        return out


class Budget:
    """Seconds left for the measurements, and a forecast of a solve's time from the largest
    solve timed so far."""

    def __init__(self, seconds: float):
        self.end = time.perf_counter() + float(seconds)
        self.largest = (0, 0.0)  # (samples, seconds) of the largest solve so far

    def left(self) -> float:
        return self.end - time.perf_counter()

    def record(self, n: int, seconds: float) -> None:
        if n >= self.largest[0]:
            self.largest = (n, seconds)

    def forecast(self, n: int) -> float:
        n0, t0 = self.largest
        return 0.0 if n0 == 0 else t0 * (n / n0) ** GROWTH


class Arm(Protocol):
    name: str  # as the table shows it
    option: str  # the MatchedNoiseLoader arguments that give it
    batches: int  # batches it needs to read

    def measure(
        self, data: Sequence[np.ndarray], budget: Budget, seed: int
    ) -> Measurement | None: ...


@dataclass(frozen=True)
class Scope:
    """``scope=k``: k consecutive batches matched together (DANSM's match size); k=1 is
    Immiscible Diffusion's per-batch matching. Exact assignment (``method="auto"``)."""

    batches: int

    @property
    def name(self) -> str:
        return "batch" if self.batches == 1 else f"scope={self.batches}"

    @property
    def option(self) -> str:
        return "method='auto'" + ("" if self.batches == 1 else f", scope={self.batches}")

    def measure(self, data, budget, seed):
        k, note = self._capped(data, budget)
        if k is None:
            return None
        arm = self if k == self.batches else Scope(k)
        matcher = get_matcher("auto")
        rng = np.random.default_rng([seed, k])
        matched = drawn = 0.0
        seconds, solvers = [], set()
        for lo in range(0, len(data) - k + 1, k):
            x = np.concatenate(data[lo : lo + k])
            z = rng.standard_normal(x.shape, dtype=np.float32)
            _, info = pair(x, z, matcher)
            matched += info["cost"] * len(x)
            drawn += info["cost_random"] * len(x)
            seconds.append(info["seconds"])
            budget.record(len(x), info["seconds"])
            solvers.add(info.get("solver", info["method"]))
            if budget.left() < budget.forecast(len(x)):
                break
        return Measurement(
            arm=arm.name,
            option=arm.option,
            matched_set=sum(len(b) for b in data[:k]),
            ratio=matched / drawn if drawn > 0 else 1.0,
            # the median solve: a loaded machine only ever adds time
            pair_ms=1000 * float(np.median(seconds)) / k,
            solves=len(seconds),
            solver="/".join(sorted(solvers)),
            note=note,
        )

    def _capped(self, data, budget) -> tuple[int | None, str]:
        """The scope that fits the batches read, the memory cap and the time left."""
        k, b, note = self.batches, len(data[0]), ""
        if k > len(data):
            k, note = len(data), f"capped at {len(data)}: the loader gave {len(data)} batches"
        while k > 1 and k * b > MAX_MATCHED_SET:
            k, note = k // 2, f"capped at {k // 2}: at most {MAX_MATCHED_SET} samples matched"
        while k > 1 and budget.forecast(k * b) > budget.left():
            k, note = k // 2, f"capped at {k // 2} by the time budget"
        if k < self.batches and k <= 1:
            return None, note
        return k, note


@dataclass(frozen=True)
class Persistent:
    """``persistent=k``: LOOM-CFM's k noise seeds per data point. The batches read stand for the
    data set: ``epochs`` shuffled passes over them through the loader's own coupling, the path
    ratio measured on the last (the seeds have moved by then, as they do over a run's epochs)."""

    k: int
    epochs: int = 8
    batches: int = 64

    @property
    def name(self) -> str:
        return f"persistent={self.k}"

    @property
    def option(self) -> str:
        return f"method='auto', persistent={self.k}"

    def measure(self, data, budget, seed):
        from noisepair.couplings import Group
        from noisepair.persistent import PersistentMatching

        x, b = np.concatenate(data), len(data[0])
        coupling = PersistentMatching(
            self.k, get_matcher("auto"), "sqeuclidean", "float32", seed, 1
        )
        rng = np.random.default_rng([seed, self.k])
        seconds, last = [], None  # last: (matched, random) of the last complete epoch
        for epoch in range(self.epochs):
            order, matched, random = rng.permutation(len(x)), 0.0, 0.0
            for i, lo in enumerate(range(0, len(x) - b + 1, b)):
                if budget.left() < budget.forecast(b):
                    return None if last is None else self._result(len(x), *last, seconds, epoch)
                ids = order[lo : lo + b]
                _, info = coupling.pair(x[ids], [b], None, Group(seed, 0, epoch, i, None, ids))
                seconds.append(info["seconds"])
                budget.record(b, info["seconds"])
                matched, random = matched + info["cost"], random + info["cost_random"]
            last = (matched, random)
        return self._result(len(x), *last, seconds, self.epochs)

    def _result(self, n, matched, random, seconds, epochs) -> Measurement:
        note = "" if epochs == self.epochs else f"{epochs} of {self.epochs} epochs in the budget"
        return Measurement(
            arm=self.name,
            option=self.option,
            matched_set=n,  # a batch at a time, against the whole set's seeds
            ratio=matched / random if random > 0 else 1.0,
            pair_ms=1000 * float(np.median(seconds)),
            solves=len(seconds),
            solver="auto",
            note=note or f"last of {epochs} epochs over the batches read",
        )


@dataclass(frozen=True)
class SemiDiscreteArm:
    """``coupling=SemiDiscrete.fit(data)``: SD-FM's semi-discrete coupling fitted on the batches
    read (to a loose marginal error ``tol``, within the time left); fresh noise then picks the
    data, with replacement. Its ratio compares with a random pairing of the same data."""

    tol: float = 0.05
    draws: int = 4096
    batches: int = 64

    name = "semidiscrete"
    option = "coupling=SemiDiscrete.fit(data)"

    def measure(self, data, budget, seed):
        from noisepair.semidiscrete import SemiDiscrete

        x, b = np.concatenate(data), len(data[0])
        left = budget.left()
        if left <= 1:
            return None
        # the fit searches all N points per draw: stop it at what the time left allows
        flops = 2.0 * len(x) * x.shape[1]
        with warnings.catch_warnings():  # a fit stopped short is said in the row's note
            warnings.simplefilter("ignore", RuntimeWarning)
            sd = SemiDiscrete.fit(
                x, tol=self.tol, seed=seed, max_draws=max(len(x), int(0.5 * left * 2e9 / flops))
            )
        z = np.random.default_rng([seed, 7]).standard_normal((self.draws, x.shape[1]))
        z = z.astype(np.float32)
        start = time.perf_counter()
        chosen = x[np.asarray(sd.assign(z))]
        assign_ms = 1000 * (time.perf_counter() - start) * b / self.draws
        matched = float(((chosen - z) ** 2).sum(1).mean())
        random = float((x**2).sum(1).mean() + (z**2).sum(1).mean() - 2 * x.mean(0) @ z.mean(0))
        converged = sd.report.converged
        return Measurement(
            arm=self.name,
            option=self.option,
            matched_set=len(x),
            ratio=matched / random,
            pair_ms=assign_ms,
            solves=self.draws // b,
            solver="semidiscrete",
            note="" if converged else f"fit stopped short of tol={self.tol} (time budget)",
        )


#: the arms measured, smallest matched set first (a scope's time is forecast from the last).
ARMS: tuple[Arm, ...] = (Scope(1), Scope(8), Scope(64), Persistent(6), SemiDiscreteArm())


@cache
def regime_table() -> dict:
    """The condensed regime map shipped with the package (noisepair/regime_map.json)."""
    return json.loads(resources.files("noisepair").joinpath("regime_map.json").read_text())


def map_rows(table: dict) -> list[dict]:
    """The rows advice is placed among: assignment arms (per batch, scope), N(0, I) noise."""
    return [
        r
        for r in table["rows"]
        if r["source"] == "N(0, I)" and (r["arm"] == "batch" or r["arm"].startswith("scope"))
    ]


def place(ratio: float, table: dict | None = None, nearest: int = NEAREST) -> Placement:
    """The :func:`map_rows` with the path ratio nearest ``ratio``, and what they gained."""
    rows = map_rows(regime_table() if table is None else table)
    near = sorted(rows, key=lambda r: abs(r["path_ratio"] - ratio))[:nearest]
    gains = [r["w2_50"][2] < 0 for r in near]  # the interval's upper end below 0
    verdict = "gain" if all(gains) else "some" if any(gains) else "none"
    beyond = ratio > max(r["path_ratio"] for r in rows) + BEYOND
    if beyond:
        verdict = "none"  # the map's gains shrink as the ratio nears 1: none is expected here

    def span(metric: str) -> tuple[float, float]:
        means = [r[metric][0] for r in near]
        return (min(means), max(means))

    return Placement(near, beyond, span("w2_50"), span("w2_2"), span("disc1"), verdict)


def read_samples(
    samples: Iterable[Any], batches: int, seconds: float
) -> tuple[list[np.ndarray], tuple[int, ...]]:
    """Up to ``batches`` sample batches as float32 (B, D) arrays, within ``seconds`` and
    :data:`MAX_READ_BYTES`, and the shape of one sample."""
    out: list[np.ndarray] = []
    start, size, shape = time.perf_counter(), 0, ()
    for sample in samples:
        validate_sample(sample)
        shape = shape or tuple(int(s) for s in sample.shape[1:])
        x = np.asarray(to_numpy(flat(sample)), dtype=np.float32)
        if out and x.shape[1] != out[0].shape[1]:
            raise ValueError(
                f"batch {len(out)} has {x.shape[1]} values per sample, the first had "
                f"{out[0].shape[1]}: matching needs one shape per run."
            )
        out.append(x)
        size += x.nbytes
        if len(out) >= batches or size >= MAX_READ_BYTES or time.perf_counter() - start > seconds:
            break
    if not out:
        raise ValueError("the loader yielded no batches.")
    return out, shape


def advise(
    samples: Iterable[Any],
    *,
    step_ms: float | None = None,
    budget: float = 30.0,
    seed: int = 0,
    arms: Sequence[Arm] = ARMS,
) -> Advice:
    """Measure each arm on the sample batches ``samples`` (arrays or tensors of shape (B, ...))
    and place it on the regime map; ``step_ms``: your training step, to compare the pairing time
    with; ``budget``: seconds for reading and measuring (the larger scopes are capped to fit)."""
    if step_ms is not None and step_ms <= 0:
        raise ValueError(f"the step time must be positive, got {step_ms} ms.")
    if budget <= 0:
        raise ValueError(f"the time budget must be positive, got {budget} s.")
    clock = Budget(budget)
    start = time.perf_counter()
    wanted = max(a.batches for a in arms)
    data, shape = read_samples(samples, wanted, budget / 2)
    read_seconds = time.perf_counter() - start
    if len(data[0]) < 2:
        raise ValueError(
            "the batches hold 1 sample: there is nothing to reassign within a batch; batch "
            "several samples (or use scope= to match consecutive batches)."
        )
    pair(data[0], data[0], get_matcher("auto"))  # load the solvers once, untimed
    measurements: list[Measurement] = []
    for arm in arms:
        m = arm.measure(data, clock, seed)
        if m is not None and all(m.arm != p.arm for p in measurements):  # a capped repeat
            measurements.append(m)
    table = regime_table()
    placements = [place(m.ratio, table) for m in measurements]
    advice = Advice(
        dim=int(data[0].shape[1]),
        item_shape=shape,
        batch_size=len(data[0]),
        batches=len(data),
        read_seconds=read_seconds,
        step_ms=step_ms,
        measurements=measurements,
        placements=placements,
        recommendation="",
        regime=table,
    )
    advice.recommendation = recommend(advice)
    return advice


def _pct(v: float) -> str:
    return f"{v * 100:+.0f}%"


def _span(lo_hi: tuple[float, float]) -> str:
    lo, hi = lo_hi
    return _pct(lo) if abs(hi - lo) < 0.005 else f"{_pct(lo)} to {_pct(hi)}"


def choose(advice: Advice) -> int:
    """The arm to recommend: the lowest expected 50-step W2 change; a smaller matched set
    within 1 point of it wins; with a step time, arms whose pairing outlasts a step only when
    no arm fits."""
    order = range(len(advice.measurements))
    if advice.step_ms is not None:
        fits = [i for i in order if advice.measurements[i].pair_ms <= advice.step_ms]
        order = fits or order
    best = min(order, key=lambda i: advice.placements[i].expected)
    target = advice.placements[best].expected + 0.01
    return min(
        (i for i in order if advice.placements[i].expected <= target),
        key=lambda i: advice.measurements[i].matched_set,
    )


def recommend(advice: Advice) -> str:
    """One line: the data, the ratio per batch, what the map found at that ratio, what to do."""
    batch, here = advice.measurements[0], advice.placements[0]
    i = choose(advice)
    m, p = advice.measurements[i], advice.placements[i]
    head = (
        f"d={advice.dim}, per-batch ratio {batch.ratio:.2f} "
        f"({(1 - batch.ratio) * 100:.0f}% shorter squared paths)"
    )
    use = f"MatchedNoiseLoader(loader, {m.option})" + (f" (ratio {m.ratio:.2f})" if i else "")
    straight = f"1-step error {_span(p.disc1)}, 2-step W2 {_span(p.w2_2)}"
    w2 = f"50-step W2 {_span(p.w2_50)}"
    if p.verdict == "none":
        top = max(r["path_ratio"] for r in map_rows(advice.regime))
        where = f"beyond the map (its ratios reach {top:.2f}), " if here.beyond else ""
        tail = (
            f"{where}matching will not change 50-step quality (map rows nearest: {w2}); expect "
            f"a smaller few-step error ({straight}): worth it for few-step sampling, with {use}"
        )
    elif p.verdict == "some":
        tail = (
            f"expect straighter paths ({straight}) and at most a small 50-step gain ({w2}) in "
            f"early training; use {use}"
        )
    else:
        tail = (
            f"matching pays here: map rows at this ratio gained in early training ({w2}; "
            f"{straight}); use {use}"
        )
    return f"{head}: {tail}; {_cost(m, advice.step_ms)}."


def _cost(m: Measurement, step_ms: float | None) -> str:
    if step_ms is None:
        return f"pairing {m.pair_ms:.3g} ms per batch (give --step-ms to compare with your step)"
    share = m.pair_ms / step_ms
    fits = (
        "hidden by the prefetch thread"
        if share <= 1
        else "longer than a step: it will slow training"
    )
    return f"pairing {m.pair_ms:.3g} ms per batch, {share * 100:.0f}% of your {step_ms:g} ms step ({fits})"


def table(advice: Advice) -> str:
    """The measurements and their places on the map, as an aligned text table."""
    head = (
        f"{'arm':<10}{'matched':>8}{'ratio':>8}{'shorter':>9}{'ms/batch':>10}  "
        f"{'map at this ratio: 50-step W2':<30}{'2-step W2':<16}{'1-step error':<16}nearest rows"
    )
    lines = [head]
    for m, p in zip(advice.measurements, advice.placements):
        names = ", ".join(f"{r['data']} {r['arm']} {r['path_ratio']:.2f}" for r in p.rows)
        w2 = _span(p.w2_50) + (" (beyond map)" if p.beyond else "")
        lines.append(
            f"{m.arm:<10}{m.matched_set:>8}{m.ratio:>8.3f}{(1 - m.ratio) * 100:>8.0f}%"
            f"{m.pair_ms:>10.3g}  {w2:<30}{_span(p.w2_2):<16}{_span(p.disc1):<16}{names}"
        )
        if m.note:
            lines.append(f"{'':<10}({m.note})")
    return "\n".join(lines)


def plot(advice: Advice, path: str | Path) -> Path:
    """The regime map's 50-step W2 and 1-step error changes against the path ratio, with your
    arms' measured ratios marked."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    rows = map_rows(advice.regime)
    dims = sorted({r["d"] for r in rows})
    colors = dict(zip(dims, plt.cm.viridis(np.linspace(0, 0.85, len(dims)))))
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, metric, label in (
        (axes[0], "w2_50", "50-step W2 change vs random (%)"),
        (axes[1], "disc1", "1-step discretisation error change (%)"),
    ):
        for d in dims:
            sel = [r for r in rows if r["d"] == d]
            mean = np.array([r[metric][0] for r in sel]) * 100
            err = np.abs(np.array([[r[metric][1], r[metric][2]] for r in sel]).T * 100 - mean)
            ax.errorbar(
                [r["path_ratio"] for r in sel],
                mean,
                yerr=err,
                fmt="o",
                ms=4,
                color=colors[d],
                label=f"map, d={d}",
                capsize=2,
            )
        for m, style in zip(advice.measurements, ("--", ":", "-.", (0, (5, 1, 1, 1)))):
            ax.axvline(
                m.ratio, color="#d62728", lw=1.4, ls=style, label=f"yours, {m.arm}: {m.ratio:.2f}"
            )
        ax.axhline(0, color="0.5", lw=0.8)
        ax.set_xlim(0, 1.02)
        ax.set_xlabel("squared-path ratio, matched / as drawn (lower: shorter paths)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8, loc="lower right", ncol=2)
    fig.suptitle(
        f"Your data (d={advice.dim}, batch {advice.batch_size}; red: measured ratios) on the "
        f"regime map of {advice.regime['date'][:10]} (rectified flow, 600 steps, 95% intervals)",
        fontsize=10,
    )
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
