"""How many noise vectors does the Gaussianity report need to see a deviation? A power table.

    python benchmarks/detection.py [--replicates 30 --null-runs 4000 600]

For each deviation of the training noise from N(0, I) and each dimension (D=64 as a (4, 4, 4)
latent, D=3072 as a (3, 32, 32) image) the script finds the smallest n on a grid (steps of
sqrt(2), whole batches of 64 where the deviation acts per batch) at which
``noisepair.checks.gaussianity_report`` at alpha=1e-3 rejects in at least 90% of
``--replicates`` independent runs (a point is abandoned as soon as more than 10% of its runs
fail to reject). It then measures the false-alarm rate on exact N(0, I) noise. Deviations:

  offset s       offset noise: z = e + s * randn(C, 1, 1) per vector (one shift per channel)
  scale s        z = s * e
  knn k          Improved Immiscible's KNN (noisepair.match(..., "knn", k=k)): each sample of a
                 batch of 64 keeps the nearest of k fresh draws; data: a 10-mode mixture
                 (centres uniform in [-1, 1]^D, spread 0.3)
  pool, 1st batch  DANSM's pool (P=1024 noises, batches of 64): each sample in stream order takes
                 its nearest unused noise, the pool is redrawn when used up. Simulated here in a
                 few lines (noisepair/pool.py is being built separately); the report watches the
                 first batch of each cycle, where the drift is strongest (over a full cycle the
                 multiset is exact)
  batch shift s  one shared draw per batch of 64: z = e + s * g_batch
  channels rho   channels correlated at every pixel: corr(z_c, z_c') = rho, unit variances

Results go to benchmarks/results/detection.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from collections.abc import Callable

import numpy as np
from scipy import stats

import noisepair
from noisepair.checks import gaussianity_report

ALPHA = 1e-3
POWER = 0.9
BATCH = 64
POOL = 1024
SHAPES = {64: (4, 4, 4), 3072: (3, 32, 32)}
CAPS = {64: 2**16, 3072: 2**12}  # largest n tried: memory and minutes on a 2-core machine


def _mixture(rng, b, d):
    centres = np.random.default_rng(0).uniform(-1, 1, size=(10, d))
    return (centres[rng.integers(0, 10, b)] + 0.3 * rng.standard_normal((b, d))).astype(np.float32)


def offset(s):
    def draw(rng, n, shape):
        e = rng.standard_normal((n, *shape), dtype=np.float32)
        return e + s * rng.standard_normal((n, shape[0], 1, 1), dtype=np.float32)

    return draw


def scale(s):
    return lambda rng, n, shape: s * rng.standard_normal((n, *shape), dtype=np.float32)


def knn(k):
    def draw(rng, n, shape):
        d = int(np.prod(shape))
        out = []
        for _ in range(-(-n // BATCH)):  # samples pick independently: the last batch is cut
            x = _mixture(rng, BATCH, d)
            z = rng.standard_normal((BATCH * k, d), dtype=np.float32)
            out.append(z[noisepair.match(x, z, "knn", k=k)])
        return np.concatenate(out)[:n]

    return draw


def pool_first_batch(rng, n, shape):
    """DANSM's rule for the first batch of each pool cycle: nearest unused noise, stream order."""
    d = int(np.prod(shape))
    out = []
    for _ in range(n // BATCH):
        x = _mixture(rng, BATCH, d)
        pool = rng.standard_normal((POOL, d), dtype=np.float32)
        dist = (pool * pool).sum(1)[None, :] - 2 * x @ pool.T  # |x|^2 is the same for every noise
        for i in range(BATCH):
            j = int(dist[i].argmin())
            out.append(pool[j])
            dist[:, j] = np.inf  # used
    return np.stack(out)


def batch_shift(s):
    def draw(rng, n, shape):
        e = rng.standard_normal((n // BATCH, BATCH, *shape), dtype=np.float32)
        return (e + s * rng.standard_normal((n // BATCH, 1, *shape), dtype=np.float32)).reshape(
            n, *shape
        )

    return draw


def channels(rho):
    def draw(rng, n, shape):
        e = rng.standard_normal((n, *shape), dtype=np.float32)
        shared = rng.standard_normal((n, 1, *shape[1:]), dtype=np.float32)
        return np.sqrt(1 - rho) * e + np.sqrt(rho) * shared

    return draw


DEVIATIONS: dict[str, tuple[Callable, int]] = {  # name -> (draw, unit of n)
    "offset 0.01": (offset(0.01), 1),
    "offset 0.05": (offset(0.05), 1),
    "offset 0.1": (offset(0.1), 1),
    "scale 0.99": (scale(0.99), 1),
    "scale 0.97": (scale(0.97), 1),
    "knn k=4": (knn(4), 1),
    "knn k=16": (knn(16), 1),
    "knn k=64": (knn(64), 1),
    "pool P=1024, 1st batch": (pool_first_batch, BATCH),
    "batch shift 0.05": (batch_shift(0.05), BATCH),
    "channels rho=0.2": (channels(0.2), 1),
    "channels rho=0.5": (channels(0.5), 1),
}
TESTS = ("squared-norm KS", "mean chi2", "coordinates KS")


def grid(unit, cap):
    ns = sorted({unit * max(1, round(16 * 2 ** (k / 2) / unit)) for k in range(60)})
    return [n for n in ns if n <= cap]


def detect(name, draw, unit, d, replicates, seed):
    """Smallest grid n with >= 90% rejections; the power just below it; which tests fired."""
    allowed_misses = round(replicates * (1 - POWER))
    below = None
    for n in grid(unit, CAPS[d]):
        rejected, fired = 0, dict.fromkeys(TESTS, 0)
        for r in range(replicates):
            rng = np.random.default_rng([seed, d, n, r])
            report = gaussianity_report(draw(rng, n, SHAPES[d]), alpha=ALPHA)
            if report.passed:
                if r + 1 - rejected > allowed_misses:
                    break
            else:
                rejected += 1
                for t in report.failures():
                    fired[t] += 1
        else:
            return n, below, fired
        below = (n, rejected, r + 1)
    return None, below, None


def false_alarms(d, runs, n, seed):
    """Bonferroni-adjusted min p-value of each run on exact N(0, I) noise."""
    adjusted = []
    for r in range(runs):
        rng = np.random.default_rng([seed, d, r, 7])
        rep = gaussianity_report(rng.standard_normal((n, d)), alpha=ALPHA)
        adjusted.append(3 * min(rep.ks_pvalue, rep.norm_ks_pvalue, rep.mean_chi2_pvalue))
    return np.array(adjusted)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--replicates", type=int, default=30)
    parser.add_argument(
        "--null-runs",
        type=int,
        nargs=2,
        default=[4000, 600],
        help="false-alarm runs at D=64 and at D=3072",
    )
    parser.add_argument("--only", nargs="*", default=None, help="deviation names to run")
    parser.add_argument(
        "--out", default=os.path.join(os.path.dirname(__file__), "results", "detection.md")
    )
    args = parser.parse_args()
    load_before, start = os.getloadavg(), time.time()

    rows = []
    for name, (draw, unit) in DEVIATIONS.items():
        if args.only and name not in args.only:
            continue
        cells = []
        for d in SHAPES:
            t0 = time.time()
            n, below, fired = detect(name, draw, unit, d, args.replicates, seed=1)
            if n is None:
                cell = f"> {CAPS[d]}"
                if below:
                    cell += f" ({below[1]}/{below[2]} at {below[0]})"
            else:
                cell = f"{n}" if n > grid(unit, CAPS[d])[0] else f"<= {n} (the smallest n tried)"
                if below:
                    cell += f" ({below[1]}/{below[2]} at {below[0]})"
                cell += f"; {', '.join(f'{t} {c}' for t, c in fired.items() if c)}"
            cells.append(cell)
            print(f"{name:24s} D={d:5d}: {cell}   [{time.time() - t0:.0f} s]", flush=True)
        rows.append((name, *cells))

    nulls = []
    for d, runs, n in ((64, args.null_runs[0], 1024), (3072, args.null_runs[1], 128)):
        t0 = time.time()
        p = false_alarms(d, runs, n, seed=2)
        counts = {a: int((p < a).sum()) for a in (1e-3, 1e-2, 5e-2)}
        upper = {a: stats.beta.ppf(0.975, c + 1, runs - c) for a, c in counts.items()}
        nulls.append((d, runs, n, counts, upper))
        print(
            f"false alarms D={d} n={n}: "
            + ", ".join(f"{c}/{runs} at {a:g}" for a, c in counts.items())
            + f"   [{time.time() - t0:.0f} s]",
            flush=True,
        )

    write(args, rows, nulls, load_before, os.getloadavg(), time.time() - start)


def write(args, rows, nulls, load_before, load_after, seconds):
    command = (
        f"Command: `python benchmarks/detection.py --replicates {args.replicates} --null-runs "
        f"{args.null_runs[0]} {args.null_runs[1]}`" + (" --only ..." if args.only else "")
    )
    machine = (
        f"Machine: {os.cpu_count()} CPU cores ({platform.machine()}), no GPU, Python "
        f"{platform.python_version()}, numpy {np.__version__}; shared with other jobs (load "
        f"average {load_before[0]:.2f} before, {load_after[0]:.2f} after); "
        f"{seconds / 60:.1f} minutes."
    )
    reading = (
        f"The report is `noisepair.checks.gaussianity_report` at alpha={ALPHA:g} (what "
        "`assert_gaussian`, `check_loader`, `NoiseMonitor`, the `noise_monitor` fixture and "
        "`noisepair check` run). A cell is the smallest n (noise vectors, on a grid in steps "
        f"of sqrt(2), whole batches of {BATCH} where the deviation acts per batch) at which "
        f"at least {POWER:.0%} of {args.replicates} independent runs rejected N(0, I); in "
        "brackets the rejections / runs at the last grid point that fell short (a point is "
        f"abandoned after {round(args.replicates * (1 - POWER)) + 1} misses); then how many "
        "of the runs at n each test rejected. '> cap' means no grid point up to the cap "
        "reached 90% (cap: memory and minutes on this machine)."
    )
    deviations = (
        "Deviations: offset s: z = e + s * randn(C, 1, 1) per vector; scale s: z = s * e; "
        f"knn k: each sample of a batch of {BATCH} keeps the nearest of k fresh draws "
        "(`noisepair.match(..., 'knn', k=k)`), data a 10-mode mixture (centres uniform in "
        f"[-1, 1]^D, spread 0.3); pool: DANSM's pool (P={POOL}, batches of {BATCH}, each "
        "sample in stream order takes its nearest unused noise), simulated in the "
        "benchmark, the report watching the first batch of each cycle; batch shift s: "
        "z = e + s * g with one g per batch; channels rho: unit-variance channels with "
        "correlation rho at every pixel."
    )
    lines = [
        "# Detection power of the Gaussianity report",
        "",
        command,
        "",
        machine,
        "",
        reading,
        "",
        "| deviation | D=64 (4, 4, 4) | D=3072 (3, 32, 32) |",
        "|---|---|---|",
    ]
    lines += [f"| {name} | {a} | {b} |" for name, a, b in rows]
    lines += [
        "",
        deviations,
        "",
        "## False alarms on exact N(0, I)",
        "",
        "| D | runs | n per run | rejected at 1e-3 | at 1e-2 | at 0.05 |",
        "|---|---|---|---|---|---|",
    ]
    for d, runs, n, counts, upper in nulls:
        lines.append(
            f"| {d} | {runs} | {n} | "
            + " | ".join(
                f"{c} ({c / runs:.4f}; 95% upper {upper[a]:.4f})" for a, c in counts.items()
            )
            + " |"
        )
    lines.append("")
    with open(args.out, "w") as f:
        f.write("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
