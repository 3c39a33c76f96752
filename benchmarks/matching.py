"""Matching benchmark: noisepair's solvers beside the reference path, POT and torchcfm.

    python benchmarks/matching.py [--quick] [--sizes B ...] [--dims D ...] [--out FILE]
    python benchmarks/matching.py --device-auction [--sizes B ...] [--dims D ...]
    noisepair bench [same options]       # the same, from a source checkout

For every batch size B and dimension D, in one process:

- ``reference``: ``torch.cdist`` (squared) + ``scipy.optimize.linear_sum_assignment``, what the
  Immiscible Diffusion code does (squared so that every method solves the same problem);
- ``pot``: POT's exact ``ot.emd`` on the same float32 cost (numItermax=1e7);
- ``torchcfm``: ``OTPlanSampler("exact")`` (cdist + emd with POT's default numItermax, then pairs
  sampled *with replacement* from the plan: not a permutation);
- ``hungarian``, ``auto`` and ``auction``: noisepair's pairing (cost + assignment, end to end);
- solve-only times of lapjv and of the auction on the same cost matrix (the auction's candidate
  selection and certification count as its solve), and the cost matrix alone;
- (full grid, or ``--device-auction`` alone) the device auction, the GPU path, run eagerly on
  this CPU beside the dense torch auction it replaced, lapjv and the compiled auction, with the
  bidding rounds and host reads that decide its speed on a GPU.

Times are harness.best_times (the fastest of interleaved rounds), so compare within a row; a
method whose time is predicted above ``skip_s`` from its growth at the previous B is skipped and
marked so. Gaps are relative to the best exact total cost, evaluated on one float32 cost matrix
with float64 sums. The full grid also measures peak memory at B=4096, D=16384. The report goes
to benchmarks/results/matching.md (matching_quick.md for --quick) unless --out says otherwise.
"""

from __future__ import annotations

import argparse
import datetime
import json
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
from harness import ROUNDS, best_times, machine_info, machine_line, make_data, ratio, table

FULL_B = (64, 128, 256, 512, 1024, 2048, 4096)
FULL_D = (2, 64, 3072, 16384)
QUICK_B = (256, 1024)
QUICK_D = (2, 64, 3072)
METHODS = ("reference", "pot", "torchcfm", "hungarian", "auto", "auction")
EXACT = ("reference", "pot", "hungarian", "auto")
SOLVE_ONLY = {"solve_lapjv": "hungarian", "solve_auction": "auction", "cost": "cost"}
GROWTH = 8.0  # assumed time factor per doubling of B when predicting a skip (B^3)
AUCTION_SKIP_FACTOR = 3  # the auction's skip limit at D > 2: its B=4096 row is the point


# -- the methods: each returns (cols, extra) ---------------------------------------------------
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
    """noisepair's pairing by method name: (cols, its info)."""
    from noisepair.matchers import get_matcher
    from noisepair.pairing import pair

    matcher = get_matcher(name)

    def fn(x, z):
        cols, info = pair(x, z, matcher)
        return np.asarray(cols), info

    return fn


def _calls(x: np.ndarray, z: np.ndarray) -> dict:
    """Every timed call of one cell, by name: METHODS, then the solve-only ones."""
    import torch

    from noisepair.cost import cost_matrix
    from noisepair.matchers.auction import Auction
    from noisepair.matchers.exact import Hungarian

    xt, zt = torch.from_numpy(x), torch.from_numpy(z)
    c = cost_matrix(x, z)
    ct = torch.from_numpy(c)
    return {
        "reference": lambda: _reference(xt, zt),
        "pot": lambda: _pot(x, z),
        "torchcfm": lambda: _torchcfm(xt, zt),
        **{
            name: (lambda name=name: _ours(name)(x, z)) for name in ("hungarian", "auto", "auction")
        },
        "solve_lapjv": lambda: Hungarian("lapjv").solve(c),
        "solve_auction": lambda: Auction().solve(ct),
        "cost": lambda: (cost_matrix(x, z), {}),
    }


