"""Run a generator in a background thread, at most ``pacing.depth`` items ahead of its consumer.

The producer only works when it holds a credit: each time the consumer asks for an item it hands
over enough for ``depth`` items beyond the one it waits for, so depth 0 means on demand (the
thread works only while the consumer waits: nothing overlaps the training step) and depth k lets
it pair k batches ahead. The depth may change between items (:mod:`noisepair.pacing` measures
which is faster); items already made are delivered first. The consumer never runs the wrapped
loader itself, so it can always be woken.

The consumer gets the items in order; an exception raised in the thread is re-raised in the
consumer with its original traceback. ``close()`` may be called from anywhere: the consumer's
thread, another thread (a watchdog), a signal handler, garbage collection, interpreter exit
(before Python tears the threads down: a daemon thread still inside a torch DataLoader at that
point aborts the process). It sets a flag, hands the thread one more credit so that a thread
waiting for one sees the flag at once, and waits for it at most ``JOIN_S``: a consumer waiting
for an item sees the flag within ``POLL_S`` and raises :class:`Closed`, and a thread blocked
inside the wrapped loader (a hung read) is abandoned, with a warning, rather than hanging the
training loop or its Ctrl-C. No lock is taken on the way (credits travel on a
``queue.SimpleQueue``, whose ``put`` is reentrant), so a signal handler that interrupts the
consumer cannot deadlock with it. The thread never holds a reference to its owner, so dropping
the owner (an early ``break``) is enough to stop it. Its native work runs on one core
(:func:`noisepair.threads.single_threaded`): a second OpenMP team beside the training step's
would take cores from it, also while on demand.
"""

from __future__ import annotations

import atexit
import queue
import threading
import time
import warnings
import weakref
from collections.abc import Iterator

from noisepair.pacing import Fixed, Trial
from noisepair.threads import single_threaded

POLL_S = 0.05
JOIN_S = 1.0
_live: weakref.WeakSet = weakref.WeakSet()


class Closed(RuntimeError):
    """The loader was closed while the training loop waited for its next batch."""


class _End:
    pass


class _Raised:
    def __init__(self, exc: BaseException):
        self.exc = exc


class _Flag:
    """A stop flag that is a plain attribute: setting it takes no lock (signal-safe)."""

    up = False


class Prefetcher:
    _Empty = queue.Empty  # kept here: module globals may be gone when __del__ runs at exit

    def __init__(
        self,
        generator: Iterator,
        pacing: int | Fixed | Trial,
        source: str = "loader",
        name: str = "noisepair-prefetch",
    ):
        self._pacing = Fixed(pacing) if isinstance(pacing, int) else pacing
        self._pacing.start()
        self._queue: queue.Queue = queue.Queue()  # not SimpleQueue: see _produce
        self._credits: queue.SimpleQueue = queue.SimpleQueue()  # a token per item to make
        for _ in range(self._pacing.depth):
            self._credits.put(None)
        self._ahead = self._pacing.depth  # credits handed over, less items received
        self._stop = _Flag()
        self._source = source
        self._thread = threading.Thread(
            target=_produce,
            args=(generator, self._queue, self._credits, self._stop),
            name=name,
            daemon=True,
        )
        self._done = False
        self._thread.start()
        _live.add(self)

    def __iter__(self):
        return self

    def __next__(self):
        if self._done:
            raise StopIteration
        more = self._pacing.depth + 1 - self._ahead  # the item asked for, and depth beyond it
        for _ in range(more):
            self._credits.put(None)
            self._ahead += 1
        while True:
            if self._stop.up:
                self._done = True
                raise Closed(
                    f"the loader was closed while the training loop waited for its next batch "
                    f"(the wrapped {self._source} had not delivered it yet)."
                )
            try:
                item = self._queue.get(timeout=POLL_S)
                break
            except self._Empty:
                continue
        if isinstance(item, _End):
            self._done = True
            raise StopIteration
        if isinstance(item, _Raised):
            self._done = True
            raise item.exc
        self._ahead -= 1
        self._pacing.delivered(time.perf_counter())
        return item

    def close(self) -> None:
        """Stop the thread; wait for it at most ``JOIN_S`` (then abandon it, with a warning)."""
        if self._stop.up:
            return
        self._stop.up = True
        self._credits.put(None)  # wakes a thread waiting for a credit at once
        if self._thread is threading.current_thread():
            return
        self._thread.join(JOIN_S)
        if self._thread.is_alive():
            warnings.warn(
                f"noisepair: the prefetch thread is still blocked inside the wrapped {self._source} "
                f"after {JOIN_S:g} s (a hung read?); it is abandoned as a daemon thread. Batches it "
                "had not delivered are lost.",
                RuntimeWarning,
                stacklevel=2,
            )

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the thread has ended (after ``close``: it stops at its next item), at most
        ``timeout`` seconds; True when it has."""
        if self._thread is not threading.current_thread():
            self._thread.join(timeout)
        return not self._thread.is_alive()

    def __del__(self):
        try:
            self.close()
        except Exception:  # noqa: BLE001 - at interpreter exit there is nobody to tell
            pass


@atexit.register
def _close_all() -> None:
    for prefetcher in list(_live):
        prefetcher.close()


# queue.Queue, not SimpleQueue: in CPython 3.11 a SimpleQueue.get(timeout=...) that a signal
# handler outlasts (a SIGTERM handler that closes the loader waits up to JOIN_S) then blocks
# forever, so the consumer would never see the stop flag.
def _produce(
    generator: Iterator,
    q: queue.Queue,
    credits: queue.SimpleQueue,
    stop: _Flag,
) -> None:
    try:
        with single_threaded():
            while True:
                credits.get()
                if stop.up:
                    return
                try:
                    item = next(generator)
                except StopIteration:
                    q.put(_End())
                    return
                q.put(item)
    except BaseException as exc:  # handed to the consumer, who re-raises it
        q.put(_Raised(exc))
    finally:
        close = getattr(generator, "close", None)
        if close is not None:
            close()
