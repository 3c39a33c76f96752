"""Matching and loader overhead on a GPU, in one bounded run. Writes benchmarks/results/gpu.md.

1. Matching, for each (B, D), on tensors already on ``--device``:
   - ``cost``: noisepair's cost matrix alone;
   - ``device``: ``pair`` with the device auction (``method="auction"``, ``backend="device"``:
     cost and assignment stay on the device, its blocks of bidding rounds replayed from CUDA
     graphs), end to end, and ``device solve`` on the precomputed cost; its gap to the exact
     optimum, measured, the bound it certifies (``info["gap_bound"]``), its bidding rounds and
     its host checks (blocks); at the headline cell also its variants (VARIANTS: other warm
     starts and block lengths), for the choice of its defaults;
   - ``hungarian``: noisepair's exact default end to end (cost on the device, one copy of the
     cost matrix to the host, lapjv there; scipy where lapjv is missing), and ``hungarian solve``
     (copy + host solve) on the precomputed cost;
   - ``reference``: what the Immiscible Diffusion code does: ``torch.cdist`` on the device,
     squared, ``scipy.optimize.linear_sum_assignment`` on the host, the index sent back;
   - ``auto``: ``method="auto"`` with ``approximate=True`` end to end (the solver it picked shown);
   - at the headline cell (largest B and D) only, ``hungarian`` and ``auto`` on CPU copies of the
     data: this host's own path, for a device-vs-host ratio from one run.
   Each call is bracketed by device synchronisation; a method's time is the fastest of a few
   interleaved rounds after a first (warm-up) call. A call predicted above ``--cell-limit-s``
   from its growth at the previous B (x8 per doubling, x4 for the cost, x6 for the auction) is
   skipped and marked so.
2. Loader overhead: MatchedNoiseLoader (prefetch=2, device=``--device``) over a list of device
   batches against the plain list whose step draws ``torch.randn_like`` itself. The step is a
   training-like device step (square matmuls sized to last about one pairing, then the loss read
   back, which waits for the device). Ratios as in benchmarks/loader_overhead.py: matched / plain
   batches per second from the first batch's arrival on (steady) and over the whole loop.

Everything obeys ``--budget-s``: cells that no longer fit are skipped and the file says so. The
report is rewritten after every cell (marked partial until the end), so a run cut off from
outside still leaves its numbers in ``--out``.

python benchmarks/gpu.py [--device cuda|cpu] [--quick] [--budget-s S] [--out DIR]
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import math
import os
import shlex
import statistics
import sys
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # noisepair imports from the checkout, installed or not
sys.path.insert(0, str(ROOT / "benchmarks"))  # harness, also when loaded from a test

import torch

# -- the library calls: the only lines that touch noisepair (adapt here if its API moves) ------
from harness import machine_info, make_data
from loader_overhead import timed_loop

from noisepair.cost import cost_matrix
from noisepair.loader import MatchedNoiseLoader
from noisepair.matchers import get_matcher
from noisepair.pairing import pair

PATHS = {  # name: (method, method_options)
    "device": ("auction", {"backend": "device"}),  # the device auction: chosen by hand only
    "auto": ("auto", {"approximate": True}),
    "hungarian": ("hungarian", {}),
}


def matcher(name: str, **more):
    method, options = PATHS[name]
    return get_matcher(method, **options, **more)


def pair_end_to_end(x, z, m):
    """(idx on the sample's device, info): validation, cost, solve, the pairing's summary."""
    return pair(x, z, m)


def solve_only(m, cost):
    return m.solve(cost)


def cost_only(x, z):
    return cost_matrix(x, z)


def matched_loader(batches, name: str, device: str):
    method, options = PATHS[name]
    return MatchedNoiseLoader(
        batches, method=method, method_options=options, device=device, prefetch=2
    )


def pairing_seconds(pb) -> float:
    return pb.info["seconds"]


def solver_name(m) -> str:
    solver = getattr(m, "solver", None) or m.name
    if solver == "scipy" and importlib.util.find_spec("lapjv") is None:
        return "scipy; lapjv n/a: not installed"
    return solver


# ------------------------------------------------------------------------------------------------

FULL_B, FULL_D = (1024, 2048, 4096), (16384, 3072, 64)  # the headline dimension first
QUICK_B, QUICK_D = (64, 128), (512, 32)
LOADER_FULL = [(4096, 16384), (1024, 3072), (1024, 16384), (4096, 3072)]
LOADER_QUICK = [(128, 512)]
METHODS = ("cost", "device", "device_solve", "hungarian", "hungarian_solve", "reference", "auto")
HOST = ("cpu_hungarian", "cpu_auto")  # the headline cell only: the same data as CPU tensors
# time factor per doubling of B assumed when predicting a skip: B^2 work for the cost and per
# bidding round of the auction (whose rounds grow too), B^3 for the exact solvers (the default)
GROWTH = {"cost": 4.0, "device": 6.0, "device_solve": 6.0, "auto": 6.0}
#: the device auction's variants, timed end to end at the headline cell only
VARIANTS = {
    "device_ws0": {"warm_start": 0},
    "device_ws8": {"warm_start": 8},
    "device_ws64": {"warm_start": 64},
    "device_block32": {"block": 32},
}
LONG_S = 0.5  # a first call this long is timed once more, not over every round
ONCE_S = 3.0  # a first call this long is the measurement (no warm-up effect left to remove)
MATCHING_SHARE = 0.6  # of the budget; the loader gets what matching leaves


class Clock:
    """Wall-clock deadlines for the run and for its matching phase."""

    def __init__(self, budget_s: float):
        self.start = time.perf_counter()
        self.end = self.start + budget_s
        self.matching_end = self.start + MATCHING_SHARE * budget_s

    def left(self, phase: str = "all") -> float:
        end = self.matching_end if phase == "matching" else self.end
        return end - time.perf_counter()

    def elapsed(self) -> float:
        return time.perf_counter() - self.start


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def timed(fn, device: str):
    sync(device)
    t0 = time.perf_counter()
    out = fn()
    sync(device)
    return time.perf_counter() - t0, out


def data(b: int, d: int, device: str, seed: int = 0):
    """The matching benchmark's synthetic data (8 noisy prototypes in [-1, 1], noise N(0, I)),
    the same arrays as benchmarks/results/matching.md's at the same (B, D)."""
    x, z = make_data(b, d, seed=seed)
    return torch.from_numpy(x).to(device), torch.from_numpy(z).to(device)


def reference(x, z):
    """The Immiscible Diffusion path: cdist on the device, squared, scipy on the host."""
    from scipy.optimize import linear_sum_assignment

    c = torch.cdist(x, z).pow_(2)
    cols = linear_sum_assignment(c.cpu().numpy())[1]
    return torch.as_tensor(cols, device=x.device), {}


def total(c, cols) -> float:
    """Total cost of ``cols`` on the float32 cost ``c``, summed in float64."""
    cols = torch.as_tensor(cols, device=c.device, dtype=torch.long)
    ar = torch.arange(c.shape[0], device=c.device)
    if not torch.equal(torch.sort(cols).values, ar):
        raise AssertionError("the method returned no permutation")
    return float(c[ar, cols].double().sum())


def predict(name: str, b: int, last: dict) -> float:
    """Seconds a call at batch ``b`` is expected to take, from the previous B at this D."""
    prev = last.get(name)
    return prev[1] * GROWTH.get(name, 8.0) ** math.log2(b / prev[0]) if prev else 0.0


def empty_row(b: int, d: int) -> dict:
    return {
        "B": b,
        "D": d,
        "t": {},
        "rounds": {},
        "skip": {},
        "info": {},
        "total": {},
        "peak_mib": {},
    }


def matching_cell(b, d, device, clock, last, args, headline=False) -> dict:
    """One (B, D): every method's first call, then interleaved rounds; times in seconds.

    At the headline cell the exact default and auto(approximate) also run on CPU copies of the
    data: the host's own path, timed in the same run."""
    row = empty_row(b, d)

    def skip_reason(name, predicted):
        if predicted > args.cell_limit_s:
            last[name] = (b, predicted)  # the next B is predicted from this prediction
            return f"skip (predicted {predicted:.0f} s)"
        return (
            "budget" if predicted > clock.left("matching") or clock.left("matching") <= 0 else None
        )

    if all(skip_reason(n, predict(n, b, last)) for n in METHODS):  # no data made for nothing
        row["skip"] = {n: skip_reason(n, predict(n, b, last)) for n in METHODS}
        row["skip"].update({n: "budget" for n in ((*HOST, *VARIANTS) if headline else ())})
        return row
    x, z = data(b, d, device)
    c = cost_only(x, z)
    ms = {name: matcher(name) for name in ("device", "hungarian", "auto")}
    fns = {
        "cost": lambda: (cost_only(x, z), {}),
        "device": lambda: pair_end_to_end(x, z, ms["device"]),
        "device_solve": lambda: solve_only(ms["device"], c),
        "hungarian": lambda: pair_end_to_end(x, z, ms["hungarian"]),
        "hungarian_solve": lambda: solve_only(ms["hungarian"], c),
        "reference": lambda: reference(x, z),
        "auto": lambda: pair_end_to_end(x, z, ms["auto"]),
    }
    if headline:
        xc, zc = x.cpu(), z.cpu()
        fns["cpu_hungarian"] = lambda: pair_end_to_end(xc, zc, ms["hungarian"])
        fns["cpu_auto"] = lambda: pair_end_to_end(xc, zc, ms["auto"])
        for name, options in VARIANTS.items():
            m = matcher("device", **options)
            fns[name] = lambda m=m: pair_end_to_end(x, z, m)
    row["solver"] = {"hungarian": solver_name(ms["hungarian"])}
    first = {}
    for name, fn in fns.items():
        predicted = predict(name, b, last)
        if name in HOST or name in VARIANTS:  # predicted from the path they vary
            base = "hungarian_solve" if name in HOST else "device"
            if base not in first:
                row["skip"][name] = f"skip ({base.replace('_', ' ')} not measured)"
                continue
            predicted = first[base]
        reason = skip_reason(name, predicted)
        if reason:
            row["skip"][name] = reason
            continue
        try:
            if device == "cuda":
                sync(device)
                torch.cuda.reset_peak_memory_stats()
                base = torch.cuda.memory_allocated()
            dt, (cols, info) = timed(fn, device)
            if device == "cuda" and name not in HOST:
                row["peak_mib"][name] = (torch.cuda.max_memory_allocated() - base) / 2**20
            if name != "cost":
                row["total"][name] = total(c, cols)
        except Exception as exc:  # reported in its cell, the run goes on (an OOM, say)
            row["skip"][name] = f"error: {type(exc).__name__}: {str(exc)[:120]}"
            traceback.print_exc()
            continue
        first[name] = dt
        row["info"][name] = {
            k: v for k, v in info.items() if isinstance(v, (int, float, str, bool))
        }
    samples = {n: [t] if t >= LONG_S else [] for n, t in first.items()}
    for r in range(args.rounds):
        for name, t1 in first.items():
            if (t1 >= LONG_S and r > 0) or t1 >= ONCE_S or t1 > clock.left("matching"):
                continue
            reps = int(min(20, max(1, 0.02 / max(t1, 1e-6))))
            dt, _ = timed(lambda fn=fns[name], reps=reps: [fn() for _ in range(reps)], device)
            samples[name].append(dt / reps)
    for name, s in samples.items():
        s = s or [first[name]]
        row["t"][name], row["rounds"][name] = min(s), len(s)
        last[name] = (b, row["t"][name])
    exact = [row["total"][m] for m in ("hungarian", "reference") if m in row["total"]]
    row["opt"] = min(exact) if exact else None
    row["exact_disagreement"] = (max(exact) - min(exact)) / min(exact) if len(exact) > 1 else None
    for m in ("device", "auto", *VARIANTS):
        if row["opt"] and m in row["total"]:
            row["info"][m]["measured_gap"] = (row["total"][m] - row["opt"]) / row["opt"]
    print(row_line(row), flush=True)
    return row


# -- loader overhead ------------------------------------------------------------------------------


def device_step(seconds: float, device: str, size: int):
    """A training-like step of about ``seconds``: square matmuls (the model), the loss on the
    sample and its noise, read back (``loss.item()``, which waits for the device)."""
    w = torch.randn(size, size, device=device)
    buf = torch.empty_like(w)
    torch.mm(w, w, out=buf)
    dt, _ = timed(lambda: [torch.mm(w, w, out=buf) for _ in range(10)], device)
    k = max(1, round(seconds / (dt / 10)))

    def step(x, noise):
        for _ in range(k):
            torch.mm(w, w, out=buf)
        return float((x - noise).square().mean())

    return step, k


def loader_case(b, d, method, device, clock, pair_s, args) -> dict:
    res = {"B": b, "D": d, "method": method}
    # predicted cost of the case: warm-up (3 pairings) + per repeat a matched and a plain loop
    n = int(min(args.loader_batches, max(6, round(args.loader_loop_s / max(pair_s, 1e-3)))))
    per_repeat = (
        3 * n * pair_s
    )  # plain n steps; matched up to 2n when pairing competes for the device
    if 3 * pair_s + per_repeat > clock.left():
        res["skip"] = "budget"
        return res
    try:
        x = data(b, d, device, seed=1)[0]
        batches = [x.roll(i, 0) for i in range(n)]  # distinct device batches; loading costs nothing
        warm = [pairing_seconds(pb) for pb in matched_loader(batches[:3], method, device)]
        t_pair = statistics.median(warm[1:])
        step, k = device_step(t_pair, device, args.step_size)
        res.update(pair_ms=t_pair * 1e3, batches=n, matmuls=k)
        plain, matched = [], []
        for r in range(2):  # a second repeat only for short loops, and while the budget lasts
            if r > 0 and (per_repeat > args.loader_repeat_s or per_repeat > clock.left()):
                break
            with matched_loader(batches, method, device) as ml:
                matched.append(timed_loop(ml, lambda pb, i: step(pb.sample, pb.noise), n))
            plain.append(timed_loop(batches, lambda xb, i: step(xb, torch.randn_like(xb)), n))
        res["repeats"] = len(plain)
        res["plain"] = max(p[1] for p in plain)
        res["matched"] = max(m[1] for m in matched)
        res["ratio"] = res["matched"] / res["plain"]
        res["whole_ratio"] = max(m[0] for m in matched) / max(p[0] for p in plain)
    except Exception as exc:  # reported in its row, the run goes on (an OOM, say)
        res["skip"] = f"error: {type(exc).__name__}: {str(exc)[:120]}"
        traceback.print_exc()
    print(res, flush=True)
    return res


# -- report ---------------------------------------------------------------------------------------


def fmt_t(s) -> str:
    if s is None:
        return "–"
    return f"{s:.2f} s" if s >= 1 else f"{s * 1e3:.3g}"


def cell(row, name) -> str:
    if name in row["t"]:
        return fmt_t(row["t"][name])
    return row["skip"].get(name, "–")


def ratio(row, a, b) -> str:
    ta, tb = row["t"].get(a), row["t"].get(b)
    return f"{ta / tb:.3g}" if ta and tb else "–"


def device_quality(row, name) -> str:
    info = row["info"].get(name, {})
    if name not in row["t"]:
        return "–"
    gap = info.get("measured_gap")
    gap = f"{gap:.1e}" if gap is not None else "n/a: no exact optimum"
    rounds = f"{info.get('auction_rounds', '?')}/{info.get('blocks', '?')}"
    return f"{gap} [{info.get('gap_bound', float('nan')):.1e}] ({rounds})"


def row_line(row) -> str:
    return f"D={row['D']:>5} B={row['B']:>4}  " + "  ".join(f"{m} {cell(row, m)}" for m in METHODS)


def report(rows, loads, env, args, clock, command, final=True) -> str:
    head = next((r for r in rows if (r["B"], r["D"]) == (max(args.sizes), max(args.dims))), None)
    out = ["# GPU benchmark: matching and loader overhead on the device", ""]
    if not final:
        out += [
            "**Partial: written while the run was in progress; it stopped before the end.**",
            "",
        ]
    out.append(
        f"{env['date']}. `{command}`: {clock.elapsed():.1f} s from the start of main "
        f"(budget {args.budget_s:.0f} s), of which {env['warmup_s']:.1f} s device and "
        "solver warm-up; Python and torch imports before it are not counted."
    )
    out.append("")
    out.append(
        f"Device: **{env['device_name']}**, torch {env['torch']}, CUDA {env['cuda']}, "
        f"float32 matmul precision `{env['matmul_precision']}`, {env['cpus']} CPUs "
        f"({env['machine']['cpu']}), load average {env['loadavg']} at start, "
        f"{env['loadavg_end']} at end (the machine may be shared). Packages: "
        + ", ".join(
            f"{k} {env['machine'].get(k) or 'missing'}" for k in ("scipy", "lapjv", "pot", "numba")
        )
        + "."
    )
    out.append("")
    out.append(reading(head, loads, env))
    out.append("")
    out.append("## Matching")
    out.append("")
    out.append(
        f"Times in ms (s where marked), data on the device before the call, bracketed by "
        f"device synchronisation; the fastest of up to {args.rounds} interleaved rounds after "
        f"a first call (calls of {LONG_S} s or more: the faster of two; of {ONCE_S:.0f} s "
        "or more: that one call). `skip "
        f"(predicted N s)`: above the {args.cell_limit_s:.0f} s cell limit by the growth at "
        "the previous B (x8 per doubling, x4 for the cost alone, x6 for the auction); "
        "`budget`: no time left in the run's budget. "
        "device = `pair` with the device auction (`method='auction', backend='device'`, tol "
        "1e-3); gap = its total cost / exact optimum - 1, [certified bound], (bidding rounds / "
        "host checks). hungarian = `pair` with the exact "
        "default (cost on the device, cost matrix copied to the host, solved there by the "
        "solver named). reference = torch.cdist squared + scipy linear_sum_assignment. auto = "
        "method='auto', approximate=True. Ratios: end to end, higher = the device auction faster."
    )
    out.append("")
    out.append(
        "| D | B | cost only | device | device solve | device gap [bound] (rounds/checks) "
        "| hungarian (solver) | hungarian solve | reference | auto (solver) | hungarian / "
        "device | reference / device | reference / hungarian |"
    )
    out.append("|" + "---|" * 13)
    for r in rows:
        solver = f" ({r['solver']['hungarian']})" if "hungarian" in r["t"] else ""
        auto_solver = f" ({r['info']['auto'].get('solver', '?')})" if "auto" in r["t"] else ""
        out.append(
            f"| {r['D']} | {r['B']} | {cell(r, 'cost')} | {cell(r, 'device')} | "
            f"{cell(r, 'device_solve')} | {device_quality(r, 'device')} | "
            f"{cell(r, 'hungarian')}{solver} | {cell(r, 'hungarian_solve')} | "
            f"{cell(r, 'reference')} | {cell(r, 'auto')}{auto_solver} | "
            f"{ratio(r, 'hungarian', 'device')} | {ratio(r, 'reference', 'device')} | "
            f"{ratio(r, 'reference', 'hungarian')} |"
        )
    out.append("")
    dis = [r["exact_disagreement"] for r in rows if r.get("exact_disagreement") is not None]
    if dis:
        out.append(
            f"Exact paths (hungarian, reference) agree to a relative {max(dis):.1e} in total "
            "cost (evaluated on one float32 cost matrix, float64 sums)."
        )
    skipped = sum(1 for r in rows for v in r["skip"].values() if v == "budget")
    if skipped:
        out.append(f"{skipped} matching measurements skipped for the budget.")
    out.append("")
    if head is not None:
        out.extend(host_table(head))
        out.extend(variants_table(head))
    if args.device != "cuda":
        out.append("Peak device memory: n/a (measured on CUDA only).")
        out.append("")
    if head and head.get("peak_mib"):
        b, d = head["B"], head["D"]
        out.append(
            f"Peak device memory at B={b}, D={d} during the first call, beyond what was "
            f"allocated before it (x, z and one cost matrix: the cost matrix is "
            f"{b * b * 4 / 2**20:.0f} MiB, one batch {b * d * 4 / 2**20:.0f} MiB):"
        )
        out.append("")
        out.append("| path | peak MiB |")
        out.append("|---|---|")
        for name, mib in head["peak_mib"].items():
            out.append(f"| {name} | {mib:.0f} |")
        out.append("")
    out.append("## Loader overhead")
    out.append("")
    out.append(
        "MatchedNoiseLoader (prefetch=2, device set) over a list of device batches, against "
        "the plain list whose step draws its noise with torch.randn_like. Step: square "
        f"{args.step_size}x{args.step_size} float32 matmuls, as many as last about one "
        "pairing (`pair ms`, the median of the warm-up's `pb.info['seconds']`: noise draw + "
        "cost + assignment, in the prefetch thread), then the loss on sample and noise read "
        "back. Ratio = matched / plain batches/s from the first batch's arrival on (steady); "
        "whole = over the whole loop, first pairing included. The loader queues the "
        "pairing's device work on a stream of its own (the step keeps the default "
        "stream), so that neither waits for the other's kernels."
    )
    out.append("")
    out.append(
        "| B | D | method | pair ms | batches x repeats | matmuls/step | plain it/s | "
        "matched it/s | ratio | ratio, whole |"
    )
    out.append("|" + "---|" * 10)
    for r in sorted(loads, key=lambda r: (r["B"], r["D"], r["method"])):
        if "ratio" not in r:
            out.append(
                f"| {r['B']} | {r['D']} | {r['method']} | {r.get('skip', '–')} |" + " – |" * 6
            )
            continue
        out.append(
            f"| {r['B']} | {r['D']} | {r['method']} | {r['pair_ms']:.1f} | "
            f"{r['batches']} x {r['repeats']} | {r['matmuls']} | {r['plain']:.2f} | "
            f"{r['matched']:.2f} | {r['ratio']:.3f} | {r['whole_ratio']:.3f} |"
        )
    out.append("")
    if "handover" in env:
        out += [env["handover"], ""]
    return "\n".join(out) + "\n"


def handover_check(device: str) -> str:
    """Noise handed over from the prefetch thread's stream, read while the step's stream is busy,
    must equal the noise paired in the caller's thread (prefetch=0)."""
    x = [torch.randn(1024, 3072, device=device) + i for i in range(6)]
    ref = [pb.noise.clone() for pb in MatchedNoiseLoader(x, seed=0, prefetch=0)]
    a = torch.randn(2048, 2048, device=device)
    same = 0
    for pb, r in zip(MatchedNoiseLoader(x, seed=0, prefetch=2, device=device), ref, strict=True):
        for _ in range(30):  # the step's kernels queue ahead of the read below
            a = torch.tanh(a @ a)
        same += bool(torch.equal(pb.noise * 1.0, r))
    return (
        f"Stream hand-over check: the noise read on the step's (busy) stream equals the "
        f"caller-thread pairing in {same} of {len(ref)} batches."
    )


def host_table(head) -> list[str]:
    """The headline cell's data as CPU tensors on this host, beside the device paths."""
    info = head["info"]
    out = [
        (
            f"Same host, same data as CPU tensors (B={head['B']}, D={head['D']}), end to end "
            "through `pair` (cost on the CPU's torch threads):"
        ),
        "",
        "| path | time | device path | device time | host / device |",
        "|---|---|---|---|---|",
    ]
    for host, dev in (("cpu_hungarian", "hungarian"), ("cpu_auto", "device")):
        solver = (
            (
                head["solver"]["hungarian"]
                if host == "cpu_hungarian"
                else info[host].get("solver", "?")
            )
            if host in head["t"]
            else "not run"
        )
        out.append(
            f"| {host} ({solver}) | {cell(head, host)} | {dev} | {cell(head, dev)} | "
            f"{ratio(head, host, dev)} |"
        )
    return out + [""]


def variants_table(head) -> list[str]:
    """The device auction's variants at the headline cell, beside its defaults."""
    out = [
        f"The device auction's variants (B={head['B']}, D={head['D']}), end to end; defaults: "
        "warm_start=32 Sinkhorn iterations, block=8 rounds between host checks:",
        "",
        "| variant | options | time | gap [bound] (rounds/checks) | loop | time / default |",
        "|---|---|---|---|---|---|",
    ]
    for name, options in {"device": {}, **VARIANTS}.items():
        loop = head["info"].get(name, {}).get("device_loop", "–")
        out.append(
            f"| {name} | {options or 'defaults'} | {cell(head, name)} | "
            f"{device_quality(head, name)} | {loop} | {ratio(head, name, 'device')} |"
        )
    return out + [""]


def reading(head, loads, env) -> str:
    """The headline in words, from the numbers of this run."""
    if head is None or "device" not in head["t"]:
        return "Headline cell not measured in this run (budget or error): see the tables."
    t, b, d = head["t"], head["B"], head["D"]
    info = head["info"]["device"]
    parts = [
        f"**Headline (B={b}, D={d}, {env['device_name']})**: the cost matrix alone "
        f"{fmt_t(t.get('cost'))} ms; the device auction end to end {fmt_t(t['device'])} ms "
        f"(solve {fmt_t(t.get('device_solve'))} ms, certified gap bound "
        f"{info.get('gap_bound', float('nan')):.1e}"
        + (f", measured gap {info['measured_gap']:.1e}" if "measured_gap" in info else "")
        + ")"
    ]
    if "hungarian" in t:
        parts.append(
            f"the exact default end to end {fmt_t(t['hungarian'])} ms "
            f"({head['solver']['hungarian']} on the host), {t['hungarian'] / t['device']:.3g}x "
            "the device auction's time"
        )
    if "reference" in t:
        parts.append(
            f"the reference path {fmt_t(t['reference'])} ms, "
            f"{t['reference'] / t['device']:.3g}x the device auction's time"
        )
    else:
        parts.append(f"the reference path: {head['skip'].get('reference', 'not measured')}")
    host = []
    if "cpu_hungarian" in t and "hungarian" in t:
        host.append(
            f"the exact default {fmt_t(t['cpu_hungarian'])} ms "
            f"({t['cpu_hungarian'] / t['hungarian']:.3g}x its device time)"
        )
    if "cpu_auto" in t:
        host.append(
            f"auto(approximate) {fmt_t(t['cpu_auto'])} ms "
            f"({head['info']['cpu_auto'].get('solver')}, "
            f"{t['cpu_auto'] / t['device']:.3g}x the device auction's time)"
        )
    if host:
        parts.append("the same data as CPU tensors on this host: " + ", ".join(host))
    text = "; ".join(parts) + "."
    done = [r for r in loads if "ratio" in r]
    if done:
        lo, hi = min(done, key=lambda r: r["ratio"]), max(done, key=lambda r: r["ratio"])
        text += (
            f" Loader: steady matched/plain {lo['ratio']:.2f} ({lo['method']}, B={lo['B']}, "
            f"D={lo['D']}) to {hi['ratio']:.2f} ({hi['method']}, B={hi['B']}, D={hi['D']})."
        )
    return text


def warm_up(device: str, host_batch: int) -> None:
    """Device context, cuBLAS, the solvers' first calls (numba's compile of the CPU auction that
    auto picks for CPU tensors from B=1024): none of it belongs in a timing."""
    x, z = data(64, 64, device)
    for name in ("device", "hungarian", "auto"):
        pair_end_to_end(x, z, matcher(name))
    reference(x, z)
    xc, zc = data(host_batch, 64, "cpu")
    pair_end_to_end(xc, zc, matcher("auto"))
    step, _ = device_step(1e-3, device, 64)
    step(x, z)
    sync(device)


def parse(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    p.add_argument("--quick", action="store_true", help="small sizes: seconds (for testing)")
    p.add_argument(
        "--budget-s",
        type=float,
        default=None,
        help="wall-clock seconds for all measurements (default 230; quick 40)",
    )
    p.add_argument(
        "--cell-limit-s",
        type=float,
        default=None,
        help="skip a call predicted longer than this (default 20; quick 5)",
    )
    p.add_argument("--rounds", type=int, default=3, help="timing rounds after the first call")
    p.add_argument("--out", default=None, help="also write the report (and raw JSON) into DIR")
    args = p.parse_args(argv)
    for name in ("budget_s", "cell_limit_s"):
        value = getattr(args, name)
        if value is not None and not value >= 0:
            p.error(f"--{name.replace('_', '-')} must be >= 0 seconds, got {value}")
    if args.rounds < 0:
        p.error(f"--rounds must be >= 0 (0: the first call only), got {args.rounds}")
    q = args.quick
    args.budget_s = args.budget_s if args.budget_s is not None else (40.0 if q else 230.0)
    args.cell_limit_s = args.cell_limit_s if args.cell_limit_s is not None else (5.0 if q else 20.0)
    args.sizes, args.dims = (QUICK_B, QUICK_D) if q else (FULL_B, FULL_D)
    args.loader_cases = LOADER_QUICK if q else LOADER_FULL
    args.loader_batches = 6 if q else 20
    args.loader_loop_s = 0.5 if q else 2.5  # target length of one plain loop
    args.loader_repeat_s = 8.0  # loops predicted longer than this are not repeated
    args.step_size = 256 if args.device == "cpu" else 4096
    return args


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse(argv)
    device = args.device
    if device == "cuda" and not torch.cuda.is_available():
        raise SystemExit(
            "--device cuda but torch sees no CUDA device; use --device cpu --quick "
            "to test the script here."
        )
    clock = Clock(args.budget_s)  # the budget covers the warm-up too
    command = "python " + shlex.join(["benchmarks/gpu.py", *argv])
    warm_up(device, min(1024, max(args.sizes)))
    env = {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "device_name": (
            f"{torch.cuda.get_device_name()} "
            f"({torch.cuda.get_device_properties(0).total_memory / 2**30:.0f} GiB)"
            if device == "cuda"
            else "CPU (no GPU)"
        ),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "matmul_precision": torch.get_float32_matmul_precision(),
        "cpus": os.cpu_count(),
        "loadavg": round(os.getloadavg()[0], 2),
        "machine": machine_info(),
        "warmup_s": clock.elapsed(),
    }
    headline = (max(args.sizes), max(args.dims))
    name = "gpu" if device == "cuda" and not args.quick else "gpu_quick"  # gitignored
    dirs = [ROOT / "benchmarks" / "results"] + ([Path(args.out)] if args.out else [])
    rows, loads = [], []

    def save(final: bool = False) -> str:
        """Write the report so far: a run cut off from outside still leaves its numbers."""
        env["loadavg_end"] = round(os.getloadavg()[0], 2)
        text = report(rows, loads, env, args, clock, command, final)
        raw = json.dumps(
            {"env": env, "rows": rows, "loader": loads, "command": command, "complete": final},
            indent=1,
            default=str,
        )
        for folder in dirs:
            folder.mkdir(parents=True, exist_ok=True)
            (folder / f"{name}.md").write_text(text)
            (folder / f"{name}.json").write_text(raw)
        return text

    for d in args.dims:
        last: dict = {}
        for b in args.sizes:
            try:
                rows.append(matching_cell(b, d, device, clock, last, args, (b, d) == headline))
            except Exception as exc:  # the data, the cost, a non-permutation: the run goes on
                traceback.print_exc()
                rows.append(empty_row(b, d))
                rows[-1]["skip"] = {
                    m: f"error: {type(exc).__name__}: {str(exc)[:120]}" for m in METHODS
                }
            if device == "cuda":
                torch.cuda.empty_cache()  # the cell's tensors are gone: give their blocks back
            save()
    for b, d in args.loader_cases:
        row = next((r for r in rows if (r["B"], r["D"]) == (b, d)), {"t": {}})
        for method in ("device", "hungarian", "auto"):
            pair_s = row["t"].get(method)
            if pair_s is None:
                loads.append({"B": b, "D": d, "method": method, "skip": "pairing not measured"})
                continue
            loads.append(loader_case(b, d, method, device, clock, pair_s, args))
            if device == "cuda":
                torch.cuda.empty_cache()
            save()
    if clock.left("loader") > 10:
        env["handover"] = handover_check(device)
    print(save(final=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
