"""Does pairing hide behind the training step, and does its thread slow the step? Writes
benchmarks/results/loader_overhead.md.

1. Overlap: a consumer whose "step" sleeps as long as the pairing of the batch it holds took
   (``pb.info["seconds"]``: encode + noise draw + cost + assignment, measured in the prefetch
   thread of the same loop) iterates MatchedNoiseLoader (prefetch=2); the plain loader's loop then
   sleeps the same sequence of times. The ratio of their steady batches/s is the overlap (target
   >= 0.95); the whole-loop ratio, which also pays for the first pairing, is shown beside it.
2. Real steps, as a training loop runs them over a torch DataLoader: a CPU-bound step (a small
   conv net trained with Adam on the batch, torch's default threads: every core busy) and a
   launch-bound step (hundreds of tiny ops a step, Python-heavy: the shape of a GPU loop on a
   small model, here on one core), each at a small (16 x 768) and a large (256 x 3072) pairing.
   Matched / plain batches/s for the default settings (``prefetch="auto"``), for prefetch=2
   (always ahead), prefetch=0 (on demand: the thread pairs only while the loop waits) and the
   old default (prefetch=2 with the thread's own OpenMP team: no
   ``noisepair.threads.single_threaded``), all in one run.
3. Mechanism: the loader's own time per batch with no step (thread start and end included),
   the OS threads the pairing thread starts (its own OpenMP team), what a second team does to
   the step team's idle threads, and what one thread costs the pairing itself.
4. GIL per piece: each piece of the pairing runs in a thread while the main thread runs pure
   Python; the main thread's speed relative to running alone says whether the piece releases the
   GIL (about 1: released; about 0.5 or below: held).

python benchmarks/loader_overhead.py [--quick]
"""

from __future__ import annotations

import contextlib
import os
import random
import statistics
import sys
import threading
import time

import torch
from harness import machine_info, machine_line, make_data, table, write_results
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import noisepair.prefetch
from noisepair import MatchedNoiseLoader
from noisepair.cost import cost_matrix
from noisepair.matchers import get_matcher
from noisepair.noise import draw_like
from noisepair.pairing import pair
from noisepair.threads import single_threaded

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
#: real-step rows: (step, its size: conv channels or layers, batch B, image side s; D = 3 s^2)
STEP_ROWS = [
    ("CPU-bound", 32, 16, 16),  # issue 21's case: the pairing is a sizeable part of the step
    ("CPU-bound", 80, 16, 16),
    ("CPU-bound", 32, 256, 32),
    ("launch-bound", 256, 16, 16),
    ("launch-bound", 768, 16, 16),
    ("launch-bound", 256, 256, 32),
]
#: batches per loop and interleaved rounds, by batch size
STEP_LOOP = {16: (12, 2) if QUICK else (24, 24), 256: (3, 2) if QUICK else (6, 6)}


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
    res = {"B": b, "D": d, "method": method, **sleep_overlap(make_loader(b, d, N_BATCHES), method)}
    print(res, flush=True)
    return res


# -- 2. real steps ---------------------------------------------------------------------------
def conv_step(c):
    """CPU-bound: a 3-layer conv net (``c`` channels) trained with Adam on the batch, on
    torch's threads."""
    net = nn.Sequential(
        nn.Conv2d(3, c, 3, padding=1), nn.SiLU(), nn.Conv2d(c, c, 3, padding=1), nn.SiLU()
    )
    net.append(nn.Conv2d(c, 3, 3, padding=1))
    opt = torch.optim.Adam(net.parameters(), 1e-3)

    def step(x, z):
        loss = (net(x + z) - z).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()

    return step


def launch_step(layers):
    """Launch-bound: ``layers`` elementwise layers on a 8 x 32 slice (tiny ops that never go
    parallel: one core, Python and the dispatcher), then backward and an SGD update."""
    w = torch.full((layers, 32), 0.5, requires_grad=True)
    bias = torch.zeros(layers, 32, requires_grad=True)
    opt = torch.optim.SGD([w, bias], lr=1e-3)

    def step(x, z):
        h = (x + z).flatten(1)[:8, :32]
        for i in range(layers):
            h = torch.tanh(h * w[i] + bias[i])
        loss = h.square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()

    return step