def _warm_up() -> None:
    """Imports, thread pools and first-call costs (numba's compile) outside the timings."""
    for fn in _calls(*make_data(32, 8)).values():
        fn()


# -- one cell of the grid ----------------------------------------------------------------------
def _predicted_over(name: str, b: int, d: int, last: dict, skip_s: float) -> bool:
    """Would ``name`` take longer than its limit at B=b, grown from its time at the last B?"""
    key = SOLVE_ONLY.get(name, name)
    if key not in last:
        return False
    prev_b, prev_t = last[key]
    limit = skip_s * (AUCTION_SKIP_FACTOR if key == "auction" and d > 2 else 1)
    return prev_t * GROWTH ** np.log2(b / prev_b) > limit


def _total_cost(name: str, cols, c64: np.ndarray) -> float:
    """The total cost of a method's pairs; every method but torchcfm must return a permutation."""
    if name == "torchcfm":
        i, j = (np.asarray(v) for v in cols)
        return float(c64[i, j].sum())
    cols = np.asarray(cols, dtype=np.int64)
    rows = np.arange(len(c64))
    assert np.array_equal(np.sort(cols), rows), f"{name} returned no permutation"
    return float(c64[rows, cols].sum())


def measure_cell(b: int, d: int, last: dict, skip_s: float) -> dict:
    """Times, relative gaps and solver info of every call at (B, D); ``last`` holds each method's
    (B, time) at the previous B and is updated."""
    from noisepair.cost import cost_matrix

    x, z = make_data(b, d)
    c64 = cost_matrix(x, z).astype(np.float64)
    calls = _calls(x, z)
    row: dict = {"D": d, "B": b, "t": {}, "gap": {}, "extra": {}}
    first: dict[str, float] = {}
    for name in list(calls):
        if _predicted_over(name, b, d, last, skip_s):
            row["t"][name] = None
            del calls[name]
            continue
        t0 = time.perf_counter()
        cols, extra = calls[name]()
        first[name] = time.perf_counter() - t0
        if name in METHODS:
            row["gap"][name] = _total_cost(name, cols, c64)
            row["extra"][name] = extra
            if name == "torchcfm":
                row["extra"][name] = {"unique": len(np.unique(np.asarray(cols[0]))) / b}
    row["t"].update(best_times(calls, first))
    last.update({m: (b, row["t"][m]) for m in METHODS if row["t"].get(m) is not None})
    opt = min(row["gap"][m] for m in EXACT if row["t"].get(m) is not None)
    row["opt"], row["random"] = opt, float(np.trace(c64))
    row["gap"] = {m: (total - opt) / opt for m, total in row["gap"].items()}
    return row


def run(
    quick: bool = False,
    out: str | Path | None = None,
    *,
    sizes=None,
    dims=None,
    skip_s: float = 20.0,
    memory: bool | None = None,
    echo: bool = True,
) -> str:
    """Run the grid and return the report (markdown); write it to ``out`` when given.

    ``memory`` (default: on for the full default grid only) adds the peak-memory subprocesses;
    the full default grid also adds the device auction's section (:func:`device_auction_section`).
    """
    full = not quick and sizes is None and dims is None
    command = _command(quick, sizes, dims)
    sizes = tuple(sizes or (QUICK_B if quick else FULL_B))
    dims = tuple(dims or (QUICK_D if quick else FULL_D))
    started = time.perf_counter()
    info = machine_info()
    _warm_up()
    rows = []
    for d in dims:
        last: dict[str, tuple[int, float]] = {}
        for b in sizes:
            rows.append(measure_cell(b, d, last, skip_s))
            if echo:
                print(_row_line(rows[-1]), flush=True)
    device = device_auction_section(echo=echo) if full else []
    mem = memory_checks() if (full if memory is None else memory) else None
    report = _report(rows, info, mem, command, started, skip_s, device)
    if out is not None:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(report)
    return report


