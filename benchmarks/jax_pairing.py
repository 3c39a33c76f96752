"""Pairing time per batch through the JAX path vs the numpy and torch paths, on this CPU.

One pairing = cost matrix + exact assignment (``hungarian``, lapjv) + the index back in the
sample's framework, i.e. ``noisepair.pairing.pair``: the same code for every framework, through
its backend. Inputs are drawn once per case; each framework is warmed up (JAX compiles the cost
for the shape) and then timed over ROUNDS rounds (frameworks taking turns within a round), fastest and median
reported. The cost alone
(``cost_matrix``, synchronised with ``block_until_ready`` for JAX) is timed beside it, since it
is the only part that runs in the sample's framework; the solve runs on the host for all three.

Then the loader's overlap for JAX batches, as benchmarks/loader_overhead.py measures it for
torch: a step that sleeps as long as each batch's pairing took (the CPU stays free), matched /
plain batches per second.

python benchmarks/jax_pairing.py [--quick]   (writes benchmarks/results/jax_pairing.md)
"""

from __future__ import annotations

import os
import platform
import statistics
import sys
import time
from datetime import datetime, timezone
from importlib.metadata import version
from pathlib import Path

import jax
import numpy as np
import torch
from loader_overhead import sleep_overlap

from noisepair.cost import cost_matrix
from noisepair.matchers import get_matcher
from noisepair.pairing import pair

QUICK = "--quick" in sys.argv[1:]
ROUNDS = 3 if QUICK else 15
CASES = [(256, 3072), (1024, 3072)]
OUT = Path(__file__).resolve().parent / "results" / "jax_pairing.md"


def timed(fns, rounds):
    """{name: (fastest, median)} seconds; the functions take turns within each round, so that
    load from other jobs on a shared machine falls on all of them alike."""
    for fn in fns.values():
        fn()  # warm-up: imports, thread pools, JAX compilation for this shape
    times = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            t = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t)
    return {name: (min(ts), statistics.median(ts)) for name, ts in times.items()}


def sync(x):
    return x.block_until_ready() if isinstance(x, jax.Array) else x


def main():
    load_start = os.getloadavg()
    rows = []
    matcher = get_matcher("hungarian")
    for b, d in CASES:
        rng = np.random.default_rng(0)
        x = rng.normal(size=(b, d)).astype(np.float32)
        z = rng.normal(size=(b, d)).astype(np.float32)
        frameworks = {
            "numpy": (x, z),
            "torch": (torch.from_numpy(x), torch.from_numpy(z)),
            "jax": (jax.numpy.asarray(x), jax.numpy.asarray(z)),
        }
        reference = np.asarray(pair(x, z, matcher)[0])
        fns = {}
        for name, (xs, zs) in frameworks.items():
            fns[("pair", name)] = lambda xs=xs, zs=zs: sync(pair(xs, zs, matcher)[0])
            fns[("cost", name)] = lambda xs=xs, zs=zs: sync(cost_matrix(xs, zs))
        t = timed(fns, ROUNDS)
        for name, (xs, zs) in frameworks.items():
            same = bool(np.array_equal(np.asarray(pair(xs, zs, matcher)[0]), reference))
            (pair_best, pair_median), (cost_best, _) = t[("pair", name)], t[("cost", name)]
            rows.append(
                dict(
                    B=b,
                    D=d,
                    framework=name,
                    pair_best=pair_best,
                    pair_median=pair_median,
                    cost_best=cost_best,
                    same=same,
                )
            )
            print(
                f"B={b} D={d} {name:6s} pair {pair_best * 1e3:8.1f} ms (median "
                f"{pair_median * 1e3:8.1f})  cost {cost_best * 1e3:7.1f} ms  same as numpy: {same}",
                flush=True,
            )
    overlap = []
    for b, d in CASES:
        x = np.random.default_rng(1).normal(size=(b, d)).astype(np.float32)
        batches = [
            (jax.numpy.asarray(np.roll(x, i, 0)), np.arange(b)) for i in range(12 if QUICK else 40)
        ]
        overlap.append({"B": b, "D": d, **sleep_overlap(batches, "hungarian")})
        print(overlap[-1], flush=True)
    write(rows, overlap, load_start, os.getloadavg())


def write(rows, overlap, load_start, load_end):
    by = {(r["B"], r["framework"]): r for r in rows}
    lines = [
        "# Pairing through the JAX path vs numpy and torch (CPU)",
        "",
        f"Run {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC with `python benchmarks/jax_pairing.py"
        f"{' --quick' if QUICK else ''}`: fastest and median of {ROUNDS} rounds after a warm-up, the frameworks "
        "taking turns within each round.",
        f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"{platform.system()}; SHARED with other jobs while measuring (load average "
        f"{load_start[0]:.1f} at the start, {load_end[0]:.1f} at the end), so absolute times are "
        "noisy; the ratios compare runs made back to back in one process.",
        f"Versions: numpy {np.__version__}, torch {torch.__version__}, jax {jax.__version__}, "
        f"lapjv {version('lapjv')}. JAX on its CPU backend ({jax.devices()[0].platform}).",
        "",
        "pair = `pairing.pair(x, z, hungarian)`: cost + lapjv on the host + index in the sample's "
        "framework. cost = `cost_matrix` alone.",
        "",
        "| B | D | framework | pair best (ms) | pair median (ms) | cost best (ms) | pair vs numpy "
        "| same permutation as numpy |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        base = by[(r["B"], "numpy")]["pair_best"]
        lines.append(
            f"| {r['B']} | {r['D']} | {r['framework']} | {r['pair_best'] * 1e3:.1f} | "
            f"{r['pair_median'] * 1e3:.1f} | {r['cost_best'] * 1e3:.1f} | "
            f"{r['pair_best'] / base:.2f}x | {'yes' if r['same'] else 'no'} |"
        )
    lines += [
        "",
        "Loader overlap, JAX batches (hungarian, prefetch=2): a step that sleeps as long as the "
        "batch's pairing took; ratio = matched / plain steady batches/s (whole: over the whole "
        "loop, first pairing included).",
        "",
        "| B | D | pair ms | plain it/s | matched it/s | ratio | ratio, whole |",
        "| --- | --- | --- | --- | --- | --- | --- |",
        *(
            f"| {o['B']} | {o['D']} | {o['pair_ms']:.1f} | {o['sleep_plain']:.2f} | "
            f"{o['sleep_matched']:.2f} | {o['sleep_ratio']:.3f} | {o['sleep_whole_ratio']:.3f} |"
            for o in overlap
        ),
        "",
    ]
    OUT.write_text("\n".join(lines))
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
