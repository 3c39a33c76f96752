"""Run torch.distributed ranks for a test: each in a fresh interpreter, with a deadline.

Fresh interpreters (spawn), not forks: a forked rank inherits whatever locks the test process's
other threads (thread pools of earlier tests) held at the fork, and can wait on them forever.
"""

from __future__ import annotations

import pickle
import time
from collections.abc import Callable
from datetime import timedelta

import torch.distributed as dist
import torch.multiprocessing as mp


def spawn_ranks(
    target: Callable, args: tuple, world: int, result: Callable[[int], str], timeout_s: float = 180
) -> list:
    """Run ``target(rank, *args)`` on ``world`` ranks; each rank pickles its result to the file
    ``result(rank)``. A rank that has not ended by ``timeout_s`` fails the test (all are killed)
    instead of hanging it. Returns the results in rank order."""
    ctx = mp.start_processes(target, args=args, nprocs=world, join=False, start_method="spawn")
    deadline = time.monotonic() + timeout_s
    while not ctx.join(timeout=1):
        if time.monotonic() > deadline:
            for p in ctx.processes:
                p.kill()
            raise AssertionError(f"{target.__name__}{args} hung on {world} ranks")
    out = []
    for rank in range(world):
        with open(result(rank), "rb") as f:
            out.append(pickle.load(f))
    return out


def join_gloo(rank: int, world: int, store: str) -> None:
    """Join a gloo process group of ``world`` ranks through the file ``store``; a collective
    that waits more than 60 s for a lost rank raises instead of hanging the test."""
    dist.init_process_group(
        "gloo",
        init_method=f"file://{store}",
        rank=rank,
        world_size=world,
        timeout=timedelta(seconds=60),
    )
