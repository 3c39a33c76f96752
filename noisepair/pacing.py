"""How far ahead of the training loop the prefetch thread pairs.

Pairing ahead hides it behind the step when the step leaves a core free (a GPU step, a
launch-bound loop). When the step keeps every core busy, work beside it takes cores from the
step's threads (and their barriers wait for the one preempted), so pairing on demand, only while
the loop waits, is faster. Which holds depends on the step, not on the data, so the default
measures it: after a warm-up it alternates short windows ahead and on demand, compares the
loop's median period in each mode (a median: a shared machine's stalls are rare and long), and
keeps the faster. Ahead must win by ``MARGIN``: it works beside the step, which a CPU-bound step
pays for, so it is kept only where the trial's few batches show clearly that hiding the pairing
pays more; within the margin on demand is as fast, and never slower than pairing inline.
Batches and noise are the same either way.
"""

from __future__ import annotations

import statistics

#: batches paired ahead when pairing ahead
AHEAD = 2
#: the fraction by which pairing ahead must make the median period shorter to be kept
MARGIN = 0.02


class Fixed:
    """A depth the user chose: ``prefetch=k``."""

    def __init__(self, depth: int):
        self.depth = depth

    def start(self) -> None:
        pass

    def delivered(self, now: float) -> None:
        pass


class Trial:
    """``prefetch="auto"``: ahead or on demand, whichever the loop runs faster with, measured
    on the loop itself and kept for the loader's later passes (its step does not change)."""

    warmup = 4  # periods skipped first: thread pools, compilation, the first pairing
    window = 4  # periods per measured window
    rounds = 3  # windows per mode, alternating
    settle = AHEAD  # periods skipped after a switch: batches already paired ahead drain first

    def __init__(self):
        self.depth = AHEAD
        self.chosen: int | None = None
        self.periods: dict[int, list[float]] = {AHEAD: [], 0: []}
        self._skip = self.warmup
        self._window: list[float] = []
        self._last: float | None = None

    def start(self) -> None:
        """A new pass: the time since the last pass's batch is not a step. A window goes on
        across passes, so that epochs shorter than a window still decide."""
        self._last = None

    def delivered(self, now: float) -> None:
        """The loop took a batch at ``now``; the time since the one before is its period."""
        last, self._last = self._last, now
        if self.chosen is not None or last is None:
            return
        if self._skip:
            self._skip -= 1
            return
        self._window.append(now - last)
        if len(self._window) < self.window:
            return
        self.periods[self.depth].extend(self._window)
        self._window.clear()
        if len(self.periods[0]) == self.rounds * self.window:
            ahead, on_demand = (statistics.median(self.periods[d]) for d in (AHEAD, 0))
            self.chosen = self.depth = AHEAD if ahead < on_demand * (1 - MARGIN) else 0
        else:
            self.depth = 0 if self.depth == AHEAD else AHEAD
            self._skip = self.settle


def pacing(prefetch: int | str) -> Fixed | Trial:
    """The pacing for a loader's ``prefetch`` option."""
    return Trial() if prefetch == "auto" else Fixed(prefetch)
