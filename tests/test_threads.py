"""The prefetch thread's native work runs on one core, set for that thread alone."""

import contextlib
import json
import os
import subprocess
import sys
import textwrap
import threading

import numpy as np
import pytest
import torch
from threadpoolctl import threadpool_info
from torch.utils.data import DataLoader, TensorDataset

import noisepair.prefetch
from noisepair import MatchedNoiseLoader
from noisepair.threads import single_threaded


def settings() -> dict:
    """What the calling thread's native work would use: torch's count and every thread pool
    threadpoolctl sees (OpenMP runtimes per thread, BLAS pools)."""
    count = torch.get_num_threads()  # first: torch sets a thread's OpenMP count on first use
    pools = {f"{i['user_api']}:{i['filepath']}": i["num_threads"] for i in threadpool_info()}
    return {"torch": count, **pools}


def in_new_thread(fn):
    out = []
    t = threading.Thread(target=lambda: out.append(fn()))
    t.start()
    t.join()
    return out[0]


def test_only_the_calling_thread_is_limited_and_only_while_inside():
    main, new = settings(), in_new_thread(settings)  # a new thread's may differ from main's
    inside, started_meanwhile, after = {}, {}, {}
    entered, release = threading.Event(), threading.Event()

    def worker():
        with single_threaded():
            inside.update(settings())
            entered.set()
            release.wait(10)
        after.update(settings())

    t = threading.Thread(target=worker)
    t.start()
    assert entered.wait(10)
    try:
        assert inside["torch"] == 1
        assert all(n == 1 for k, n in inside.items() if k.startswith("openmp:"))
        assert settings() == main  # the main thread, while the worker is limited
        started_meanwhile.update(in_new_thread(settings))
    finally:
        release.set()
        t.join()
    assert started_meanwhile == new  # a thread started meanwhile takes the usual count
    assert after == new  # restored on exit
    assert in_new_thread(settings) == new  # and threads started later too


def torch_batches(n=6, b=64):
    g = torch.Generator().manual_seed(0)
    return DataLoader(TensorDataset(torch.rand(n * b, 3, 16, 16, generator=g)), batch_size=b)


@pytest.mark.parametrize("prefetch", [0, 2])
def test_the_loaders_pairing_thread_is_limited_and_the_callers_are_not(prefetch):
    """Ahead of the step (prefetch=2) or on demand (prefetch=0), the pairing runs in the
    loader's thread on one core; the caller's settings never change."""
    seen: list[tuple[str, int]] = []

    def encode(x):  # runs where the pairing runs
        seen.append((threading.current_thread().name, torch.get_num_threads()))
        return x

    main, new = settings(), in_new_thread(settings)
    during = []
    for _ in MatchedNoiseLoader(torch_batches(), encode=encode, prefetch=prefetch, seed=0):
        during.append(settings())
    assert len(seen) == 6 and {name for name, _ in seen} == {"noisepair-prefetch"}
    assert {count for _, count in seen} == {1}
    assert all(s == main for s in during)
    assert settings() == main
    assert in_new_thread(settings) == new


@pytest.mark.parametrize("framework", ["torch", "numpy"])
def test_the_limit_changes_no_result(monkeypatch, framework):
    def noise(loader):
        return [np.asarray(pb.noise).copy() for pb in loader]

    batches = torch_batches(n=4, b=128)
    if framework == "numpy":
        batches = [x.numpy() for (x,) in batches]
    limited = noise(MatchedNoiseLoader(batches, prefetch=2, seed=3))
    inline = noise(MatchedNoiseLoader(batches, prefetch=0, seed=3))
    monkeypatch.setattr(noisepair.prefetch, "single_threaded", contextlib.nullcontext)
    unlimited = noise(MatchedNoiseLoader(batches, prefetch=2, seed=3))
    for a, b, c in zip(limited, inline, unlimited):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(a, c)


TEAM_SCRIPT = textwrap.dedent(
    """
    import contextlib, json, os, sys, threading
    from noisepair.threads import single_threaded
    if sys.argv[1:] == ["late"]:  # a numpy-only pass ran before the script imported torch
        with single_threaded():
            pass
    import torch
    x = torch.rand(512, 1024)
    x @ x.T  # the main thread's team
    def tids():
        return set(os.listdir("/proc/self/task"))
    def new_threads(limit):  # OS threads a thread's first parallel ops start
        out = []
        def work():
            with single_threaded() if limit else contextlib.nullcontext():
                before = tids()
                torch.addmm(x.pow(2).sum(1)[None], x, x.T, alpha=-2.0)  # MKL's GEMM, torch's ops
                x[torch.randperm(512)]
                out.append(len(tids() - before))
        t = threading.Thread(target=work)
        t.start()
        t.join()
        return out[0]
    result = {"default": [new_threads(False), new_threads(True)]}
    torch.set_num_threads(torch.get_num_threads())  # as a script may: torch then hands this
    result["user-set"] = [new_threads(False), new_threads(True)]  # count to every new thread
    print(json.dumps(result))
    """
)


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="counts threads through /proc")
@pytest.mark.parametrize("torch_import", ["first", "late"])
def test_the_limited_thread_forms_no_openmp_team(torch_import):
    """A thread's first parallel op starts its own OpenMP team (a second team beside the
    step's); limited, it starts none, also after the script called torch.set_num_threads (torch
    then gives MKL a per-thread count of its own, which the limit must override too), and also
    when the limit was first used before torch (and its OpenMP runtime) was imported."""
    if os.cpu_count() < 2:
        pytest.skip("one core: torch forms no team")
    proc = subprocess.run(
        [sys.executable, "-c", TEAM_SCRIPT, torch_import],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    for case, (unlimited, limited) in json.loads(proc.stdout).items():
        assert unlimited >= 1, case  # the control: without the limit a team forms
        assert limited == 0, case
