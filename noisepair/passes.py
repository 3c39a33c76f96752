"""A pass: one iteration over the inner loader, and the owner of where it stands.

The pass owns its :class:`Progress`: its :class:`~noisepair.position.Position` (what
``state_dict`` reports: batches delivered, not prefetched), whether it ran to its end or was
closed, and its producer thread (:mod:`noisepair.stages` behind a
:class:`~noisepair.prefetch.Prefetcher`); it also shows the consumer each delivered batch
(accelerate's flags, the monitor, the batch form). It never calls back into the loader: the
loader keeps the progress of its last pass and reads it, like torchdata's ``StatefulDataLoader``
reads its iterator's state. The loader holds the pass itself only weakly, so that a loop that
breaks off drops it, and its thread stops.
"""

from __future__ import annotations

import collections
import time
import warnings
from dataclasses import dataclass
from typing import Any

from noisepair.backend import DeviceStreams
from noisepair.batch import with_noise
from noisepair.inner import GradientMirror, OneShot
from noisepair.position import Position
from noisepair.prefetch import Closed, Prefetcher
from noisepair.stages import Delivery, produce


class Flag:
    """A cancel flag that is a plain attribute (setting it takes no lock)."""

    up = False


@dataclass
class Progress:
    """Where a pass stands; written by the pass alone. ``producer`` is its thread's handle: a
    new pass must not share the inner loader or the coupling with a thread still running."""

    position: Position
    finished: bool = False  # ran to the end of its epoch
    closed: bool = False  # broken off (break, close(), an error)
    last_info: dict | None = None
    producer: Any = None


class Pass:
    """One pass over the inner loader, from ``start``. Dropping it (an early ``break``) stops
    its thread; ``close()`` may be called from any thread or a signal handler."""

    def __init__(
        self,
        loader: Any,
        start: Position,
        *,
        seed: int,
        rank: int,
        exchange: Any,
        cancel: Flag,
        watch: ResumeWatch | None,
    ):
        self._loader = loader  # kept alive while its pass runs, as a DataLoader's iterator does
        self.progress = Progress(start)
        self._inner = loader._inner
        self._exchange = exchange
        self._cancel = cancel
        self._watch = watch
        self._delivered = 0
        self._pulled = collections.deque() if self._inner.one_shot else None
        self._mirror = GradientMirror(self._inner)
        self._streams = DeviceStreams(loader.device)
        batches = produce(
            loader._settings,
            self._inner,
            loader._coupling,
            start,
            seed=seed,
            rank=rank,
            exchange=exchange,
            streams=self._streams,
            pulled=self._pulled,
        )
        self._producer = Prefetcher(batches, loader._pacing, source=self._inner.name)
        self.progress.producer = self._producer

    def __iter__(self):
        return self

    def __next__(self) -> Any:
        progress = self.progress
        if progress.finished or progress.closed:
            raise StopIteration
        if self._watch is not None:
            self._watch.requested()
        try:
            item = next(self._producer)
        except Closed:
            self.close()
            raise
        except BaseException:
            self.close()
            raise
        if not isinstance(item, Delivery):  # the End: the next pass starts the next epoch
            progress.position = item.position
            progress.finished = True
            self._producer.close()
            self._release()
            self._inner.set_epoch(item.position.epoch)  # its sampler hears of the next epoch
            if self._watch is not None:
                self._watch.pass_ended(self._delivered)
            raise StopIteration
        pb = item.pb
        self._streams.hand_over(item.ready, pb)
        progress.position = item.after
        self._delivered += 1
        if self._pulled is not None:  # keep only the batches from the group's start on
            while self._pulled and self._pulled[0][0] < item.after.group.index:
                self._pulled.popleft()
        self._mirror.show(item.flags)
        progress.last_info = pb.info
        loader = self._loader
        if loader.monitor is not None:
            loader.monitor.update(pb)
        if self._watch is not None:
            self._watch.delivered()
        if loader.output == "batch":
            return with_noise(pb.batch, loader.key, pb.sample, pb.noise, loader.noise_key)
        return pb

    def close(self) -> None:
        """Stop the thread; a one-shot loader gets back the batches of the group in hand and
        those pulled after it, for the next pass to pair again."""
        progress = self.progress
        if progress.closed or progress.finished:
            return
        progress.closed = True
        self._cancel.up = True  # an across-rank wait in the thread gives up at once
        self._producer.close()
        self._release()
        if isinstance(self._inner, OneShot):
            self._inner.hand_back(
                progress.position.epoch,
                progress.position.group.index,
                self._pulled,
                self._inner.unread,
            )

    def _release(self) -> None:
        self._mirror.hide()
        exchange, self._exchange = self._exchange, None
        if exchange is not None:
            exchange.close()

    def __del__(self):
        try:
            self.close()
        except Exception:  # noqa: BLE001 - at interpreter exit there is nobody to tell
            pass


class ResumeWatch:
    """Warns when a loop skips the batches a restored loader already skipped.

    diffusers' scripts skip the first ``resume_step`` batches themselves (``step < resume_step:
    continue``). A loader restored at batch d has skipped them already, so with both the loop
    races through the next d batches and they go untrained. The watch times the loop body after
    each delivery following a resume: when the first m = min(d, batches left in the resumed
    pass) take next to no time and the one after them (in this pass or the next) is a real step,
    it warns. It spans passes because a resume near an epoch's end leaves fewer than d batches.
    """

    FACTOR = 20.0

    def __init__(self, resumed_at: int):
        self.d = resumed_at
        self.gaps: list[float] = []
        self.left: int | None = None  # deliveries of the resumed pass, known when it ends
        self._t: float | None = None

    def delivered(self) -> None:
        if self.d:
            self._t = time.perf_counter()

    def requested(self) -> None:
        if not self.d or self._t is None:
            return
        self.gaps.append(time.perf_counter() - self._t)
        self._t = None
        m = self.d if self.left is None else min(self.d, self.left)
        if m == 0 or len(self.gaps) <= m:
            return
        skipped, step = max(self.gaps[:m]), self.gaps[m]
        if skipped * self.FACTOR < step:
            warnings.warn(
                f"the loader resumed at batch {self.d} of its epoch and the loop then went "
                f"through the next {m} batches without working on them: it looks like the "
                "script skips the batches trained before the checkpoint itself, which the "
                "restored loader already skipped (those batches go untrained). Delete the "
                "script's skip, or do not restore the loader and call set_epoch instead "
                "(README: 'In your training script').",
                stacklevel=3,
            )
        self.d = 0

    def pass_ended(self, delivered: int) -> None:
        if self.left is None:
            self.left = delivered
        self._t = None
