"""Does pairing hide behind the training step? Writes benchmarks/results/loader_overhead.md.

1. Overlap: a consumer whose "step" sleeps as long as the pairing of the batch it holds took
   (``pb.info["seconds"]``: encode + noise draw + cost + assignment, measured in the prefetch
   thread of the same loop) iterates MatchedNoiseLoader (prefetch=2); the plain loader's loop then
   sleeps the same sequence of times. The ratio of their steady batches/s is the overlap (target
   >= 0.95); the whole-loop ratio, which also pays for the first pairing, is shown beside it.
2. The same with a CPU-bound torch step (matmuls on torch's intra-op threads) of the same length:
   on a 2-core machine the prefetch thread and the step share the cores, reported as measured.
3. GIL: each piece of the pairing runs in a thread while the main thread runs pure Python; the
   main thread's speed relative to running alone says whether the piece releases the GIL
   (about 1: released; about 0.5 or below: held).

python benchmarks/loader_overhead.py [--quick]
"""

from __future__ import annotations

import statistics
import sys
import threading
import time

import torch
from harness import machine_info, machine_line, make_data, table, write_results

from noisepair import MatchedNoiseLoader
from noisepair.cost import cost_matrix
from noisepair.matchers import get_matcher
from noisepair.noise import draw_like

QUICK = "--quick" in sys.argv[1:]
N_BATCHES = 12 if QUICK else 40
CASES = (
    [(1024, 3072, "hungarian"), (1024, 3072, "auto")]
    if QUICK
    else [
        (256, 3072, "hungarian"),
        (1024, 3072, "hungarian"),
        (1024, 3072, "auto"),
        (2048, 64, "auto"),
        (1024, 2, "auto"),
    ]
)


def make_loader(b, d, n):
    x, _ = make_data(b, d, seed=1)
    xt = torch.from_numpy(x)
    labels = torch.arange(b)
    return [(xt.roll(i, 0), labels) for i in range(n)]  # a list: loading costs nothing


def timed_loop(iterable, step, n):
    """(whole, steady) batches/s: over the whole loop, and from the first batch's arrival on.

    The steady rate is what a long run sees; the whole-loop rate also pays the first pairing once
    (the pipeline filling), which over thousands of steps is nothing but over a dozen is ~1/n.
    """
    t0 = time.perf_counter()
    t1 = None
    count = 0
    for item in iterable:
        if t1 is None:
            t1 = time.perf_counter()
        step(item, count)
        count += 1
    assert count == n
    end = time.perf_counter()
    return n / (end - t0), n / (end - t1)


def cpu_step_factory(seconds):
    a = torch.randn(384, 384)
    t = time.perf_counter()
    reps = 0
    while time.perf_counter() - t < 0.2:
        a @ a
        reps += 1
    per = (time.perf_counter() - t) / reps
    k = max(1, round(seconds / per))

    def step(item, i):
        for _ in range(k):
            a @ a

    return step


def sleep_overlap(batches, method):
    """Matched / plain steady and whole-loop rates of a step that sleeps each batch's pairing
    time (the CPU stays free): the overlap. ``batches``: a list of (sample, labels)."""
    n = len(batches)
    list(MatchedNoiseLoader(batches[:2], method=method, prefetch=2))  # warm up
    waits: list[float] = []  # the pairing times of the last matched loop ...
    replay: list[float] = []  # ... replayed by the plain one

    def sleep_matched(pb, i):  # waits exactly as long as this batch's pairing took
        waits.append(pb.info["seconds"])
        time.sleep(pb.info["seconds"])

    def sleep_plain(batch, i):
        time.sleep(replay[i])

    plain, matched = [], []
    for _ in range(2):  # interleaved repeats, best of each
        waits.clear()
        with MatchedNoiseLoader(batches, method=method, prefetch=2) as ml:
            matched.append(timed_loop(ml, sleep_matched, n))
        replay[:] = waits
        plain.append(timed_loop(batches, sleep_plain, n))
    return {
        "pair_ms": statistics.median(replay) * 1e3,
        "sleep_plain": max(p[1] for p in plain),
        "sleep_matched": max(m[1] for m in matched),
        "sleep_ratio": max(m[1] for m in matched) / max(p[1] for p in plain),
        "sleep_whole_ratio": max(m[0] for m in matched) / max(p[0] for p in plain),
    }


def overlap_row(b, d, method):
    """One case: the sleep step's and the CPU step's matched / plain rates."""
    batches = make_loader(b, d, N_BATCHES)
    res = {"B": b, "D": d, "method": method, **sleep_overlap(batches, method)}

    cpu = cpu_step_factory(res["pair_ms"] / 1e3)
    plain, matched = [], []
    for _ in range(2):
        plain.append(timed_loop(batches, cpu, N_BATCHES))
        with MatchedNoiseLoader(batches, method=method, prefetch=2) as ml:
            matched.append(timed_loop(ml, cpu, N_BATCHES))
    res["cpu_plain"] = max(p[1] for p in plain)
    res["cpu_matched"] = max(m[1] for m in matched)
    res["cpu_ratio"] = res["cpu_matched"] / res["cpu_plain"]
    print(res, flush=True)
    return res


def python_work(stop):
    n = 0
    while not stop.is_set():
        for _ in range(1000):
            n += 1
    return n


