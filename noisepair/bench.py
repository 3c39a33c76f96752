"""Matching benchmark: noisepair's solvers beside the reference path, POT and torchcfm.

``run(quick=False, out=None)`` times, in one process, for every batch size B and dimension D:

- ``reference``: ``torch.cdist`` (squared) + ``scipy.optimize.linear_sum_assignment``, what the
  Immiscible Diffusion code does (squared so that every method solves the same problem);
- ``pot``: POT's exact ``ot.emd`` on the same float32 cost (numItermax=1e7);
- ``torchcfm``: ``OTPlanSampler("exact")`` (cdist + emd with POT's default numItermax, then pairs
  sampled *with replacement* from the plan: not a permutation);
- ``hungarian``, ``auto`` and ``auction``: noisepair's ``pair`` (cost + assignment, end to end);
- solve-only times of lapjv and of the auction on the same cost matrix (item 2 compares those;
  the auction's candidate selection and certification count as its solve).

Times are the fastest of 5 interleaved rounds (of 2 calls for a call above 2 s; the machine only
ever adds time, so the minimum is the stable estimate), so compare within a row; a
method whose time is predicted above ``skip_s`` from its growth at the previous B is skipped and
marked so. Gaps are relative to the best exact total cost, evaluated on one float32 cost matrix
with float64 sums. ``python -m noisepair.bench [--quick]`` or ``benchmarks/matching.py``.
"""
from __future__ import annotations

import os
import platform
import subprocess
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Callable

import numpy as np

FULL_B = (64, 128, 256, 512, 1024, 2048, 4096)
FULL_D = (2, 64, 3072, 16384)
QUICK_B = (256, 1024)
QUICK_D = (2, 64, 3072)
METHODS = ("reference", "pot", "torchcfm", "hungarian", "auto", "auction")
EXACT = ("reference", "pot", "hungarian", "auto")
ROUNDS = 5  # interleaved timing rounds per cell: load drift hits every method alike
GROWTH = 8.0  # assumed time factor per doubling of B when predicting a skip (B^3)


