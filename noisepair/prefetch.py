"""Run a generator in a background thread behind a bounded queue.

The consumer gets the items in order; an exception raised in the thread is re-raised in the
consumer with its original traceback; ``close()`` (called on garbage collection too) stops and
joins the thread. The thread never holds a reference to its owner, so dropping the owner
(an early ``break``) is enough to stop it.
"""
from __future__ import annotations

import queue
import threading
from typing import Iterator

_END = object()
_POLL = 0.05


class _Raised:
    def __init__(self, exc: BaseException):
        self.exc = exc


class Prefetcher:
    def __init__(self, generator: Iterator, depth: int, name: str = "noisepair-prefetch"):
        self._queue: queue.Queue = queue.Queue(maxsize=max(1, depth))
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=_produce, args=(generator, self._queue, self._stop), name=name, daemon=True
        )
        self._thread.start()
        self._done = False

    def __iter__(self):
        return self

    def __next__(self):
        if self._done:
            raise StopIteration
        while True:
            try:
                item = self._queue.get(timeout=_POLL)
                break
            except queue.Empty:
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

    def close(self, timeout: float = 10.0) -> None:
        self._done = True
        self._stop.set()
        while True:  # unblock a producer waiting on a full queue
            try:
                self._queue.get_nowait()
            except queue.Empty:
                break
        if self._thread is not threading.current_thread():
            self._thread.join(timeout)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def __del__(self):
        self.close(timeout=1.0)


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