# -- the report --------------------------------------------------------------------------------
def _fmt_t(s: float | None) -> str:
    if s is None:
        return "skip"
    return f"{s:.2f}s" if s >= 1 else f"{s * 1e3:.3g}"


def _row_line(row: dict) -> str:
    parts = [f"D={row['D']:>5} B={row['B']:>4}"]
    parts += [f"{m} {_fmt_t(row['t'].get(m))}" for m in METHODS]
    return "  ".join(parts)


def _command(quick: bool, sizes, dims) -> str:
    args = " --quick" if quick else ""
    args += f" --sizes {' '.join(map(str, sizes))}" if sizes else ""
    args += f" --dims {' '.join(map(str, dims))}" if dims else ""
    return f"python benchmarks/matching.py{args}"


HEADER = (
    "B",
    "reference",
    "pot",
    "torchcfm",
    "hungarian",
    "auto (solver)",
    "auction [gap, bound]",
    "hungarian/ref",
    "auto/ref",
    "auto/best exact",
    "cost only",
    "lapjv solve",
    "auction solve",
    "lapjv/auction solve",
)


def _table_row(r: dict) -> list[str]:
    t = r["t"]
    exact = [t[m] for m in ("reference", "pot", "hungarian") if t.get(m) is not None]
    best = min(exact) if exact else None
    ax = r["extra"].get("auction", {})
    auction = "skip"
    if t.get("auction") is not None:
        auction = f"{_fmt_t(t['auction'])} [{r['gap']['auction']:.1e}, "
        auction += f"{ax.get('gap_bound', float('nan')):.1e}]"
        auction += f" {ax['fallback']}" if ax.get("fallback") else ""
    cfm = "skip"
    if t.get("torchcfm") is not None:
        unique, gap = r["extra"]["torchcfm"]["unique"], r["gap"]["torchcfm"]
        cfm = f"{_fmt_t(t['torchcfm'])} ({unique:.2f} uniq, {gap:+.1e})"
    solver = r["extra"].get("auto", {}).get("solver", "?")
    return [
        str(r["B"]),
        _fmt_t(t.get("reference")),
        _fmt_t(t.get("pot")),
        cfm,
        _fmt_t(t.get("hungarian")),
        f"{_fmt_t(t.get('auto'))} ({solver})",
        auction,
        ratio(t.get("hungarian"), t.get("reference")),
        ratio(t.get("auto"), t.get("reference")),
        ratio(t.get("auto"), best),
        _fmt_t(t.get("cost")),
        _fmt_t(t.get("solve_lapjv")),
        _fmt_t(t.get("solve_auction")),
        ratio(t.get("solve_lapjv"), t.get("solve_auction")),
    ]


def _report(rows, info, mem, command, started, skip_s, device=()) -> str:
    elapsed = time.perf_counter() - started
    out = [
        "# Matching benchmark (cost + assignment, end to end)",
        "",
        f"Generated by `{command}` in {elapsed:.0f} s. {machine_line(info)}",
        "",
        f"Times in ms (s where marked): after one first call, {ROUNDS} interleaved rounds over "
        "all methods (each round the mean of up to 30 calls, about 0.1 s), the fastest round; "
        f"calls over 2 s: the faster of two calls; `skip`: predicted over {skip_s:.0f} s from "
        f"the growth at the previous B (x{GROWTH:.0f} per doubling; x{AUCTION_SKIP_FACTOR} that "
        "limit for the auction at D > 2). GPU: "
        + (
            f"{info['gpu']} present, but this grid times the CPU paths."
            if info.get("gpu")
            else "not measured (no GPU on this machine); the torch auction is the GPU path."
        ),
        "",
        "reference = torch.cdist squared + scipy linear_sum_assignment; pot = ot.emd "
        "(numItermax 1e7) on noisepair's cost; torchcfm = OTPlanSampler('exact') (samples pairs "
        "with replacement, not a permutation); hungarian = lapjv; auto = method='auto' "
        "(exact); auction = method='auction', tol 1e-3, on this CPU its compiled candidate "
        "backend (numba; `lapjv` marks a row where its bound missed tol and it fell back to "
        "lapjv). Gap = total cost / best exact - 1 (auction: measured gap, and its certified "
        "bound in brackets).",
        "",
    ]
    for d in sorted({r["D"] for r in rows}):
        out += [f"## D = {d}", ""]
        out += table(HEADER, [_table_row(r) for r in rows if r["D"] == d])
        out.append("")
    out += _summary(rows)
    out += device
    if mem:
        out += _memory_section(mem)
    return "\n".join(out) + "\n"


