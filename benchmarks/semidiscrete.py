"""Semi-discrete coupling (noisepair.SemiDiscrete): fit, search, memory, ott-jax, path cost.

    python benchmarks/semidiscrete.py [--quick]

In one process (memory in child processes), on the regime map's 10-mode Gaussian mixture
(centres uniform in [-1.7, 1.7]^d, spread 0.1: coordinate variance about 1, like the noise):

- fit: ``SemiDiscrete.fit`` to its stopping rule at N = 10^3 and 10^4 (d = 8, 64): seconds,
  steps, draws per point (epochs of draws), the rule's chi-square estimate, the chi-square on
  fresh draws (``marginal_error``), and the draws against N / tol (the order that even exact
  averaging needs). N = 10^5 is not run to the rule on this machine: its row gives the seconds
  per step and what the epochs measured below imply.
- search: the time to assign a batch of 256 noises at N = 10^4, 10^5, 10^6 (d = 64):
  noisepair's blocked GEMM + argmax (numpy, and the same code on torch CPU tensors) against
  faiss-cpu's exact inner-product search on the vectors augmented with the potential
  (``faiss.knn`` and ``IndexFlatIP``), with faiss's default settings and with its BLAS path
  forced (``distance_compute_blas_threshold`` 20, database blocks of 16384). Every method must
  return the same indices (checked). harness.best_times, so compare within a row.
- memory: peak resident memory above the data itself, in a fresh process, for a batch assigned
  at N = 10^6 and 10^7 (d = 64), and for a short fit (a few steps and one check) at N = 10^6.
- ott-jax: ott-jax 0.6.0's SemidiscreteSolver (epsilon = 0, Adam with a cosine decay) and
  ours on the same data: the correlation of the potentials (constant removed), the share of
  fresh noises sent to the same point, each one's chi-square on fresh draws, seconds.
- path cost: mean |z - x|^2 of the pairs over that of random pairs (the same noises, data
  drawn uniformly), for SD pairs, exact assignment inside random batches of 64 / 256 / 1024,
  and exact assignment of N fresh noises to the whole data set (scipy), at d = 8 and 64;
  with the seconds to pair one batch of 256 each way.

The report goes to benchmarks/results/semidiscrete.md (semidiscrete_quick.md for --quick).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
from harness import best_times, machine_info, machine_line, ratio, table, write_results
from scipy.optimize import linear_sum_assignment

from noisepair import SemiDiscrete
from noisepair.backend import to_numpy

BATCH = 256


def mixture(n: int, d: int, seed: int = 0) -> np.ndarray:
    """The regime map's 10-mode Gaussian mixture, float32."""
    centres = np.random.default_rng([4321, d]).uniform(-1.7, 1.7, (10, d))
    rng = np.random.default_rng([seed, n, d])
    x = centres[rng.integers(0, 10, n)] + 0.1 * rng.standard_normal((n, d))
    return x.astype(np.float32)


def noise(m: int, d: int, seed: int = 99) -> np.ndarray:
    return np.random.default_rng([seed, m, d]).standard_normal((m, d), dtype=np.float32)


# -- fit ---------------------------------------------------------------------------------------
def fit_rows(cases) -> list:
    """Fits to the rule where they take minutes here; above 10^4 points, the time of one step's
    search and what the epochs measured at 10^4 (same d and tol) would take at that rate."""
    rows, epochs = [], {}
    for n, d, tol in cases:
        x = mixture(n, d)
        if n <= 10**4:
            t0 = time.perf_counter()
            sd = SemiDiscrete.fit(x, tol=tol)
            seconds = time.perf_counter() - t0
            r = sd.report
            epochs[d, tol] = r.draws / n
            fresh, se = sd.marginal_error(2**17, seed=1)
            cells = (
                f"{seconds:.1f}",
                r.steps,
                f"{r.draws / n:.0f}",
                f"{r.draws * tol / n:.1f}",
                f"{r.chi2:.2e} ± {r.chi2_se:.1e}" + ("" if r.converged else " (not reached)"),
                f"{fresh:.2e} ± {se:.1e}",
            )
        else:
            sd = SemiDiscrete(x, np.zeros(n))
            z = noise(1024, d)
            step = best_times({"step": lambda sd=sd, z=z: sd.assign(z)})["step"]
            known = epochs.get((d, tol))
            hours = "–" if known is None else f"{known * n / 1024 * step / 3600:.1f} h"
            cells = (
                f"not run: {step:.2f} s per step (search of 1024 draws); projected to the "
                f"epochs of N = 10^4: {hours}",
                "",
                "",
                "",
                "",
                "",
            )
        rows.append((n, d, f"{tol:g}", *cells))
        print(rows[-1], flush=True)
    return rows


