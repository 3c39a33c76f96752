"""What every benchmark in this folder shares: data, the machine, timing, tables, results files.

A benchmark is a script (``python benchmarks/NAME.py``, from any directory), so this folder is
on its import path and ``from harness import ...`` works. The API:

- ``make_data(b, d, seed=0) -> (x, z)``: float32 numpy batches like the baselines' (8 gaussians
  at D=2, noisy "prototype images" in [-1, 1] above) and their N(0, I) noise.
- ``machine_info() -> dict``: Python, library versions, CPU, threads, GPU and the 1-min load
  average at the start; ``machine_line(info)`` renders it for a results file, with the load
  average at the end (the machine may be shared: only ratios within one run mean anything).
- ``best_times(calls, first=None) -> {name: seconds}``: the fastest per-call time of each
  callable over ``ROUNDS`` interleaved rounds (the machine only ever adds time, and load drift
  hits every call of a round alike).
- ``table(header, rows) -> list of lines``: a markdown table; ``ratio(a, b)`` a cell for a/b.
- ``write_results(name, text, quick=False) -> Path``: benchmarks/results/NAME.md (or
  NAME_quick.md, which git ignores: a quick run is a smoke test, not a result).
"""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Callable, Iterable, Sequence
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"
ROUNDS = 5  # interleaved timing rounds
ROUND_S = 0.1  # each round of a call repeats it for about this long ...
MAX_REPS = 30  # ... at most this often
SLOW_S = 2.0  # a call slower than this is timed twice in all (its first call and one more)
PACKAGES = ("scipy", "pot", "lapjv", "numba", "torchcfm", "webdataset")


def make_data(b: int, d: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The baselines' synthetic data: 8 gaussians at D=2, 8 noisy "prototype images" in [-1, 1]
    above; noise N(0, I). float32, a function of (seed, b, d) only."""
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
    """Python, numpy, torch (and its threads, GPU), CPU, cores, PACKAGES' versions, load."""
    info = {"python": platform.python_version(), "numpy": np.__version__}
    try:
        import torch
    except ImportError:
        info["torch"] = None
    else:
        info.update(torch=torch.__version__, torch_threads=torch.get_num_threads())
    info.update(nproc=os.cpu_count(), cpu=_cpu_name(), gpu=_gpu_name())
    for name in PACKAGES:
        try:
            info[name] = version(name)
        except PackageNotFoundError:
            info[name] = None
    info["loadavg_1min"] = round(os.getloadavg()[0], 2)
    return info


def machine_line(info: dict) -> str:
    """``info`` for a results file, with the load average now (the end of the run)."""
    shown = {key: value for key, value in info.items() if key != "loadavg_1min"}
    end = round(os.getloadavg()[0], 2)
    return (
        f"Machine: `{shown}`. 1-min load average {info['loadavg_1min']} at the start, {end} at "
        "the end: the machine may be shared, so compare within this run."
    )


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def _gpu_name() -> str | None:
    try:
        import torch
    except ImportError:
        return None
    return torch.cuda.get_device_name() if torch.cuda.is_available() else None


def best_times(
    calls: dict[str, Callable[[], object]], first: dict[str, float] | None = None
) -> dict[str, float]:
    """The fastest per-call time of each callable over ROUNDS interleaved rounds.

    ``first`` holds each call's first (warm-up) time when the caller made that call itself
    (for its result); otherwise each is called once here. A round repeats a call for about
    ROUND_S, so that a fast call is timed above the clock's resolution; a call over SLOW_S is
    timed once more only, its first call counting as the other sample.
    """
    if first is None:
        first = {}
        for name, fn in calls.items():
            t0 = time.perf_counter()
            fn()
            first[name] = time.perf_counter() - t0
    samples = {name: [first[name]] if first[name] >= SLOW_S else [] for name in calls}
    for r in range(ROUNDS):
        for name, fn in calls.items():
            if first[name] >= SLOW_S and r > 0:
                continue
            reps = int(min(MAX_REPS, max(1, ROUND_S / max(first[name], 1e-6))))
            t0 = time.perf_counter()
            for _ in range(reps):
                fn()
            samples[name].append((time.perf_counter() - t0) / reps)
    return {name: min(times) for name, times in samples.items()}


def ratio(a: float | None, b: float | None, digits: int = 3) -> str:
    """``a / b`` for a table cell; a dash where either is missing (a skipped method)."""
    return "–" if a is None or b is None or b == 0 else f"{a / b:.{digits}f}"


def table(header: Sequence[str], rows: Iterable[Sequence[object]]) -> list[str]:
    """A markdown table's lines."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return lines


def write_results(name: str, text: str, quick: bool = False) -> Path:
    """Write ``text`` to benchmarks/results/NAME.md (NAME_quick.md for a quick run)."""
    path = RESULTS / f"{name}{'_quick' if quick else ''}.md"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path