def make_data(b: int, d: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The baselines' synthetic data: 8-gaussians at D=2, 8 noisy "prototype images" in [-1, 1]
    above; noise N(0, I). float32."""
    rng = np.random.default_rng([seed, b, d])
    if d == 2:
        angle = rng.integers(0, 8, b) * (np.pi / 4)
        x = 2.0 * np.stack([np.cos(angle), np.sin(angle)], 1) + 0.2 * rng.standard_normal((b, 2))
        x = x.astype(np.float32)
    else:
        protos = rng.uniform(-1, 1, (8, d)).astype(np.float32)
        x = protos[rng.integers(0, 8, b)]
        x += 0.25 * rng.standard_normal((b, d), dtype=np.float32)
        np.clip(x, -1, 1, out=x)
    z = rng.standard_normal((b, d), dtype=np.float32)
    return x, z


def machine_info() -> dict:
    import torch

    info = {
        "python": platform.python_version(), "numpy": np.__version__, "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(), "nproc": os.cpu_count(), "cpu": _cpu_name(),
        "cuda": torch.cuda.is_available(),
    }
    from importlib.metadata import PackageNotFoundError, version

    for mod in ("scipy", "pot", "lapjv", "numba", "torchcfm"):
        try:
            info[mod] = version(mod)
        except PackageNotFoundError:  # pragma: no cover - optional
            info[mod] = None
    try:
        info["loadavg_1min"] = round(os.getloadavg()[0], 2)
    except OSError:  # pragma: no cover
        pass
    return info


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


# -- the methods: each returns (cols, extra) -------------------------------------------------

def _reference(xt, zt):
    import torch
    from scipy.optimize import linear_sum_assignment

    c = torch.cdist(xt, zt).pow_(2)
    return linear_sum_assignment(c.numpy())[1], {}


def _pot(x, z):
    import ot

    from noisepair.cost import cost_matrix

    c = cost_matrix(x, z).astype(np.float64)
    w = np.full(len(x), 1.0 / len(x))
    plan = ot.emd(w, w, c, numItermax=10_000_000)
    return plan.argmax(1), {}


def _torchcfm(xt, zt):
    from torchcfm.optimal_transport import OTPlanSampler

    sampler = OTPlanSampler(method="exact")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pi = sampler.get_map(xt, zt)
        i, j = sampler.sample_map(pi, xt.shape[0], replace=True)
    _ = xt[i], zt[j]
    return (i, j), {}


def _ours(name: str):
    from noisepair.matchers import get_matcher
    from noisepair.pairing import pair

    matcher = get_matcher(name)

    def fn(x, z):
        cols, info = pair(x, z, matcher)
        return np.asarray(cols), info
    return fn


def run(quick: bool = False, out: str | Path | None = None, *, sizes=None, dims=None,
        skip_s: float = 20.0, memory: bool | None = None, echo: bool = True) -> str:
    """Run the grid and return the report (markdown); write it to ``out`` when given."""
    import torch

    from noisepair.cost import cost_matrix
    from noisepair.matchers.auction import Auction
    from noisepair.matchers.exact import Hungarian

    sizes = tuple(sizes or (QUICK_B if quick else FULL_B))
    dims = tuple(dims or (QUICK_D if quick else FULL_D))
    memory = (not quick) if memory is None else memory
    started = time.perf_counter()
    info = machine_info()
    rows: list[dict] = []
    xw, zw = make_data(32, 8)  # warm up: imports, thread pools, first-call costs
    for fn in (lambda: _reference(torch.from_numpy(xw), torch.from_numpy(zw)), lambda: _pot(xw, zw),
               lambda: _torchcfm(torch.from_numpy(xw), torch.from_numpy(zw)),
               lambda: _ours("auto")(xw, zw), lambda: _ours("auction")(xw, zw)):
        fn()
    for d in dims:
        last: dict[str, tuple[int, float]] = {}
        for b in sizes:
            x, z = make_data(b, d)
            xt, zt = torch.from_numpy(x), torch.from_numpy(z)
            row: dict[str, Any] = {"D": d, "B": b, "t": {}, "gap": {}, "extra": {}}
            c = cost_matrix(x, z)
            c64 = c.astype(np.float64)
            ar = np.arange(b)
            fns = {
                "reference": lambda: _reference(xt, zt),
                "pot": lambda: _pot(x, z),
                "torchcfm": lambda: _torchcfm(xt, zt),
                "hungarian": lambda: _ours("hungarian")(x, z),
                "auto": lambda: _ours("auto")(x, z),
                "auction": lambda: _ours("auction")(x, z),
            }
            ct = torch.from_numpy(c)
            fns["solve_lapjv"] = lambda: (Hungarian("lapjv").solve(c), {})
            fns["solve_auction"] = lambda: (Auction().solve(ct), {})
            fns["cost"] = lambda: (cost_matrix(x, z), {})
            first: dict[str, float] = {}
            for name in (*METHODS, "solve_lapjv", "solve_auction", "cost"):
                key = {"solve_lapjv": "hungarian", "solve_auction": "auction"}.get(name, name)
                prev = last.get(key)
                limit = skip_s * (3 if key == "auction" and d > 2 else 1)  # item 2 needs B=4096
                if prev is not None and prev[1] * GROWTH ** np.log2(b / prev[0]) > limit:
                    row["t"][name] = None
                    continue
                t0 = time.perf_counter()
                cols, extra = fns[name]()
                first[name] = time.perf_counter() - t0
                if name in METHODS:
                    row["extra"][name] = extra
                    if name == "torchcfm":
                        i, j = (np.asarray(v) for v in cols)
                        row["gap"][name] = float(c64[i, j].sum())
                        row["extra"][name] = {"unique": len(np.unique(i)) / b}
                    else:
                        cols = np.asarray(cols, dtype=np.int64)
                        assert np.array_equal(np.sort(cols), ar), f"{name} returned no permutation"
                        row["gap"][name] = float(c64[ar, cols].sum())
            # timing: interleaved rounds over all methods, so that load drift hits them alike
            # (a call over 2 s: the first call and one more, in the first round)
            samples: dict[str, list[float]] = {n: [t] if t >= 2.0 else [] for n, t in first.items()}
            for r in range(ROUNDS):
                for name in samples:
                    if first[name] >= 2.0 and r > 0:
                        continue
                    reps = int(min(30, max(1, 0.1 / max(first[name], 1e-6))))
                    t0 = time.perf_counter()
                    for _ in range(reps):
                        fns[name]()
                    samples[name].append((time.perf_counter() - t0) / reps)
            for name in first:
                row["t"][name] = min(samples[name])
                if name in METHODS:
                    last[name] = (b, row["t"][name])
            row["solve_lapjv"], row["solve_auction"] = row["t"].get("solve_lapjv"), row["t"].get("solve_auction")
            row["cost_s"] = row["t"].get("cost")
            opt = min(row["gap"][m] for m in EXACT if row["t"].get(m) is not None)
            row["opt"], row["random"] = opt, float(np.trace(c64))
            for m in list(row["gap"]):
                row["gap"][m] = (row["gap"][m] - opt) / opt
            rows.append(row)
            if echo:
                print(_row_line(row), flush=True)
    mem = _memory_checks() if memory else None
    info["loadavg_1min_end"] = round(os.getloadavg()[0], 2)
    report = _report(rows, info, mem, quick, time.perf_counter() - started, skip_s)
    if out is not None:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(report)
    return report


def _fmt_t(s: float | None) -> str:
    if s is None:
        return "skip"
    return f"{s:.2f}s" if s >= 1 else f"{s * 1e3:.3g}"


def _row_line(row: dict) -> str:
    parts = [f"D={row['D']:>5} B={row['B']:>4}"]
    for m in METHODS:
        parts.append(f"{m} {_fmt_t(row['t'].get(m))}")
    return "  ".join(parts)


def _ratio(a, b) -> str:
    return "–" if a is None or b is None or b == 0 else f"{a / b:.3f}"


def _report(rows, info, mem, quick, elapsed, skip_s) -> str:
    out = ["# Matching benchmark (cost + assignment, end to end)", ""]
    out.append(f"Generated by `noisepair.bench.run(quick={quick})` in {elapsed:.0f} s. Machine: `{info}`.")
    out.append("")
    out.append(f"Times in ms (s where marked): after one first call, {ROUNDS} interleaved rounds over all methods (each round the mean of up to 30 calls, about 0.1 s), the fastest round; calls over 2 s: the faster of two calls; `skip`: "
               f"predicted over {skip_s:.0f} s from the growth at the previous B (x{GROWTH:.0f} per "
               "doubling; x3 that limit for the auction at D > 2). GPU: not measured (no GPU on this machine); the torch auction is the GPU path.")
    out.append("")
    out.append("reference = torch.cdist squared + scipy linear_sum_assignment; pot = ot.emd "
               "(numItermax 1e7) on noisepair's cost; torchcfm = OTPlanSampler('exact') (samples pairs "
               "with replacement, not a permutation); hungarian = lapjv; auto = method='auto' "
               "(exact); auction = method='auction', tol 1e-3, on this CPU its compiled candidate backend "
               "(numba; `lapjv` marks a row where its bound missed tol and it fell back to lapjv). "
               "Gap = total cost / best exact - 1 (auction: measured gap, and its certified bound in "
               "brackets).")
    out.append("")
    for d in sorted({r["D"] for r in rows}):
        out.append(f"## D = {d}")
        out.append("")
        out.append("| B | reference | pot | torchcfm | hungarian | auto (solver) | auction [gap, bound] "
                   "| hungarian/ref | auto/ref | auto/best exact | cost only | lapjv solve | auction solve "
                   "| lapjv/auction solve |")
        out.append("|" + "---|" * 14)
        for r in (r for r in rows if r["D"] == d):
            t = r["t"]
            exact_times = [t[m] for m in ("pot", "hungarian") if t.get(m) is not None]
            ref_auto = [t[m] for m in ("reference",) if t.get(m) is not None]
            best = min(exact_times + ref_auto) if exact_times or ref_auto else None
            ax = r["extra"].get("auction", {})
            auction = (f"{_fmt_t(t['auction'])} [{r['gap']['auction']:.1e}, {ax.get('gap_bound', float('nan')):.1e}]"
                       + (f" {ax['fallback']}" if ax.get("fallback") else "")
                       if t.get("auction") is not None else "skip")
            cfm = (f"{_fmt_t(t['torchcfm'])} ({r['extra']['torchcfm']['unique']:.2f} uniq, "
                   f"{r['gap']['torchcfm']:+.1e})" if t.get("torchcfm") is not None else "skip")
            solver = r["extra"].get("auto", {}).get("solver", "?")
            out.append(
                f"| {r['B']} | {_fmt_t(t.get('reference'))} | {_fmt_t(t.get('pot'))} | {cfm} | "
                f"{_fmt_t(t.get('hungarian'))} | {_fmt_t(t.get('auto'))} ({solver}) | {auction} | "
                f"{_ratio(t.get('hungarian'), t.get('reference'))} | {_ratio(t.get('auto'), t.get('reference'))} | "
                f"{_ratio(t.get('auto'), best)} | {_fmt_t(r['cost_s'])} | {_fmt_t(r['solve_lapjv'])} | "
                f"{_fmt_t(r['solve_auction'])} | {_ratio(r['solve_lapjv'], r['solve_auction'])} |")
        out.append("")
    worst = max((abs(r["gap"][m]) for r in rows for m in EXACT if m in r["gap"]), default=0.0)
    out.append(f"Exact methods (reference, pot, hungarian, auto) agree: worst relative gap {worst:.1e}.")
    gaps = [r["gap"]["auction"] for r in rows if "auction" in r["gap"]]
    bounds = [r["extra"]["auction"].get("gap_bound", 0) for r in rows if "auction" in r["extra"]]
    if gaps:
        out.append(f"Auction: worst measured gap {max(gaps):.1e}, worst certified bound {max(bounds):.1e} "
                   "(target 1e-3).")
    out.append("")
    if mem:
        out.append("## Memory (B=4096, D=16384, fresh subprocess per path)")
        out.append("")
        out.append("Peak RSS increase during `pair` beyond the inputs, against the size of the cost "
                   "matrix (B*B float32 = 64 MiB) and of one batch (x or z: 256 MiB).")
        out.append("")
        out.append("| path | peak increase MiB | cost matrix MiB | seconds |")
        out.append("|---|---|---|---|")
        for m in mem:
            out.append(f"| {m['path']} | {m['peak_mib']:.0f} | {m['cost_mib']:.0f} | {m['seconds']:.2f} |")
        out.append("")
    return "\n".join(out) + "\n"


_MEMORY_SNIPPET = r"""
import sys, time, json
import numpy as np
import noisepair.bench as nb
b, d, path = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
x, z = nb.make_data(b, d)
if path.startswith("torch"):
    import torch
    x, z = torch.from_numpy(x), torch.from_numpy(z)
from noisepair.matchers import get_matcher
from noisepair.pairing import pair
m = get_matcher(path.split(":")[1])
def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key):
            return int(line.split()[1]) / 1024