def _summary(rows: list[dict]) -> list[str]:
    worst = max((abs(r["gap"][m]) for r in rows for m in EXACT if m in r["gap"]), default=0.0)
    out = [
        f"Exact methods (reference, pot, hungarian, auto) agree: worst relative gap {worst:.1e}."
    ]
    gaps = [r["gap"]["auction"] for r in rows if "auction" in r["gap"]]
    bounds = [r["extra"]["auction"].get("gap_bound", 0) for r in rows if "auction" in r["extra"]]
    if gaps:
        out.append(
            f"Auction: worst measured gap {max(gaps):.1e}, worst certified bound "
            f"{max(bounds):.1e} (target 1e-3)."
        )
    return [*out, ""]


# -- the device auction on this CPU, beside the dense auction it replaced and lapjv --------------
DEVICE_B = (1024, 2048, 4096)
DEVICE_D = (64, 3072, 16384)
DEVICE_TITLE = "## The device auction on this CPU"


def _dense_auction(c, tol: float = 1e-3, theta: float = 6.0, eps0: float = 4.0):
    """The dense torch auction that ``backend="torch"`` ran before the device auction replaced it
    (noisepair.matchers.auction.dense, kept here as this section's baseline): Jacobi rounds on
    the free rows, whose count is read back to the host every round. Returns (cols, info)."""
    import torch

    from noisepair.matchers.auction.common import auction_info

    n = c.shape[0]
    ar = torch.arange(n)
    p = -c.min(0).values
    lower = float(c.min(1).values.double().sum())
    sample = c[torch.linspace(0, n - 1, min(n, 256)).long()] + p
    spread = float((sample.max(1).values - sample.min(1).values).mean())
    floor = 1e-6 * max(float(c.abs().max()), float(p.abs().max()), 1e-30)
    eps_final = max(tol * abs(lower) / n, floor)
    eps = max(spread / eps0, eps_final)
    owner = torch.full((n,), -1, dtype=torch.long)
    r2c = torch.full((n,), -1, dtype=torch.long)
    rounds = phases = 0
    trace = float(c.diagonal().double().sum())
    while True:
        phases += 1
        while True:
            free = (r2c < 0).nonzero().squeeze(1)
            if free.numel() == 0:
                break
            rounds += 1
            values = c + p if free.numel() == n else torch.index_select(c, 0, free).add_(p)
            top, arg = values.topk(2, dim=1, largest=False)
            j1 = arg[:, 0]
            bid = p[j1] + (top[:, 1] - top[:, 0]) + eps
            best = torch.full((n,), -float("inf")).scatter_reduce_(0, j1, bid, "amax")
            cand = torch.where(bid >= best[j1], free, -1)
            win = torch.full((n,), -1, dtype=torch.long).scatter_reduce_(0, j1, cand, "amax")
            won = (win >= 0).nonzero().squeeze(1)
            old = owner[won]
            r2c[old[old >= 0]] = -1
            owner[won] = win[won]
            r2c[win[won]] = won
            p[won] = best[won]
        reduced = c + p
        rmin = reduced.min(1).values
        primal = float(c[ar, r2c].double().sum())
        dual = float(rmin.double().sum() - p.double().sum())
        if primal - dual <= tol * abs(primal) or eps <= eps_final:
            break
        eps = max(eps / theta, eps_final)
        drop = (reduced[ar, r2c] - rmin) > eps
        owner[r2c[drop]] = -1
        r2c[drop] = -1
    return r2c, auction_info(max(primal - dual, 0.0), primal, dual, trace, rounds, phases, eps)