STEPS = {
    "CPU-bound": (conv_step, "conv net, {} channels"),
    "launch-bound": (launch_step, "{} layers"),
}


@contextlib.contextmanager
def old_default():
    """The thread as it was before issue 21: its ops on an OpenMP team of its own."""
    saved = noisepair.prefetch.single_threaded
    noisepair.prefetch.single_threaded = contextlib.nullcontext
    try:
        yield
    finally:
        noisepair.prefetch.single_threaded = saved


def step_row(kind, size, b, side):
    """Matched / plain steady batches/s of one real step for each mode: per round, each mode's
    rate over plain's in the same round (the modes in a seeded random order), the median over
    rounds.
    The default (``prefetch="auto"``) is one loader kept across rounds, as a training run keeps
    it, iterated first until its trial has chosen."""
    n, rounds = STEP_LOOP[b]
    load = os.getloadavg()[0]  # the box is shared: each row says how busy it was
    g = torch.Generator().manual_seed(0)
    data = TensorDataset(torch.rand(n * b, 3, side, side, generator=g))
    dl = DataLoader(data, batch_size=b, shuffle=True, generator=g)
    make, label = STEPS[kind]
    step = make(size)
    pair_s: list[float] = []
    auto = MatchedNoiseLoader(dl, output="batch")

    def matched_loop(ml, record=False):
        def matched(batch, i):
            if record:  # the pairing alone, nothing beside it
                pair_s.append(ml.last_info["seconds"])
            step(batch[0], batch[1])

        return timed_loop(ml, matched, n)

    def run(mode):
        if mode == "plain":
            return timed_loop(dl, lambda batch, i: step(batch[0], torch.randn_like(batch[0])), n)
        if mode == "default":
            return matched_loop(auto)
        prefetch = 0 if mode == "prefetch=0" else 2
        with old_default() if mode == "old" else contextlib.nullcontext():
            with MatchedNoiseLoader(dl, output="batch", prefetch=prefetch) as ml:
                return matched_loop(ml, record=mode == "prefetch=0")

    modes = ["plain", "default", "prefetch=2", "prefetch=0", "old"]
    for mode in modes:  # warm up: thread pools, oneDNN's primitives, the first pairing
        run(mode)
    while auto._pacing.chosen is None:  # the default's trial, on the loop itself
        run("default")
    pair_s.clear()
    ratios = {mode: [] for mode in modes[1:]}
    plain = []
    shuffle = random.Random(0)  # a fixed order would put each mode after the same one always
    for _ in range(rounds):
        rate = {mode: run(mode)[1] for mode in shuffle.sample(modes, len(modes))}
        plain.append(rate["plain"])
        for mode in ratios:
            ratios[mode].append(rate[mode] / rate["plain"])
    res = {
        "step": f"{kind} ({label.format(size)})",
        "B": b,
        "D": 3 * side * side,
        "step_ms": 1e3 / statistics.median(plain),
        "pair_ms": statistics.median(pair_s) * 1e3,
        "chosen": "on demand" if auto._pacing.chosen == 0 else "ahead",
        **{mode: statistics.median(ratios[mode]) for mode in ratios},
        "spread": {mode: statistics.quantiles(ratios[mode], n=4)[::2] for mode in ratios},
        "load": (load + os.getloadavg()[0]) / 2,
    }
    res["pair_pct"] = 100 * res["pair_ms"] / res["step_ms"]
    print(res, flush=True)
    return res


# -- 3. mechanism ----------------------------------------------------------------------------
def tids() -> set[str]:
    return set(os.listdir("/proc/self/task"))


