"""LOOM-CFM's persistent coupling: every data point keeps k noise seeds, and the seeds move.

Davtyan et al. (ICLR 2025, araachie/loom-cfm): each step, every item of the batch picks one of
its k seeds (uniformly, from a stream of (seed, rank, epoch, batch index), so a resume picks the
same), the noise is regenerated from the picked seeds, the batch is matched to that noise by an
exact assignment, and each item's picked slot then holds the seed of the noise it was matched
with. Assignments found in one batch are kept and improved in the next ones the items meet, so
over epochs the coupling drifts toward a dataset-wide one at the cost of a per-batch solve.

What holds, and what it costs:

- per batch, the noise delivered is a permutation of the noise regenerated from the seeds its
  items held (the invariant of every permutation matcher); the table's multiset of N x k seeds
  never changes, and each seed is an independent 32-bit draw, so pooled over items and slots
  the noise is N(0, I);
- the state is the table: N x k 32-bit seeds (no noise vectors are held), plus the keys when
  items are identified by strings (webdataset's ``__key__``). Rows are made as items first
  appear; a row's k seeds start as a hash of (seed, row, slot);
- the prefetch thread updates the table ahead of the consumer; each update is logged (rows,
  slots, previous seeds) for the few groups the consumer can still stand before, so that a
  ``state_dict`` or a new pass sees the table as of its own position.
"""

from __future__ import annotations

import collections
import threading
from typing import Any

import numpy as np

from noisepair.backend import get_backend
from noisepair.couplings import random_pairing_cost
from noisepair.pairing import pair

#: a second stream word for the slot choices (the noise itself comes from the seeds)
SLOT_STREAM = 0x510757


class SeedTable:
    """N x k 32-bit seeds, a row per item; rows are made as items first appear."""

    def __init__(self, k: int, seed: int, rows: int = 0):
        self.k, self.seed = int(k), int(seed)
        self.seeds = np.empty((0, self.k), dtype=np.uint32)  # capacity; rows < used are items'
        self.used = 0
        self.keys: dict | None = None  # key -> row, when items are named by strings
        self._grow(rows)

    def __len__(self) -> int:
        return self.used

    def rows(self, ids: np.ndarray) -> np.ndarray:
        """The rows of the items named ``ids`` (non-negative ints, or strings), made if new."""
        if ids.dtype.kind in "iu":
            if ids.size and ids.min() < 0:
                raise ValueError(
                    f"persistent= needs non-negative item indices, got {int(ids.min())}; map "
                    "your keys to 0..N-1 or give string keys."
                )
            if self.keys is not None:
                raise ValueError(
                    "this seed table names its items by string keys, but the batch gives integer "
                    "indices: keep one kind of item identity."
                )
            rows = ids.astype(np.int64)
            self._grow(int(rows.max()) + 1 if rows.size else 0)
            return rows
        if self.keys is None:
            if self.used:
                raise ValueError(
                    "this seed table names its items by integer indices, but the batch gives "
                    f"{ids.dtype} keys: keep one kind of item identity."
                )
            self.keys = {}
        rows = np.empty(len(ids), dtype=np.int64)
        for i, key in enumerate(ids.tolist()):
            row = self.keys.get(key)
            if row is None:
                row = self.keys[key] = len(self.keys)
            rows[i] = row
        self._grow(len(self.keys))
        return rows

    def _grow(self, rows: int) -> None:
        """Rows up to ``rows`` in use; capacity doubles, so that growing row by row is cheap."""
        have = len(self.seeds)
        if rows > have:
            size = max(rows, 2 * have)
            index = np.arange(have * self.k, size * self.k, dtype=np.uint64)
            fresh = _mix(_mix(np.uint64(self.seed)) ^ index) >> np.uint64(32)
            self.seeds = np.concatenate([self.seeds, fresh.astype(np.uint32).reshape(-1, self.k)])
        self.used = max(self.used, rows)

    def state_dict(self) -> dict:
        """Plain Python: the seeds as bytes (row-major uint32), the string keys in row order."""
        return {
            "k": self.k,
            "rows": self.used,
            "seeds": self.seeds[: self.used].tobytes(),
            "keys": None if self.keys is None else list(self.keys),
        }

    def load_state_dict(self, state: dict) -> None:
        if state.get("k") != self.k:
            raise ValueError(
                f"the seed table was saved with persistent={state.get('k')}, this loader has "
                f"persistent={self.k}: build it with the same k."
            )
        rows = int(state["rows"])
        self.seeds = np.frombuffer(state["seeds"], dtype=np.uint32).reshape(rows, self.k).copy()
        self.used = rows
        keys = state.get("keys")
        self.keys = None if keys is None else {key: row for row, key in enumerate(keys)}