def device_auction_section(sizes=DEVICE_B, dims=DEVICE_D, echo: bool = True) -> list[str]:
    """Solve-only times on one cost matrix per (B, D): lapjv, the compiled candidate auction (the
    CPU default), the dense torch auction (the old GPU path) and the device auction (the GPU
    path, here eager on CPU tensors), with their gaps, bounds, rounds and host reads."""
    import torch

    from noisepair.cost import cost_matrix
    from noisepair.matchers.auction import Auction
    from noisepair.matchers.exact import Hungarian

    rows = []
    started = time.perf_counter()
    info = machine_info()
    for d in dims:
        for b in sizes:
            x, z = make_data(b, d)
            c = cost_matrix(x, z)
            ct = torch.from_numpy(c)
            calls = {
                "lapjv": lambda c=c: Hungarian("lapjv").solve(c),
                "candidates": lambda c=c: Auction(backend="candidates").solve(c),
                "dense": lambda ct=ct: _dense_auction(ct),
                "device": lambda ct=ct: Auction(backend="device").solve(ct),
            }
            first, out = {}, {}
            for name, fn in calls.items():
                t0 = time.perf_counter()
                out[name] = fn()
                first[name] = time.perf_counter() - t0
            t = best_times(calls, first)
            opt = _total_cost("lapjv", out["lapjv"][0], c.astype(np.float64))
            gap = {m: _total_cost(m, out[m][0], c.astype(np.float64)) / opt - 1 for m in calls}
            rows.append({"B": b, "D": d, "t": t, "gap": gap, "info": {m: out[m][1] for m in calls}})
            if echo:
                print(
                    f"device auction D={d} B={b} "
                    + "  ".join(f"{m} {_fmt_t(t[m])}" for m in calls),
                    flush=True,
                )
    header = (
        "D",
        "B",
        "lapjv",
        "candidates [gap, bound]",
        "dense [gap, bound] (rounds = host reads)",
        "device [gap, bound] (rounds / host checks, rows finished)",
        "dense / device",
        "lapjv / device",
        "candidates / device",
    )

    def cell(r, m):
        info, text = r["info"][m], _fmt_t(r["t"][m])
        if m != "lapjv":
            text += f" [{r['gap'][m]:.1e}, {info['gap_bound']:.1e}]"
        if m == "dense":
            text += f" ({info['auction_rounds']})"
        if m == "device":
            text += f" ({info['auction_rounds']} / {info['blocks']}, {info['finished_rows']})"
        return text

    body = [
        [
            r["D"],
            r["B"],
            *(cell(r, m) for m in ("lapjv", "candidates", "dense", "device")),
            *(ratio(r["t"][m], r["t"]["device"]) for m in ("dense", "lapjv", "candidates")),
        ]
        for r in rows
    ]
    return [
        DEVICE_TITLE,
        "",
        f"{datetime.date.today()}, `python benchmarks/matching.py --device-auction --sizes "
        f"{' '.join(map(str, sizes))} --dims {' '.join(map(str, dims))}`, "
        f"{time.perf_counter() - started:.0f} s. {machine_line(info)}",
        "",
        "Solve only, on one float32 cost matrix per row (the data above), in one run; times in "
        "ms (s where marked), harness "
        "best_times. lapjv = exact; candidates = `method='auction'` on this CPU (the compiled "
        "candidate auction); dense = the dense torch auction that `backend='torch'` ran before "
        "(its copy in this file), which reads the free rows back to the host every round; "
        "device = `backend='device'` (warm start 32 Sinkhorn iterations, blocks of 8 rounds, "
        "one host check per block, the last free rows finished exactly): eager on this CPU, "
        "the same code that CUDA graphs replay on a GPU. Gap = total cost / lapjv's - 1, "
        "[gap, certified bound]. Rounds and host reads do not depend on the device: on a GPU "
        "each host read is a synchronisation. GPU times of the device auction: not measured.",
        "",
        *table(header, body),
        "",
    ]


