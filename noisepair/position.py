"""Where a pass over the data stands, and the ``state_dict`` that stores it.

A position is always told relative to a *match group*: the k = ``scope`` consecutive batches
that are paired together. To give a resumed run the very noise it would have seen, a resume must
pair the whole group again, so the position holds the group that the next undelivered batch
belongs to (its first batch index, the inner loader's state there, the coupling's state there)
and how many of its batches were delivered already. Group starts are multiples of the scope
within an epoch, so the same groups form in every run.

Everything in a state is plain Python (ints, strings, lists, dicts, bytes) or the inner
loader's own state, so ``torch.load(weights_only=True)`` reads a checkpoint that holds it.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass, replace
from typing import Any

# the keys of a state_dict, in one place
EPOCH, DELIVERED, SEED, SCOPE, RANK, WORLD = "epoch", "delivered", "seed", "scope", "rank", "world"
BATCH_SIZE = "batch_size"  # the size of the epoch's first batch, to catch another batch size
GROUP_AT, INNER_STATE = "inner_at", "inner_state"  # the match group's start, the loader's state
ENDED = "epoch_ended"  # the epoch's data ran out at the group's start
EPOCH_STATE = "epoch_inner_state"  # the inner loader's state that starts this epoch afresh
COUPLING = "coupling"  # the pool's or the seed table's state at the group's start


@dataclass(frozen=True)
class Checkpoint:
    """A point between two batches of an epoch: ``index`` batches come before it.

    ``inner`` restores the inner loader to this point (None: read from the epoch's start and
    skip); ``coupling`` is the coupling's marker for its state here (None: it keeps none);
    ``ended``: the epoch's data ran out here, and ``inner`` is the state that starts the next."""

    index: int = 0
    inner: Any = None
    coupling: Any = None
    ended: bool = False


@dataclass(frozen=True)
class Position:
    """``delivered`` batches of ``epoch`` reached the consumer; ``group`` is the start of the
    match group of the next batch (``group.index <= delivered``); ``epoch_start`` is the inner
    loader's state that begins this epoch afresh; ``batch_size`` is the epoch's first batch's."""

    epoch: int = 0
    delivered: int = 0
    group: Checkpoint = Checkpoint()
    epoch_start: Any = None
    batch_size: int | None = None

    @property
    def drop(self) -> int:
        """Batches of the group to pair again but not deliver again."""
        return self.delivered - self.group.index

    def afresh(self) -> Position:
        """The start of this same epoch, the coupling's state kept (a pass broken off early is
        followed by a fresh pass of its epoch)."""
        start = Checkpoint(0, self.epoch_start, self.group.coupling)
        return Position(self.epoch, 0, start, self.epoch_start)

    def at_epoch(self, epoch: int) -> Position:
        """The start of another epoch (``set_epoch``): where its data starts is the inner
        loader's own business, so no inner state goes with it."""
        return Position(epoch, 0, Checkpoint(0, None, self.group.coupling))

    def with_coupling(self, marker: Any) -> Position:
        return replace(self, group=replace(self.group, coupling=marker))


def to_state(position: Position, coupling: Any, **fields: Any) -> dict:
    """The position as a ``state_dict``; ``coupling`` is the coupling's exported state."""
    return {
        EPOCH: position.epoch,
        DELIVERED: position.delivered,
        BATCH_SIZE: position.batch_size,
        GROUP_AT: position.group.index,
        INNER_STATE: position.group.inner,
        ENDED: position.group.ended,
        EPOCH_STATE: position.epoch_start,
        COUPLING: coupling,
        **fields,
    }


def from_state(state: Any) -> Position:
    """The position a ``state_dict`` holds (its coupling state still to be restored), checked."""
    if not isinstance(state, dict):
        raise TypeError(
            f"load_state_dict needs the dict that MatchedNoiseLoader.state_dict() returned, got "
            f"{type(state).__name__}: pass checkpoint['loader'] (or whatever key you saved it under)."
        )
    missing = [k for k in (EPOCH, DELIVERED) if k not in state]
    if missing:
        raise KeyError(
            f"not a MatchedNoiseLoader state: {missing} missing (got {sorted(state)}); it may come "
            "from another loader or an older noisepair."
        )
    epoch = integer("state['epoch']", state[EPOCH], minimum=0, fix="a saved state_dict()")
    delivered = integer(
        "state['delivered']", state[DELIVERED], minimum=0, fix="a saved state_dict()"
    )
    scope = integer("state['scope']", state.get(SCOPE, 1), minimum=1, fix="a saved state_dict()")
    at = integer(
        "state['inner_at']",
        state.get(GROUP_AT, delivered - delivered % scope),
        minimum=0,
        fix="a saved state_dict()",
    )
    if at > delivered:
        raise ValueError(
            f"state says its match group starts at batch {at} after {delivered} delivered "
            "batches: it is corrupt."
        )
    size = state.get(BATCH_SIZE)
    if size is not None:
        size = integer("state['batch_size']", size, minimum=1, fix="a saved state_dict()")
    ended = bool(state.get(ENDED, False))
    if ended and at != delivered:
        raise ValueError(
            "state says its epoch ended before its last delivered batch: it is corrupt."
        )
    group = Checkpoint(at, state.get(INNER_STATE), None, ended)
    return Position(epoch, delivered, group, state.get(EPOCH_STATE), size)


def integer(name: str, value: Any, *, minimum: int, fix: str) -> int:
    """``value`` as an int, refusing floats and bools (``scope=2.5`` is a mistake, not 2)."""
    try:
        if isinstance(value, bool):
            raise TypeError
        number = operator.index(value)
    except TypeError:
        raise TypeError(f"{name} must be an integer ({fix}), got {value!r}.") from None
    if number < minimum:
        raise ValueError(f"{name} must be >= {minimum} ({fix}), got {number}.")
    return number
