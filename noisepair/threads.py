"""The pairing thread's native work on one core, set for that thread alone.

torch gives every thread that calls a parallel op its own OpenMP team of
``torch.get_num_threads()`` threads (MKL's GEMM forms one too, even for a 16 x 16 cost). The
prefetch thread's team is a second team beside the training step's: where the step keeps every
core busy, its threads take cores from the step's team, whose parallel regions then wait for a
preempted thread, and libgomp, seeing more OpenMP threads than cores, stops letting the step
team's idle threads spin-wait (each region then pays a futex wake-up). Measured in
benchmarks/results/loader_overhead.md (issue 21).

``torch.set_num_threads(1)`` in the thread would limit it, but not for that thread alone: it
also sets the count every thread started later takes, resizes torch's global pthreadpool and
clears oneDNN's primitive cache. So the two per-thread settings are set directly: the OpenMP
runtime's thread count (its ``nthreads-var``, per thread by the OpenMP standard; threadpoolctl
finds the runtimes loaded) and MKL's thread-local count inside torch (torch links MKL
statically; MKL follows OpenMP's count unless ``torch.set_num_threads`` gave it its own).

Not covered: numpy's OpenBLAS keeps one process-wide pool (its ``openblas_set_num_threads_local``
is process-wide too in the pthreads builds numpy ships), so a numpy cost's GEMM still uses all of
it (its idle threads burn next to no CPU, so it costs only while it runs).
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

from threadpoolctl import ThreadpoolController

#: torch's CPU library, where MKL's entry points are, by platform
_TORCH_CPU_LIBS = ("libtorch_cpu.so", "libtorch_cpu.dylib", "torch_cpu.dll")


@contextlib.contextmanager
def single_threaded() -> Iterator[None]:
    """Inside, the calling thread's torch ops, OpenMP regions and torch's MKL calls run on that
    thread alone; every other thread, and every thread started later, keeps its settings.
    Restored on exit. Meant for a thread that works beside a training step (the loader's
    prefetch thread), entered once at its start, after torch is imported."""
    torch = sys.modules.get("torch")
    if torch is not None:
        # torch sets a thread's count at its first parallel op, from the process-wide value
        # torch.set_num_threads stored; done now, it cannot undo the limit below later.
        torch.get_num_threads()
    mkl_local = _torch_mkl_local() if torch is not None else None
    with _openmp(torch is not None).limit(limits=1):
        previous = mkl_local(1) if mkl_local is not None else None
        try:
            yield
        finally:
            if mkl_local is not None:
                mkl_local(previous)  # 0: the thread follows MKL's global setting again


@functools.cache
def _openmp(torch_imported: bool) -> ThreadpoolController:
    """The OpenMP runtimes loaded, found once (and again once torch, which brings its own, is
    imported): finding them reads every loaded library, which takes milliseconds, and the
    producer thread of every pass enters :func:`single_threaded`."""
    return ThreadpoolController().select(user_api="openmp")


@functools.cache
def _torch_mkl_local() -> Callable[[int], int] | None:
    """MKL's ``mkl_set_num_threads_local`` inside torch's CPU library (it returns the thread's
    previous value), or None where torch has no MKL (macOS arm64, aarch64 Linux)."""
    import torch

    if not torch.backends.mkl.is_available():
        return None
    lib_dir = Path(torch.__file__).parent / "lib"
    for name in _TORCH_CPU_LIBS:
        if (lib_dir / name).exists():
            try:
                setter = ctypes.CDLL(str(lib_dir / name)).MKL_Set_Num_Threads_Local
            except (OSError, AttributeError):  # MKL linked without exporting it
                return None
            setter.argtypes, setter.restype = [ctypes.c_int], ctypes.c_int
            return setter
    return None