def splice_section(path: Path, lines: list[str]) -> None:
    """Put the device auction's section into an existing report, replacing its last version."""
    text = path.read_text() if path.exists() else ""
    head, _, rest = text.partition(DEVICE_TITLE)
    tail = rest[rest.find("\n## ") :] if rest and "\n## " in rest else ""
    path.write_text(head.rstrip("\n") + "\n\n" + "\n".join(lines) + tail.rstrip("\n") + "\n")


# -- memory: a fresh subprocess per path -------------------------------------------------------
_MEMORY_SNIPPET = r"""
import json, sys, time
sys.path.insert(0, sys.argv[4])
from harness import make_data
from noisepair.matchers import get_matcher
from noisepair.pairing import pair
b, d, path = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
x, z = make_data(b, d)
if path.startswith("torch"):
    import torch
    x, z = torch.from_numpy(x), torch.from_numpy(z)
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
print(json.dumps({"path": path, "peak_mib": status("VmHWM") - base,
                  "cost_mib": b * b * 4 / 2**20, "seconds": t}))
"""


def memory_checks(b: int = 4096, d: int = 16384) -> list[dict]:
    """Peak RSS of one ``pair`` at (b, d) beyond its inputs, per path (Linux /proc)."""
    results = []
    here = str(Path(__file__).resolve().parent)
    for path in ("numpy:hungarian", "torch:hungarian", "torch:auto"):
        argv = [sys.executable, "-c", _MEMORY_SNIPPET, str(b), str(d), path, here]
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=600)
        if proc.returncode == 0:
            results.append(json.loads(proc.stdout.strip().splitlines()[-1]))
        else:  # reported, not hidden
            results.append(
                {
                    "path": f"{path} FAILED: {proc.stderr[-200:]}",
                    "seconds": float("nan"),
                    "peak_mib": float("nan"),
                    "cost_mib": b * b * 4 / 2**20,
                }
            )
    return results


def _memory_section(mem: list[dict]) -> list[str]:
    rows = [
        [m["path"], f"{m['peak_mib']:.0f}", f"{m['cost_mib']:.0f}", f"{m['seconds']:.2f}"]
        for m in mem
    ]
    return [
        "## Memory (B=4096, D=16384, fresh subprocess per path)",
        "",
        "Peak RSS increase during `pair` beyond the inputs, against the size of the cost "
        "matrix (B*B float32 = 64 MiB) and of one batch (x or z: 256 MiB).",
        "",
        *table(["path", "peak increase MiB", "cost matrix MiB", "seconds"], rows),
        "",
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a small grid, about a minute")
    parser.add_argument("--sizes", type=int, nargs="+", metavar="B", help="batch sizes to time")
    parser.add_argument("--dims", type=int, nargs="+", metavar="D", help="dimensions to time")
    parser.add_argument(
        "--out",
        default=None,
        metavar="FILE",
        help="where the report goes (default: benchmarks/results/matching.md, "
        "matching_quick.md for --quick or a grid of your own)",
    )
    parser.add_argument(
        "--device-auction",
        action="store_true",
        help="only the device auction's section (--sizes, --dims: its grid), put into the report",
    )
    args = parser.parse_args(argv)
    if any(v < 1 for v in (args.sizes or []) + (args.dims or [])):
        parser.error("--sizes and --dims take positive integers")
    if args.device_auction:
        out = Path(args.out or Path(__file__).parent / "results" / "matching.md")
        lines = device_auction_section(args.sizes or DEVICE_B, args.dims or DEVICE_D)
        splice_section(out, lines)
        print("\n".join(lines))
        print(f"wrote its section into {out}")
        return 0
    own_grid = args.quick or args.sizes or args.dims
    out = args.out or Path(__file__).parent / "results" / (
        "matching_quick.md" if own_grid else "matching.md"
    )
    print(run(quick=args.quick, out=out, sizes=args.sizes, dims=args.dims))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