# -- search ------------------------------------------------------------------------------------
class FaissSettings:
    """faiss's global BLAS settings for the block of a ``with``, restored after it."""

    def __init__(self, faiss, threshold, database_bs):
        self.faiss, self.values = faiss, (threshold, database_bs)

    def __enter__(self):
        cvar = self.faiss.cvar
        self.saved = (cvar.distance_compute_blas_threshold, cvar.distance_compute_blas_database_bs)
        self._set(self.values)

    def __exit__(self, *exc):
        self._set(self.saved)

    def _set(self, values):
        cvar = self.faiss.cvar
        cvar.distance_compute_blas_threshold, cvar.distance_compute_blas_database_bs = values


def search_rows(sizes, d) -> tuple[list, list]:
    try:
        import faiss
    except ImportError:
        faiss = None
    rows = [search_row(n, d, faiss) for n in sizes]
    notes = [] if faiss else ["faiss-cpu is not installed: its columns are empty."]
    return rows, notes


def search_row(n, d, faiss) -> tuple:
    import torch

    x = mixture(n, d, seed=1)
    g = np.random.default_rng(0).standard_normal(n) * 0.1
    sd = SemiDiscrete(x, g)
    sdt = SemiDiscrete(torch.from_numpy(x), torch.from_numpy(g))
    z = noise(BATCH, d)
    zt = torch.from_numpy(z)
    want = sd.assign(z)
    calls = {"numpy": lambda: sd.assign(z), "torch": lambda: sdt.assign(zt)}
    check = {"torch": lambda: sdt.assign(zt).numpy()}
    build = None
    if faiss is not None:
        h = (to_numpy(sd.potentials) - (x.astype(np.float64) ** 2).sum(1)) / 2
        xa = np.ascontiguousarray(np.concatenate([x, h[:, None].astype(np.float32)], 1))
        za = np.ascontiguousarray(np.concatenate([z, np.ones((BATCH, 1), np.float32)], 1))
        t0 = time.perf_counter()
        index = faiss.IndexFlatIP(d + 1)
        index.add(xa)
        build = time.perf_counter() - t0
        tuned = FaissSettings(faiss, 20, 16384)

        def knn():
            return faiss.knn(za, xa, 1, metric=faiss.METRIC_INNER_PRODUCT)[1][:, 0]

        def flat():
            return index.search(za, 1)[1][:, 0]

        def knn_blas():
            with tuned:
                return knn()

        def flat_blas():
            with tuned:
                return flat()

        for name, fn in zip(SEARCH[2:], (knn, knn_blas, flat, flat_blas)):
            calls[name] = check[name] = fn
    for name, fn in check.items():
        if not np.array_equal(np.asarray(fn()), want):
            raise AssertionError(f"{name} chose other points than noisepair at N={n}")
    times = best_times(calls)
    base = times["numpy"]
    row = (
        n,
        *(f"{times[k] * 1e3:.1f}" if k in times else "not installed" for k in SEARCH),
        *(ratio(times.get(k), base, 2) for k in SEARCH[1:]),
        "–" if build is None else f"{build:.2f}",
    )
    print(row, flush=True)
    return row


SEARCH = ("numpy", "torch", "faiss.knn", "faiss.knn blas", "IndexFlatIP", "IndexFlatIP blas")