def gil_probe(fn, seconds=1.0):
    """Main-thread pure-Python throughput while ``fn`` loops in a thread, relative to alone."""

    def main_alone():
        stop = threading.Event()
        timer = threading.Timer(seconds, stop.set)
        timer.start()
        return python_work(stop)

    alone = main_alone()
    stop_solver = threading.Event()
    calls = [0]

    def solver():
        while not stop_solver.is_set():
            fn()
            calls[0] += 1

    th = threading.Thread(target=solver, daemon=True)
    th.start()
    time.sleep(0.05)
    together = main_alone()
    stop_solver.set()
    th.join()
    return together / alone, calls[0]


def gil_rows():
    b, d = (1024, 64)
    x, z = make_data(b, d)
    c = cost_matrix(x, z)
    ct = torch.from_numpy(c)
    x2, z2 = make_data(1024, 2)
    c2 = cost_matrix(x2, z2)
    xb, _ = make_data(1024, 3072)
    xbt = torch.from_numpy(xb)
    from scipy.optimize import linear_sum_assignment

    def python_loop():
        n = 0
        for _ in range(200_000):
            n += 1

    pieces = {
        "control: pure-Python loop (holds the GIL)": python_loop,
        "control: time.sleep(10 ms) (releases it, no CPU)": lambda: time.sleep(0.01),
        "scipy linear_sum_assignment (B=1024, D=64)": lambda: linear_sum_assignment(c),
        "hungarian = lapjv (B=1024, D=64)": lambda: get_matcher("hungarian").solve(c),
        "emd (B=1024, D=2)": lambda: get_matcher("emd").solve(c2),
        "auto (B=1024, D=64 -> lapjv)": lambda: get_matcher("auto").solve(c),
        "auction, compiled candidates (B=1024, D=64)": lambda: get_matcher(
            "auction", backend="candidates"
        ).solve(c),
        "auction, torch (B=1024, D=64)": lambda: get_matcher("auction", backend="torch").solve(ct),
        "cost numpy (1024x3072)": lambda: cost_matrix(xb, xb),
        "cost torch (1024x3072)": lambda: cost_matrix(xbt, xbt),
        "noise draw numpy (1024x3072)": lambda: draw_like(xb, 1024, seed=0),
        "noise draw torch (1024x3072)": lambda: draw_like(xbt, 1024, seed=0),
    }
    rows = []
    for name, fn in pieces.items():
        fn()  # warm up: first-call costs (numba's compile, thread pools) are not the steady state
        rel, calls = gil_probe(fn)
        rows.append((name, rel, calls))
        print(name, round(rel, 2), calls, flush=True)
    return rows


#: the overlap table: header -> cell format over a row of overlap_row
OVERLAP_COLUMNS = {
    "B": "{B}",
    "D": "{D}",
    "method": "{method}",
    "pair ms": "{pair_ms:.1f}",
    "sleep: plain it/s": "{sleep_plain:.2f}",
    "sleep: matched it/s": "{sleep_matched:.2f}",
    "sleep ratio": "{sleep_ratio:.3f}",
    "sleep ratio, whole": "{sleep_whole_ratio:.3f}",
    "cpu: plain it/s": "{cpu_plain:.2f}",
    "cpu: matched it/s": "{cpu_matched:.2f}",
    "cpu ratio": "{cpu_ratio:.3f}",
}


def report(over: list[dict], gil: list[tuple], info: dict, seconds: float) -> str:
    command = f"python benchmarks/loader_overhead.py{' --quick' if QUICK else ''}"
    overlap = [[cell.format(**r) for cell in OVERLAP_COLUMNS.values()] for r in over]
    lines = [
        "# Loader overhead: does pairing hide behind the step?",
        "",
        f"`{command}`, {seconds:.0f} s. {machine_line(info)} GPU: not measured (CPU loaders).",
        "",
        f"{N_BATCHES} batches per loop (torch tensors from a list), best of 2 interleaved "
        "repeats. `pair ms`: median pairing time per batch (encode + noise draw + cost + "
        "assignment, `pb.info['seconds']`, measured in the prefetch thread). sleep step = "
        "time.sleep(that batch's own pairing time); the plain loop sleeps the same sequence. "
        "cpu step = 384x384 matmuls on torch's threads for pair ms. Ratio = matched "
        "batches/s / plain batches/s from the first batch on (MatchedNoiseLoader "
        "prefetch=2; target >= 0.95 for the sleep step); whole = over the whole loop, "
        "first pairing included.",
        "",
        *table(list(OVERLAP_COLUMNS), overlap),
        "",
        "## GIL: main-thread pure-Python speed while the piece runs in a thread",
        "",
        "About 1: the piece releases the GIL (it overlaps Python work in the training loop); "
        "0.5 or below: it holds it. 2 cores, so a released piece and the main thread each "
        "get one.",
        "",
        *table(
            ["piece", "main-thread speed vs alone", "calls in 1 s"],
            [[name, f"{rel:.2f}", calls] for name, rel, calls in gil],
        ),
        "",
    ]
    return "\n".join(lines) + "\n"


def main():
    torch.manual_seed(0)
    info = machine_info()
    start = time.perf_counter()
    over = [overlap_row(*case) for case in CASES]
    gil = gil_rows()
    text = report(over, gil, info, time.perf_counter() - start)
    print(text)
    print(f"wrote {write_results('loader_overhead', text, quick=QUICK)}")


if __name__ == "__main__":
    main()