def thread_cpu(tid: str) -> float:
    """CPU seconds of one OS thread of this process (0 once it has exited)."""
    try:
        with open(f"/proc/self/task/{tid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except FileNotFoundError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def loader_cost(b=16, side=16, n=24, passes=20):
    """ms per batch of a whole pass with no step (a fresh pass each time, as each epoch
    starts one: thread start and end included), plain and matched, median over passes."""
    g = torch.Generator().manual_seed(0)
    dl = DataLoader(
        TensorDataset(torch.rand(n * b, 3, side, side, generator=g)),
        batch_size=b,
        shuffle=True,
        generator=g,
    )
    loaders = {
        "plain": None,
        "prefetch=0": MatchedNoiseLoader(dl, output="batch", prefetch=0),
        "prefetch=2": MatchedNoiseLoader(dl, output="batch", prefetch=2),
    }

    def one_pass(ml):
        start = time.perf_counter()
        for batch in dl if ml is None else ml:
            if ml is None:
                torch.randn_like(batch[0])
        return (time.perf_counter() - start) / n * 1e3

    times = {name: [] for name in loaders}
    for _ in range(passes + 1):  # the first pass warms up
        for name, ml in loaders.items():
            times[name].append(one_pass(ml))
    return {name: statistics.median(t[1:]) for name, t in times.items()}


def team_threads(b=256, side=32, n=6):
    """OS threads started during a matched pass besides the prefetch thread itself: the
    pairing thread's OpenMP team (old default vs now)."""
    g = torch.Generator().manual_seed(0)
    dl = DataLoader(TensorDataset(torch.rand(n * b, 3, side, side, generator=g)), batch_size=b)
    out = {}
    for name, ctx in (("old default", old_default), ("default", contextlib.nullcontext)):
        with ctx():
            before, seen, own = tids(), set(), set()
            for _ in MatchedNoiseLoader(dl, prefetch=2):
                seen |= tids()
                own |= {
                    str(t.native_id)
                    for t in threading.enumerate()
                    if t.name == "noisepair-prefetch"
                }
            out[name] = len(seen - before - own)
    return out


def idle_team_cpu(regions=60, gap_s=0.005):
    """CPU ms per parallel region that the main team's other threads burn while the main thread
    sleeps ``gap_s`` between regions (libgomp's spin-wait), alone and with a second, idle team
    alive in another thread (as the old prefetch thread had)."""
    x = torch.rand(1024, 3072)
    main = str(threading.get_native_id())

    def probe():
        x.sum(1)
        others = tids() - {main}
        before = {t: thread_cpu(t) for t in others}
        for _ in range(regions):
            x.sum(1)
            time.sleep(gap_s)
        return sum(thread_cpu(t) - before[t] for t in others) / regions * 1e3

    alone = probe()
    release, formed = threading.Event(), threading.Event()

    def second_team():
        x.sum(1)
        formed.set()
        release.wait()

    t = threading.Thread(target=second_team)
    t.start()
    formed.wait()
    time.sleep(0.2)
    with_second = probe()
    release.set()
    t.join()
    return alone, with_second


def python_work(stop):
    n = 0
    while not stop.is_set():
        for _ in range(1000):
            n += 1
    return n


def count_for(seconds):
    stop = threading.Event()
    timer = threading.Timer(seconds, stop.set)
    timer.start()
    return python_work(stop)


def paired(batches):
    """Each batch paired in the calling thread, as the loader's thread pairs it: a noise draw,
    the cost and the default assignment."""
    matcher = get_matcher("auto")
    for (x,) in batches:
        z = torch.randn_like(x)
        idx, _ = pair(x, z, matcher)
        yield x, z[idx]


def pairing_threads(b, d, reps=3):
    """Pairing ms per batch (noise draw + cost + assignment) on the calling thread's torch
    threads and inside ``single_threaded`` (as in the loader's thread)."""
    batches = [(x,) for x, _ in make_loader(b, d, 4)]

    def best(limit):
        times = []

        def work():
            with single_threaded() if limit else contextlib.nullcontext():
                for _ in range(reps):
                    start = time.perf_counter()
                    for _ in paired(batches):
                        times.append(time.perf_counter() - start)
                        start = time.perf_counter()

        t = threading.Thread(target=work)
        t.start()
        t.join()
        return min(times) * 1e3

    best(False)
    return best(False), best(True)


# -- 4. GIL per piece ------------------------------------------------------------------------
def gil_probe(fn, seconds=0.4, rounds=3):
    """Main-thread pure-Python throughput while ``fn`` loops in a thread on one core (as in the
    loader's thread), relative to alone: rounds of a window alone then a window beside it, the
    median of their ratios (on a shared machine the speed alone drifts); and ``fn``'s calls per
    second beside it."""
    ratios, calls = [], [0]

    def solver(stop):
        with single_threaded():  # as in the loader's thread: one core for it, one for main
            while not stop.is_set():
                fn()
                calls[0] += 1

    for _ in range(rounds):
        alone = count_for(seconds)
        stop = threading.Event()
        th = threading.Thread(target=solver, args=(stop,), daemon=True)
        th.start()
        time.sleep(0.05)
        ratios.append(count_for(seconds) / alone)
        stop.set()
        th.join()
    return statistics.median(ratios), calls[0] / (rounds * seconds)


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
    "plain it/s": "{sleep_plain:.2f}",
    "matched it/s": "{sleep_matched:.2f}",
    "ratio": "{sleep_ratio:.3f}",
    "ratio, whole loop": "{sleep_whole_ratio:.3f}",
}
#: the real-step table: header -> cell format over a row of step_row
STEP_COLUMNS = {
    "step": "{step}",
    "B x D": "{B} x {D}",
    "plain step ms": "{step_ms:.1f}",
    "pairing ms (prefetch=0)": "{pair_ms:.2f}",
    "pairing % of step": "{pair_pct:.1f}",
    "default": "{default:.3f} ({spread[default][0]:.2f}-{spread[default][1]:.2f})",
    "auto chose": "{chosen}",
    "prefetch=2": "{prefetch=2:.3f} ({spread[prefetch=2][0]:.2f}-{spread[prefetch=2][1]:.2f})",
    "prefetch=0": "{prefetch=0:.3f} ({spread[prefetch=0][0]:.2f}-{spread[prefetch=0][1]:.2f})",
    "old default": "{old:.3f}",
    "1-min load": "{load:.1f}",
}