class PersistentMatching:
    """The coupling of :class:`MatchedNoiseLoader` with ``persistent=k``: a group's noise comes
    from the seeds its items hold, and the matched seeds go back to them."""

    def __init__(self, k: int, matcher: Any, metric: str, precision: str, seed: int, keep: int):
        if not matcher.permutation or matcher.candidates != 1:
            raise ValueError(
                f"persistent= moves seeds between the items of a batch, so it needs a permutation "
                f"matcher, not {matcher.name!r}."
            )
        self.matcher, self.metric, self.precision = matcher, metric, precision
        self.table = SeedTable(k, seed)
        self.version = 0
        self._undo: collections.deque = collections.deque(maxlen=keep)
        self._lock = threading.Lock()

    def pair(self, x: Any, sizes: list[int], labels: Any, group: Any) -> tuple[Any, dict]:
        ids = group.ids
        if ids is None:
            raise ValueError("persistent= needs each item's identity (index_key=, or the sampler).")
        if len(ids) != len(x):
            raise ValueError(f"{len(ids)} item identities for {len(x)} samples.")
        with self._lock:
            rows = self.table.rows(ids)
            repeated = len(np.unique(rows)) != len(rows)
            if repeated:
                twice = [k for k, n in collections.Counter(ids.tolist()).items() if n > 1]
                raise ValueError(
                    f"items {twice[:5]} appear twice in one match group: each item holds its own "
                    "seeds, so a group must not repeat an item (sample without replacement)."
                )
            rng = np.random.default_rng(
                [group.seed, group.rank, group.epoch, group.first, SLOT_STREAM]
            )
            slots = rng.integers(0, self.table.k, size=len(rows))
            held = self.table.seeds[rows, slots]
        z = get_backend(x).normal_from_seeds(held, tuple(x.shape[1:]), x)
        idx, info = pair(
            x, z, self.matcher, metric=self.metric, precision=self.precision, groups=labels
        )
        cols = np.asarray(get_backend(idx).to_numpy(idx), dtype=np.int64)
        new = held[cols]
        updates = [(rows, slots, new)]
        if group.exchange is not None:  # every rank applies every rank's updates
            updates = self._gathered(group.exchange, x, ids, slots, new)
        with self._lock:
            rows = np.concatenate([u[0] for u in updates])
            slots = np.concatenate([u[1] for u in updates])
            self._undo.append((self.version, rows, slots, self.table.seeds[rows, slots].copy()))
            for r, s, n in updates:  # in rank order: a data point on two ranks (a sampler's
                self.table.seeds[r, s] = n  # padding) keeps the later rank's seed
            self.version += 1
        info["persistent_swaps"] = int((cols != np.arange(len(cols))).sum())
        if self.metric == "sqeuclidean":  # against random pairing, not the held (matched) noise
            info["cost_held"] = info["cost_random"]
            info["cost_random"] = random_pairing_cost(x, z)
            info["cost_ratio"] = info["cost"] / info["cost_random"]
        return z[idx], info

    def _gathered(self, exchange: Any, x: Any, ids: np.ndarray, slots: Any, new: Any) -> list:
        """This step's updates of every rank, in rank order, as (rows, slots, seeds) here:
        ``world * B`` (identity, slot, seed) triples cross the wire per step."""
        exchange.agree([len(x)], (int(np.prod(x.shape[1:])), 0, False))
        gathered = exchange.all_gather_object((ids, np.asarray(slots, np.int16), new))
        with self._lock:
            return [(self.table.rows(i), s.astype(np.int64), n) for i, s, n in gathered]

    # -- markers ---------------------------------------------------------------------------
    def mark(self) -> int:
        return self.version

    def rewind(self, marker: Any, seed: int, rank: int) -> None:
        version = 0 if marker is None else marker
        with self._lock:
            if not len(self.table):  # no row made yet: take the seed the ranks agreed on
                self.table.seed = seed
            self._undo_to(self.table.seeds, version)
            self._undo.clear()
            self.version = version

    def export(self, marker: Any) -> dict:
        with self._lock:
            saved = SeedTable(self.table.k, self.table.seed)
            saved.seeds = self.table.seeds[: self.table.used].copy()
            saved.used = self.table.used
            saved.keys = None if self.table.keys is None else dict(self.table.keys)
            self._undo_to(saved.seeds, 0 if marker is None else marker)
        return saved.state_dict()

    def restore(self, state: Any) -> int:
        if state is None or "seeds" not in state:
            raise ValueError(
                "the state holds no seed table, but this loader has persistent="
                f"{self.table.k}: build it without persistent= to resume that state."
            )
        with self._lock:
            self.table.load_state_dict(state)
            self._undo.clear()
            self.version += 1  # markers of before the restore are no longer valid
        return self.version

    def _undo_to(self, seeds: np.ndarray, version: int) -> None:
        """Take back, on ``seeds``, the updates made from ``version`` on (newest first)."""
        if version > self.version:
            raise RuntimeError(f"marker {version} is ahead of the seed table ({self.version}).")
        newer = [u for u in self._undo if u[0] >= version]
        if self.version - version > len(newer):
            raise RuntimeError(
                f"the seed table cannot go back {self.version - version} updates (it keeps "
                f"{len(self._undo)}): a position older than the last pass's."
            )
        for _, rows, slots, held in reversed(newer):
            seeds[rows, slots] = held


def _mix(x: Any) -> Any:
    """splitmix64's finaliser, on uint64 (scalars or arrays): a fast, well-spread hash."""
    x = np.asarray(x, dtype=np.uint64)
    with np.errstate(over="ignore"):
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))