pair(x[:64], z[:64], m)  # libraries loaded, thread pools started
with open("/proc/self/clear_refs", "w") as f:  # reset the peak (VmHWM) to the current RSS
    f.write("5")
base = status("VmRSS")
t = time.perf_counter(); pair(x, z, m); t = time.perf_counter() - t
print(json.dumps({"path": path, "peak_mib": status("VmHWM") - base, "cost_mib": b * b * 4 / 2**20, "seconds": t}))
"""


def _memory_checks(b: int = 4096, d: int = 16384) -> list[dict]:
    import json

    results = []
    for path in ("numpy:hungarian", "torch:hungarian", "torch:auto"):
        proc = subprocess.run([sys.executable, "-c", _MEMORY_SNIPPET, str(b), str(d), path],
                              capture_output=True, text=True, timeout=600)
        if proc.returncode == 0:
            results.append(json.loads(proc.stdout.strip().splitlines()[-1]))
        else:  # pragma: no cover - reported, not hidden
            results.append({"path": path + " FAILED: " + proc.stderr[-200:], "peak_mib": float("nan"),
                            "cost_mib": b * b * 4 / 2**20, "seconds": float("nan")})
    return results


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small grid, under a minute")
    parser.add_argument("--out", default=None, help="write the markdown report here")
    args = parser.parse_args(argv)
    print(run(quick=args.quick, out=args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