def report(over, steps, mech, gil, info, seconds) -> str:
    command = f"python benchmarks/loader_overhead.py{' --quick' if QUICK else ''}"
    overlap = [[cell.format(**r) for cell in OVERLAP_COLUMNS.values()] for r in over]
    real = [[cell.format(**r) for cell in STEP_COLUMNS.values()] for r in steps]
    lines = [
        "# Loader overhead: does pairing hide behind the step, and does its thread slow it?",
        "",
        f"`{command}`, {seconds:.0f} s. {machine_line(info)} GPU: not measured (CPU loaders).",
        "",
        "## Real steps: matched / plain batches/s",
        "",
        "A torch DataLoader (shuffled TensorDataset of B images 3 x s x s, D = 3 s^2) feeds the "
        "step; plain draws `torch.randn_like` in the loop, matched is "
        "`MatchedNoiseLoader(dl, output='batch')`. CPU-bound: a 3-layer conv net trained with "
        "Adam on the batch, torch's default threads (every core busy). Launch-bound: elementwise "
        "layers (3 tiny ops each) on an 8 x 32 slice, backward, SGD: hundreds to thousands of "
        "tiny ops on one core, Python-heavy, as a GPU loop on a small model. Columns: matched / "
        "plain steady batches/s, each mode against plain in the same round (modes in a seeded "
        "random order each round), median over rounds (in brackets: the rounds' quartiles, the spread of one "
        "round on this machine) "
        f"({', '.join(f'B={b}: {r} rounds of {n} batches' for b, (n, r) in STEP_LOOP.items())}). "
        "default = `prefetch='auto'`: one loader kept across the rounds, which first ran its "
        "trial (ahead and on demand in alternating windows of its first batches; `auto chose` "
        "says what it kept); prefetch=2 = always ahead, prefetch=0 = on demand (the thread "
        "pairs only while the loop waits); in all three the thread's native work runs on one "
        "core (`noisepair.threads.single_threaded`); old default = prefetch=2 with the thread's "
        "own OpenMP team (before issue 21). `pairing ms`: median `pb.info['seconds']` of the "
        "prefetch=0 loop (nothing runs beside it). Above 1: the thread also takes the "
        "DataLoader's fetch and the noise draw off the loop. Target for the default: >= 0.97 "
        "where pairing is under 5% of the step, and never below prefetch=0. `1-min load`: the "
        "load average over the row (mean of start and end; this process adds about 2). Under "
        "outside load, OpenMP threads that spin-wait waste the time slices they get; the old "
        "default's second team makes libgomp stop spinning (more OpenMP threads than cores), "
        "which then helps, so there the old default can beat plain: only rows near 2 show a "
        "dedicated machine.",
        "",
        *table(list(STEP_COLUMNS), real),
        "",
        "## Mechanism",
        "",
        "- The loader's own ms per batch with no step, over a pass of 24 batches of 16 x 768 "
        "from a shuffled DataLoader (a new pass each time: thread start and end included; median "
        f"of 20 passes): plain {mech['cost']['plain']:.2f} (with its `randn_like`), prefetch=0 "
        f"{mech['cost']['prefetch=0']:.2f}, prefetch=2 {mech['cost']['prefetch=2']:.2f}.",
        f"- OS threads the pairing thread starts during a pass at B=256, D=3072 (its OpenMP team): "
        f"old default {mech['teams']['old default']}, default {mech['teams']['default']}.",
        "- CPU ms per parallel region burnt by the main team's other threads while the main "
        f"thread sleeps 5 ms between regions: {mech['idle'][0]:.2f} alone, "
        f"{mech['idle'][1]:.2f} with a second (idle) team alive. libgomp spin-waits between "
        "regions while a process has no more OpenMP threads than cores and sleeps at once "
        "otherwise: a second team takes the step team's fast wake-up away, besides the cores.",
        "- Pairing ms per batch (noise draw + cost + assignment, best) on torch's default threads "
        "vs on one thread:",
        "",
        *table(
            ["B x D", "default threads", "one thread", "ratio"],
            [
                [f"{b} x {d}", f"{full:.2f}", f"{one:.2f}", f"{one / full:.2f}"]
                for (b, d), (full, one) in mech["pair"].items()
            ],
        ),
        "",
        "## Overlap: a step that sleeps each batch's pairing time",
        "",
        f"{N_BATCHES} batches per loop (torch tensors from a list), best of 2 interleaved "
        "repeats. `pair ms`: median pairing time per batch (encode + noise draw + cost + "
        "assignment, `pb.info['seconds']`, measured in the prefetch thread). The step = "
        "time.sleep(that batch's own pairing time); the plain loop sleeps the same sequence. "
        "Ratio = matched batches/s / plain batches/s from the first batch on (MatchedNoiseLoader "
        "prefetch=2; target >= 0.95); whole = over the whole loop, first pairing included.",
        "",
        *table(list(OVERLAP_COLUMNS), overlap),
        "",
        "## GIL: main-thread pure-Python speed while the piece runs in a thread",
        "",
        "About 1: the piece releases the GIL (it overlaps Python work in the training loop); "
        "0.5 or below: it holds it. The piece runs in `single_threaded` as in the loader's "
        "thread: 2 cores, so a released piece and the main thread each get one (outside load "
        "lowers every row, the controls too).",
        "",
        *table(
            ["piece", "main-thread speed vs alone", "piece's calls per s"],
            [[name, f"{rel:.2f}", f"{calls:.0f}"] for name, rel, calls in gil],
        ),
        "",
    ]
    return "\n".join(lines) + "\n"


def main():
    torch.manual_seed(0)
    info = machine_info()
    start = time.perf_counter()
    steps = [step_row(*row) for row in STEP_ROWS]
    mech = {
        "cost": loader_cost(),
        "teams": team_threads(),
        "idle": idle_team_cpu(),
        "pair": {(b, d): pairing_threads(b, d) for b, d in [(16, 768), (256, 3072), (1024, 3072)]},
    }
    print(mech, flush=True)
    over = [overlap_row(*case) for case in CASES]
    gil = gil_rows()
    text = report(over, steps, mech, gil, info, time.perf_counter() - start)
    print(text)
    print(f"wrote {write_results('loader_overhead', text, quick=QUICK)}")


if __name__ == "__main__":
    main()
