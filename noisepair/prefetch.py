"""Run a generator in a background thread behind a bounded queue.

The consumer gets the items in order; an exception raised in the thread is re-raised in the
consumer with its original traceback. ``close()`` (called on garbage collection too, and for
every live prefetcher at interpreter exit, before Python tears down the threads: a daemon thread
still inside a torch DataLoader at that point aborts the process) stops the thread and waits for
it at most ``JOIN_S``: a thread blocked inside the wrapped loader (a hung read) is abandoned, with
a warning, rather than hanging the training loop or its Ctrl-C. The thread never holds a
reference to its owner, so dropping the owner (an early ``break``) is enough to stop it.
"""

from __future__ import annotations

import atexit
import queue
import threading
import warnings
import weakref
from collections.abc import Iterator

_END = object()
_POLL = 0.05
JOIN_S = 1.0
_live: weakref.WeakSet = weakref.WeakSet()


class _Raised:
    def __init__(self, exc: BaseException):
        self.exc = exc


class Prefetcher:
    _Empty = queue.Empty  # kept here: module globals may be gone when __del__ runs at exit

    def __init__(
        self,
        generator: Iterator,
        depth: int,
        source: str = "loader",
        name: str = "noisepair-prefetch",
    ):
        self._queue: queue.Queue = queue.Queue(maxsize=max(1, depth))
        self._stop = threading.Event()
        self._source = source
        self._thread = threading.Thread(
            target=_produce, args=(generator, self._queue, self._stop), name=name, daemon=True
        )
        self._done = False
        self._closed = False
        self._thread.start()
        _live.add(self)

    def __iter__(self):
        return self

    def __next__(self):
        if self._done:
            raise StopIteration
        while True:
            try:
                item = self._queue.get(timeout=_POLL)
                break
            except self._Empty:
                if not self._thread.is_alive() and self._queue.empty():
                    self._done = True
                    raise RuntimeError("the prefetch thread stopped without a result") from None
        if item is _END:
            self.close()
            raise StopIteration
        if isinstance(item, _Raised):
            self.close()
            raise item.exc
        return item

    def close(self) -> None:
        """Stop the thread; wait for it at most ``JOIN_S`` (then abandon it, with a warning)."""
        self._done = True
        if self._closed:
            return
        self._closed = True
        self._stop.set()
        while True:  # unblock a producer waiting on a full queue
            try:
                self._queue.get_nowait()
            except self._Empty:
                break
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

    def wait(self) -> None:
        """Block until the thread has ended (after ``close``: it stops at its next batch)."""
        if self._thread is not threading.current_thread():
            self._thread.join()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def __del__(self):
        try:
            self.close()
        except Exception:  # noqa: BLE001 - at interpreter exit there is nobody to tell
            pass


@atexit.register
def _close_all() -> None:
    for prefetcher in list(_live):
        prefetcher.close()


def _produce(generator: Iterator, q: queue.Queue, stop: threading.Event) -> None:
    def put(item) -> bool:
        while not stop.is_set():
            try:
                q.put(item, timeout=_POLL)
                return True
            except queue.Full:
                continue
        return False

    try:
        for item in generator:
            if not put(item):
                return
        put(_END)
    except BaseException as exc:  # handed to the consumer, who re-raises it
        put(_Raised(exc))
    finally:
        close = getattr(generator, "close", None)
        if close is not None:
            close()