# -- memory ------------------------------------------------------------------------------------
def memory_child(n: int, d: int, what: str) -> dict:
    """Run in a fresh process: the data, then the coupling's work; the peak resident memory
    above the data (the kernel's high-water mark, reset after the data are made)."""
    import tracemalloc

    x = np.random.default_rng(0).standard_normal((n, d), dtype=np.float32)
    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
    base = _status_bytes("VmRSS")
    tracemalloc.start()
    t0 = time.perf_counter()
    if what == "assign":
        sd = SemiDiscrete(x, np.zeros(n))
        sd.assign(noise(BATCH, d))
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            SemiDiscrete.fit(x, tol=1e-2, max_draws=4 * 1024)
    seconds = time.perf_counter() - t0
    traced = tracemalloc.get_traced_memory()[1]
    peak = _status_bytes("VmHWM")
    return {"data": x.nbytes, "rss_above": peak - base, "traced": traced, "seconds": seconds}


def _status_bytes(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024  # kB
    raise RuntimeError(f"no {field} in /proc/self/status")


def memory_rows(cases) -> list:
    rows = []
    for n, d, what in cases:
        out = subprocess.run(
            [sys.executable, __file__, "--memory", str(n), str(d), what],
            capture_output=True,
            text=True,
            check=True,
        )
        m = json.loads(out.stdout.strip().splitlines()[-1])
        rows.append(
            (
                f"{n:.0e}".replace("+0", ""),
                d,
                what,
                f"{m['data'] / 2**30:.2f}",
                f"{m['rss_above'] / 2**30:.3f}",
                f"{m['traced'] / 2**30:.3f}",
                f"{(m['data'] + m['rss_above']) / 2**30:.2f}",
                f"{m['seconds']:.1f}",
            )
        )
        print(rows[-1], flush=True)
    return rows


# -- ott-jax -----------------------------------------------------------------------------------
def ott_rows(cases, iters) -> tuple[list, str]:
    try:
        import jax
        import optax
        from ott import __version__ as ott_version
        from ott.geometry import semidiscrete_pointcloud as sdpc
        from ott.problems.linear import semidiscrete_linear_problem as sdlp
        from ott.solvers.linear import semidiscrete
    except ImportError as e:
        return [], f"ott-jax not installed ({e}): not measured."
    jnp, jr = jax.numpy, jax.random
    rows = []
    for n, d, tol in cases:
        x = mixture(n, d, seed=2)
        t0 = time.perf_counter()
        ours = SemiDiscrete.fit(x, tol=tol)
        t_ours = time.perf_counter() - t0
        solver = semidiscrete.SemidiscreteSolver(
            num_iterations=iters,
            batch_size=256,
            optimizer=optax.adam(optax.cosine_decay_schedule(0.01, iters, alpha=0.01)),
            threshold=0.0,
            error_eval_every=iters,
            error_batch_size=4096,
        )
        geom = sdpc.SemidiscretePointCloud(jr.normal, jnp.asarray(x), epsilon=0.0)
        t0 = time.perf_counter()
        out = jax.jit(solver)(jr.key(0), sdlp.SemidiscreteLinearProblem(geom))
        g_ott = np.asarray(out.g, dtype=np.float64)
        t_ott = time.perf_counter() - t0
        theirs = SemiDiscrete(x, g_ott)
        g = to_numpy(ours.potentials)
        corr = np.corrcoef(g - g.mean(), g_ott - g_ott.mean())[0, 1]
        z = noise(10**5, d, seed=5)
        agree = float(np.mean(ours.assign(z) == theirs.assign(z)))
        rows.append(
            (
                n,
                d,
                f"{t_ours:.1f} ({ours.report.draws / n:.0f} epochs, tol {tol:g})",
                f"{t_ott:.1f} ({iters * 256 / n:.0f} epochs)",
                f"{ours.marginal_error(2**17, seed=3)[0]:.2e}",
                f"{theirs.marginal_error(2**17, seed=3)[0]:.2e}",
                f"{corr:.5f}",
                f"{agree:.4f}",
            )
        )
        print(rows[-1], flush=True)
    return rows, f"ott-jax {ott_version}, jax {jax.__version__} (CPU)"


# -- path cost ---------------------------------------------------------------------------------
def path_rows(n, dims, tol, batches) -> list:
    return [path_row(n, d, tol, batches) for d in dims]


def path_row(n, d, tol, batches) -> tuple:
    x = mixture(n, d, seed=3)
    sd = SemiDiscrete.fit(x, tol=tol)
    m = 2**14
    z = noise(m, d, seed=7)
    rng = np.random.default_rng([8, d])
    random = float(((z - x[rng.integers(0, n, m)]) ** 2).sum(1).mean())
    costs = {"SD": float(((z - x[sd.assign(z)]) ** 2).sum(1).mean())}
    for b in batches:
        total, count = 0.0, 0
        while count < m:
            xb = x[rng.choice(n, b, replace=False)]
            zb = noise(b, d, seed=1000 + count)
            c = ((xb[:, None, :] - zb[None]) ** 2).sum(-1)
            r, k = linear_sum_assignment(c)
            total += float(c[r, k].sum())
            count += b
        costs[f"exact B={b}"] = total / count
    zn = noise(n, d, seed=11)
    c = ((x[:, None, :].astype(np.float64) - zn[None]) ** 2).sum(-1)
    r, k = linear_sum_assignment(c)
    costs["exact B=N"] = float(c[r, k].mean())
    z256, x256 = noise(BATCH, d, seed=12), x[:BATCH]
    times = best_times(
        {
            "SD": lambda: sd.assign(z256),
            "exact": lambda: linear_sum_assignment(((x256[:, None, :] - z256[None]) ** 2).sum(-1)),
        }
    )
    row = (
        d,
        f"{random:.2f}",
        *(f"{v / random:.3f}" for v in costs.values()),
        f"{times['SD'] * 1e3:.1f}",
        f"{times['exact'] * 1e3:.1f}",
        f"{sd.report.chi2:.1e}",
    )
    print(row, flush=True)
    return row


# -- report ------------------------------------------------------------------------------------
def run(quick: bool) -> str:
    info = machine_info()
    started = time.perf_counter()
    if quick:
        fit_cases = [(300, 8, 1e-2), (300, 64, 1e-2)]
        search_sizes, mem_cases = (10**3, 10**4), [(10**4, 64, "assign")]
        ott_cases, ott_iters, path_n, batches = [(64, 8, 1e-2)], 1000, 512, (64, 256)
    else:
        fit_cases = [
            (10**3, 8, 1e-3),
            (10**3, 64, 1e-3),
            (10**3, 8, 1e-2),
            (10**3, 64, 1e-2),
            (10**4, 8, 1e-2),
            (10**4, 64, 1e-2),
            (10**5, 8, 1e-2),
            (10**5, 64, 1e-2),
        ]
        search_sizes = (10**4, 10**5, 10**6)
        mem_cases = [(10**6, 64, "assign"), (10**6, 64, "fit"), (10**7, 64, "assign")]
        ott_cases, ott_iters, path_n, batches = (
            [(100, 8, 1e-3), (300, 8, 1e-3)],
            10000,
            4096,
            (
                64,
                256,
                1024,
            ),
        )
    print("fit", flush=True)
    fits = fit_rows(fit_cases)
    print("search", flush=True)
    searches, search_notes = search_rows(search_sizes, 64)
    print("memory", flush=True)
    memory = memory_rows(mem_cases)
    print("ott", flush=True)
    otts, ott_line = ott_rows(ott_cases, ott_iters)
    print("path", flush=True)
    paths = path_rows(path_n, (8, 64), 1e-2, batches)
    command = "python benchmarks/semidiscrete.py" + (" --quick" if quick else "")
    lines = [
        "# Semi-discrete coupling: fit, search, memory, ott-jax, path cost",
        "",
        f"Generated by `{command}` on {time.strftime('%Y-%m-%d')} in "
        f"{time.perf_counter() - started:.0f} s. {machine_line(info)} GPU: not measured "
        "(no GPU on this machine).",
        "",
        "Data: the regime map's 10-mode Gaussian mixture in d dimensions (coordinate variance "
        "about 1), float32 numpy. Noise N(0, I).",
        "",
        "## Fit to the stopping rule",
        "",
        "`SemiDiscrete.fit(x, tol=tol)` with its defaults (batch 1024, at most N/4; lr 3). "
        "epochs = draws / N; draws x tol / N compares the draws with N / tol, the order that "
        "even exact averaging needs. The rule's estimate is on its fixed draws (standard error "
        "about tol / 4); fresh: `marginal_error(2**17)` on other draws.",
        "",
        *table(
            [
                "N",
                "d",
                "tol",
                "seconds",
                "steps",
                "epochs",
                "draws x tol / N",
                "chi2 (rule)",
                "chi2 (fresh)",
            ],
            fits,
        ),
        "",
        f"## Search: one batch of {BATCH} noises, d = 64 (ms, best of interleaved rounds)",
        "",
        "numpy / torch: `SemiDiscrete.assign` (blocks of 64 MiB of scores, GEMM then argmax; "
        "torch: the same code on CPU tensors). faiss: exact inner-product search of the "
        "noises augmented with a 1 against the data augmented with h = (g - |x|^2) / 2 (an "
        "(N, d + 1) float32 copy); `blas`: faiss's BLAS path forced "
        "(distance_compute_blas_threshold 20, database blocks 16384; process-wide settings, "
        "restored after each call). All methods returned the same indices. Ratios: time / "
        "numpy's.",
        "",
        *table(
            ["N", *SEARCH, *(f"{k} / numpy" for k in SEARCH[1:]), "IndexFlatIP build (s)"],
            searches,
        ),
        *(["", *search_notes] if search_notes else []),
        "",
        "## Memory",
        "",
        "A fresh process creates the data (float32, counted apart), then: `assign` builds the "
        f"coupling and assigns one batch of {BATCH}; `fit` runs `SemiDiscrete.fit` for 4 steps "
        "of 1024 draws (its start, the duplicate check, the scale estimates and the checks "
        "included). RSS above data: the peak resident set size (VmHWM, reset after the data "
        "were made) minus the resident size then; traced: tracemalloc's peak of the "
        "allocations made by the step.",
        "",
        *table(
            [
                "N",
                "d",
                "step",
                "data (GiB)",
                "RSS above data (GiB)",
                "traced (GiB)",
                "data + above (GiB)",
                "seconds",
            ],
            memory,
        ),
        "",
        "## Against ott-jax",
        "",
        f"{ott_line}. ott: `SemidiscreteSolver(num_iterations={ott_iters}, batch_size=256, "
        "optimizer=optax.adam(cosine_decay_schedule(0.01, iters, alpha=0.01)))` on "
        "`SemidiscretePointCloud(jax.random.normal, x, epsilon=0.0)`, jitted (compilation "
        "included in its seconds); ours: `SemiDiscrete.fit(x, tol)`. chi2: "
        "`marginal_error(2**17)` of each one's potentials (same draws); correlation of the "
        "potentials after removing their means; agreement: the share of 10^5 fresh noises "
        "sent to the same point.",
        "",
        *table(
            [
                "N",
                "d",
                "ours: seconds",
                "ott: seconds",
                "ours: chi2",
                "ott: chi2",
                "correlation",
                "agreement",
            ],
            otts,
        ),
        "",
        "## Path cost: matched / random mean squared distance",
        "",
        f"N = {path_n} data points, SD fitted with tol 1e-2. Each coupling's mean |z - x|^2 over "
        "that of random pairs (the same 2^14 noises with data drawn uniformly): SD pairs "
        "(2^14 fresh noises, each with the point it chose); exact: scipy's "
        "linear_sum_assignment inside random batches (data drawn without replacement, fresh "
        f"noise), 2^14 pairs; exact B=N: the {path_n} points against {path_n} fresh noises "
        f"in one assignment. Seconds: pairing one batch of {BATCH} (SD: the search over all N; "
        "exact: cost matrix + scipy on the batch).",
        "",
        *table(
            [
                "d",
                "random: mean squared distance",
                "SD / random",
                *(f"exact B={b} / random" for b in batches),
                f"exact B=N={path_n} / random",
                "SD ms per batch",
                "exact ms per batch",
                "SD chi2 (rule)",
            ],
            paths,
        ),
        "",
    ]
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, a few minutes")
    parser.add_argument("--memory", nargs=3, help=argparse.SUPPRESS)  # the memory child
    args = parser.parse_args(argv)
    if args.memory:
        n, d, what = args.memory
        print(json.dumps(memory_child(int(n), int(d), what)))
        return 0
    text = run(args.quick)
    path = write_results("semidiscrete", text, quick=args.quick)
    print(text)
    print(f"wrote {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
