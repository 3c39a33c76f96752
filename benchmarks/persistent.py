"""What persistent=k (LOOM-CFM's seeds per data point) costs: memory, time per step, bytes.

1. Memory: the seed table of N data points x k = 6 seeds (N = 10^6, 10^7), measured as the
   process's resident memory before and after it is made and used, and the size of its
   ``state_dict`` (the checkpoint's share).
2. Time per step: pairing a batch through the loader's coupling with ``persistent=6`` against
   per-batch exact matching of fresh draws (``pb.info["seconds"]``: draw or regenerate, cost,
   solve, update), B = 128 and 256, D = 64 and 3072, numpy and torch, one thread, medians.
3. Bytes per step across ranks: two gloo ranks matching per rank, each applying both ranks'
   seed updates; the exchange's own count of bytes it sent per step.

``python benchmarks/persistent.py [--quick]`` -> benchmarks/results/persistent.md
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

import numpy as np
import torch
from harness import machine_info, machine_line, table, write_results

from noisepair import MatchedNoiseLoader
from noisepair.couplings import Group
from noisepair.matchers import get_matcher
from noisepair.persistent import PersistentMatching, SeedTable

K = 6


def rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def memory(rows: int) -> tuple[float, float]:
    """Resident MiB the table adds, and its state_dict's MiB."""
    before = rss_mib()
    table = SeedTable(K, seed=0, rows=rows)
    table.seeds[rows // 2, 0] ^= 1  # touched, as a run would
    grown = rss_mib() - before
    state = table.state_dict()
    return grown, len(state["seeds"]) / 2**20


def step_times(b: int, d: int, framework: str, steps: int) -> tuple[float, float]:
    """Median ms per batch: persistent=6 vs per-batch matching, the same batches."""
    rng = np.random.default_rng(0)
    data = rng.normal(size=(b * steps, d)).astype(np.float32)
    if framework == "torch":
        data = torch.from_numpy(data)
    out = []
    for persistent in (K, None):
        batches = [
            {"x": data[i * b : (i + 1) * b], "idx": np.arange(i * b, (i + 1) * b)}
            for i in range(steps)
        ]
        loader = MatchedNoiseLoader(
            batches, key="x", seed=0, persistent=persistent, index_key="idx", prefetch=0
        )
        out.append(1000 * statistics.median(pb.info["seconds"] for pb in loader))
    return out[0], out[1]


def exchange_bytes(folder: str, b: int, steps: int) -> list[float]:
    import torch.multiprocessing as mp

    ctx = mp.start_processes(
        _rank, args=(folder, b, steps), nprocs=2, join=True, start_method="spawn"
    )
    del ctx
    return [float(open(os.path.join(folder, f"bytes-{r}")).read()) for r in range(2)]


def _rank(rank: int, folder: str, b: int, steps: int) -> None:
    import torch.distributed as dist

    from noisepair.distributed import RankExchange

    dist.init_process_group("gloo", init_method=f"file://{folder}/store", rank=rank, world_size=2)
    exchange = RankExchange(timeout=60)
    coupling = PersistentMatching(K, get_matcher("hungarian"), "sqeuclidean", "float32", 0, 4)
    rng = np.random.default_rng(rank)
    for step in range(steps):
        x = rng.normal(size=(b, 64)).astype(np.float32)
        ids = np.arange(b) + (rank * steps + step) * b
        coupling.pair(x, [b], None, Group(0, rank, 0, step, exchange, ids))
    with open(os.path.join(folder, f"bytes-{rank}"), "w") as f:
        f.write(str(exchange.bytes_sent / steps))
    exchange.close()
    dist.destroy_process_group()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)
    info = machine_info()
    sizes = (10**4, 10**5) if args.quick else (10**6, 10**7)
    steps = 5 if args.quick else 20
    mem_rows = [
        (f"{n:,}", f"{grown:.0f}", f"{saved:.0f}") for n in sizes for grown, saved in [memory(n)]
    ]
    time_rows = []
    for framework in ("numpy", "torch"):
        for b in (128, 256):
            for d in (64, 3072):
                p, m = step_times(b, d, framework, steps)
                time_rows.append((framework, b, d, f"{p:.1f}", f"{m:.1f}", f"{p / m:.2f}"))
    with tempfile.TemporaryDirectory() as folder:
        sent = exchange_bytes(folder, 256, steps)
    lines = [
        "# persistent=k: memory, time per step, bytes across ranks",
        "",
        f"`python benchmarks/persistent.py{' --quick' if args.quick else ''}`, k = {K}.",
        "",
        "## Memory of the seed table",
        "",
        *table(["data points N", "resident MiB added", "state_dict MiB"], mem_rows),
        "",
        "N x k 32-bit seeds and nothing else: no noise vector is held.",
        "",
        "## Pairing time per batch (median ms, one thread)",
        "",
        *table(
            ["framework", "B", "D", "persistent=6", "per-batch exact", "ratio"],
            time_rows,
        ),
        "",
        "Both include the cost and the exact solve; persistent regenerates each item's noise "
        "from its seed (one generator per item) where per-batch draws one block, and updates "
        "the table.",
        "",
        "## Bytes per step across two ranks (B = 256 per rank, matching per rank)",
        "",
        *table(["rank", "bytes sent per step"], [(r, f"{s:,.0f}") for r, s in enumerate(sent)]),
        "",
        "Per step every rank sends its step header and its (identity, slot, seed) updates, "
        "pickled: about 14 bytes per item plus framing, to each other rank.",
        "",
        machine_line(info),
        "",
    ]
    text = "\n".join(lines)
    print(text)
    write_results("persistent", text, quick=args.quick)


if __name__ == "__main__":
    start = time.perf_counter()
    main()
    print(f"{time.perf_counter() - start:.0f} s")
