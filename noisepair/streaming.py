"""Faults in streamed data: a webdataset handler that counts what it skips.

webdataset reports a corrupt sample or an unreadable / truncated shard to the ``handler`` given
to ``WebDataset(..., handler=)``, ``.decode(handler=)``, ``.map(handler=)`` and
``.to_tuple(handler=)``: ``wds.reraise_exception`` (the default) stops the run,
``wds.warn_and_continue`` warns and goes on. :class:`SkipCounter` has exactly these semantics
and also counts the faults it let pass, across DataLoader worker processes (a shared counter),
so that ``MatchedNoiseLoader(..., skip_counter=counter).skipped`` can report them::

    faults = SkipCounter("warn")                       # or "raise"
    ds = wds.WebDataset(urls, handler=faults, ...).decode(handler=faults)...
    loader = MatchedNoiseLoader(wds.WebLoader(ds, batch_size=None, num_workers=4),
                                skip_counter=faults)
    ...; print(loader.skipped)

What a count means: a corrupt member (bad .npy/.jpg bytes, a missing field) is one sample; a
truncated or unreadable shard is one fault that drops the rest of that shard (webdataset cannot
tell how many samples it held). The count is per process (per rank): sum it over ranks with an
all_reduce when you log it.
"""

from __future__ import annotations

import multiprocessing
import warnings


class SkipCounter:
    """A webdataset ``handler``: ``"raise"`` (re-raise, stop) or ``"warn"`` (warn, count, go on)."""

    def __init__(self, action: str = "warn", *, context=None):
        if action not in ("raise", "warn", "ignore"):
            raise ValueError(f"action must be 'raise', 'warn' or 'ignore', got {action!r}.")
        self.action = action
        ctx = context or multiprocessing.get_context()
        self._count = ctx.Value("q", 0)  # shared with forked/spawned DataLoader workers

    def __call__(self, exn: BaseException) -> bool:
        if self.action == "raise":
            raise exn
        with self._count.get_lock():
            self._count.value += 1
        if self.action == "warn":
            warnings.warn(f"noisepair: skipped a faulty sample or shard: {exn!r}", stacklevel=2)
        return True  # webdataset: go on with the next sample / shard

    @property
    def count(self) -> int:
        return int(self._count.value)

    def reset(self) -> None:
        with self._count.get_lock():
            self._count.value = 0

    def __repr__(self) -> str:
        return f"SkipCounter({self.action!r}, count={self.count})"


def set_webdataset_epoch(obj, epoch: int, _depth: int = 0) -> int:
    """Make every ``wds.detshuffle`` stage inside ``obj`` shuffle for ``epoch``; returns how many.

    webdataset's detshuffle seeds itself with ``seed + epoch`` but counts epochs itself, per
    process: DataLoader workers get a fresh copy each pass (count restarts), and a resumed run
    starts from 0. ``MatchedNoiseLoader`` calls this at every pass with its own epoch, so the
    shard and sample order of epoch e is the same in every run and after a resume (with
    ``persistent_workers=False``, the default: persistent workers keep their own copies).
    """
    if _depth > 8 or obj is None:
        return 0
    try:
        from webdataset.filters import detshuffle
    except ImportError:  # webdataset not installed: nothing to do
        return 0
    if isinstance(obj, detshuffle):
        obj.epoch = int(epoch) - 1  # run() adds one before seeding
        return 1
    found = 0
    for stage in getattr(obj, "pipeline", None) or ():
        found += set_webdataset_epoch(stage, epoch, _depth + 1)
    dataset = getattr(obj, "dataset", None)  # a torch DataLoader inside a WebLoader
    if dataset is not None and dataset is not obj:
        found += set_webdataset_epoch(dataset, epoch, _depth + 1)
    return found
