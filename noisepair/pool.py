"""DANSM's noise pool: a persistent pool of P noises, far larger than a batch, used up batch by
batch and redrawn when every noise of it has been used.

Each sample takes noise from the part of the pool still unused in the current cycle, by
``rule="greedy"`` (DANSM's own: each sample, in stream order, takes its nearest unused noise)
or ``rule="exact"`` (the batch against the unused noises, an exact rectangular assignment with
scipy). What this preserves and what it does not:

- over each pool cycle every drawn noise is emitted exactly once, so the noise of a whole cycle
  is exactly the P draws of N(0, I), reordered;
- within a cycle the noise a batch gets is not N(0, I): early batches choose among many unused
  noises and get nearer ones than late batches, which take what is left. The drift is the price
  of the larger matched set; a cycle spans P / B batches.

When B does not divide P, a batch that finds fewer unused noises than samples gives the
cycle's last noises to its first samples (stream order) and the rest of its samples take from
the next cycle, as DANSM's sample-by-sample rule does. With ``groups`` every label has its own
pool of P noises (noise is never exchanged across labels), so the per-label noise is N(0, I)
over each of its cycles.

The draws of cycle c are a function of (seed, rank, label, c) only, from the same seeded stream
as the per-batch noise (:func:`noisepair.noise.draw_like`, in an epoch slot of its own), so the
state is small: per label the cycle number and which noises are used. ``state_dict()`` /
``load_state_dict()`` restore the pool exactly; the noise is drawn again when next needed.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from noisepair.backend import flat, get_backend, to_numpy
from noisepair.cost import cost_matrix
from noisepair.noise import draw_like
from noisepair.pairing import as_labels, validate_sample

RULES = ("greedy", "exact")
#: the pool draws use epochs from here on (plus the label): far from any real epoch number.
POOL_STREAM = 2**40


class NoisePool:
    """A pool of ``size`` noises per label; :meth:`take` hands a batch its noise from it.

    Args:
        size: noises per pool cycle (DANSM's ``ms_size``).
        rule: ``"greedy"`` (each sample in order takes its nearest unused noise; DANSM) or
            ``"exact"`` (minimum total cost of the batch against the unused noises).
        seed, rank: the noise stream, as for the per-batch noise.
        metric, precision: the cost, as for :func:`noisepair.pairing.pair`.
    """

    def __init__(
        self,
        size: int,
        *,
        rule: str = "greedy",
        seed: int = 0,
        rank: int = 0,
        metric: str = "sqeuclidean",
        precision: str = "float32",
    ):
        if int(size) < 1:
            raise ValueError(f"pool size must be >= 1 noise, got {size}.")
        if rule not in RULES:
            raise ValueError(f"unknown pool rule {rule!r}; choose one of {RULES}.")
        self.size, self.rule = int(size), rule
        self.seed, self.rank = int(seed), int(rank)
        self.metric, self.precision = metric, precision
        self._cycles: dict[Any, int] = {}  # label -> current cycle number
        self._used: dict[Any, np.ndarray] = {}  # label -> bool mask of the current cycle
        self._drawn: dict[Any, tuple] = {}  # label -> (cycle, signature, noise): a cache

    # -- the draws -------------------------------------------------------------------------
    def drawn(self, cycle: int, like: Any, label: Any = None) -> Any:
        """The ``size`` noises of ``cycle`` (for ``label``), shaped and typed like ``like``'s items."""
        offset = 0 if label is None else 1 + label
        return draw_like(
            like, self.size, seed=self.seed, rank=self.rank, epoch=POOL_STREAM + offset, index=cycle
        )

    def _noise(self, label: Any, like: Any) -> Any:
        cycle = self._cycles[label]
        sig = (
            get_backend(like).name,
            str(like.dtype),
            str(getattr(like, "device", "cpu")),
            tuple(like.shape[1:]),
        )
        cached = self._drawn.get(label)
        if cached is not None and cached[1][3] != sig[3]:
            raise ValueError(
                f"the pool holds noise of item shape {cached[1][3]} but this batch has items of "
                f"shape {sig[3]}; one pool serves one item shape: resize in the transform."
            )
        stream = (cycle, self.seed, self.rank)
        if cached is None or cached[0] != stream or cached[1] != sig:
            cached = (stream, sig, self.drawn(cycle, like, label))
            self._drawn[label] = cached
        return cached[2]

    # -- taking noise ----------------------------------------------------------------------
    def take(self, x: Any, groups: Any = None) -> tuple[Any, dict]:
        """Noise for the batch ``x`` (B, ...) from the pool, and an info dict like ``pair``'s.

        ``groups``: one non-negative integer label per sample; each label draws from its own pool.
        """
        validate_sample(x)
        start = time.perf_counter()
        b = x.shape[0]
        if groups is None:
            parts = [(None, np.arange(b))]
        else:
            labels = as_labels(groups, b)
            if not np.issubdtype(labels.dtype, np.integer) or (labels < 0).any():
                raise ValueError(
                    f"a noise pool needs non-negative integer labels (class ids) to seed a pool per "
                    f"label, got {labels.dtype} labels {np.unique(labels)[:5].tolist()}; map them "
                    "to 0..C-1 in the dataset."
                )
            parts = [(int(lab), np.flatnonzero(labels == lab)) for lab in np.unique(labels)]
        bk = get_backend(x)
        xf = flat(x)
        pieces = []
        matched = unmatched = 0.0
        for label, rows in parts:
            got, m, u = self._take_rows(label, xf[bk.as_index(rows, x)], x)
            pieces.append(got)
            matched, unmatched = matched + m, unmatched + u
        order = np.concatenate([rows for _, rows in parts])  # the rows of the pieces, in turn
        noise = bk.concat(pieces) if len(pieces) > 1 else pieces[0]
        noise = noise[bk.as_index(np.argsort(order), noise)].reshape(x.shape)
        cycles = {lab: self._cycles[lab] for lab, _ in parts}
        left = {lab: int(self.size - self._used[lab].sum()) for lab, _ in parts}
        info = {
            "method": f"pool-{self.rule}",
            "cost": matched / b,
            "cost_random": unmatched / b,
            "cost_ratio": matched / unmatched if unmatched > 0 else 1.0,
            "seconds": time.perf_counter() - start,
            "exact_permutation": True,  # over each pool cycle: every draw emitted exactly once
            "gap_bound": 0.0 if self.rule == "exact" else None,
            "solver": "scipy" if self.rule == "exact" else "greedy",
            "pool_size": self.size,
            "pool_cycle": cycles[None] if groups is None else cycles,
            "pool_left": left[None] if groups is None else left,
            "batch_size": b,
        }
        return noise, info

    def _take_rows(self, label: Any, xf: Any, like: Any) -> tuple[Any, float, float]:
        """Noise for the rows ``xf`` (n, D) in order, crossing into the next cycles as needed."""
        if label not in self._cycles:
            self._cycles[label], self._used[label] = 0, np.zeros(self.size, dtype=bool)
        pieces, matched, unmatched, done = [], 0.0, 0.0, 0
        while done < xf.shape[0]:
            free = np.flatnonzero(~self._used[label])
            n = min(xf.shape[0] - done, free.size)
            pool = flat(self._noise(label, like))
            bk = get_backend(pool)
            candidates = pool[bk.as_index(free, pool)]
            cost = to_numpy(
                cost_matrix(xf[done : done + n], candidates, self.metric, self.precision)
            )
            cols = self._assign(cost)
            self._used[label][free[cols]] = True
            pieces.append(candidates[bk.as_index(cols, candidates)])
            matched += float(cost[np.arange(n), cols].sum())
            unmatched += float(cost[np.arange(n), np.arange(n)].sum())  # the free noises as drawn
            done += n
            if self._used[label].all():  # cycle used up: the next one starts, drawn when needed
                self._cycles[label] += 1
                self._used[label] = np.zeros(self.size, dtype=bool)
        noise = pieces[0] if len(pieces) == 1 else get_backend(*pieces).concat(pieces)
        return noise, matched, unmatched

    def _assign(self, cost: np.ndarray) -> np.ndarray:
        """Columns of ``cost`` (n, F), n <= F, one per row, all distinct."""
        if self.rule == "exact":
            from scipy.optimize import linear_sum_assignment

            return linear_sum_assignment(cost)[1].astype(np.int64)
        c = np.array(cost, dtype=np.float64)
        cols = np.empty(c.shape[0], dtype=np.int64)
        for i in range(c.shape[0]):  # DANSM: in stream order, the nearest noise still unused
            cols[i] = j = int(np.argmin(c[i]))
            c[:, j] = np.inf
        return cols

    # -- resume ----------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """Per label the cycle number and the used noises: enough to restore the pool exactly.
        Plain Python only, so a checkpoint holding it loads with ``weights_only=True``."""
        return {
            "size": self.size,
            "rule": self.rule,
            "pools": {
                lab: {
                    "cycle": int(self._cycles[lab]),
                    "used": np.flatnonzero(self._used[lab]).tolist(),
                }
                for lab in self._cycles
            },
        }

    def empty_state(self) -> dict:
        """The state of a pool that has handed out nothing yet."""
        return {"size": self.size, "rule": self.rule, "pools": {}}

    def check_state(self, state: Any) -> None:
        """Raise a clear error unless ``state`` is a state of a pool like this one."""
        if not isinstance(state, dict) or not isinstance(state.get("pools"), dict):
            raise ValueError(f"not a noise pool state: {state!r:.200}")
        mine = {"size": self.size, "rule": self.rule}
        theirs = {k: state.get(k) for k in mine}
        if theirs != mine:
            raise ValueError(
                f"pool state was saved with {theirs} but this pool has {mine}; build "
                "it with the same settings."
            )

    def load_state_dict(self, state: dict) -> None:
        self.check_state(state)
        self._cycles, self._used = {}, {}  # the draw cache knows its cycle, seed and rank
        for lab, s in state["pools"].items():
            used = np.zeros(self.size, dtype=bool)
            used[np.asarray(s["used"], dtype=np.int64)] = True
            self._cycles[lab], self._used[lab] = int(s["cycle"]), used

    def __repr__(self) -> str:
        return f"NoisePool(size={self.size}, rule={self.rule!r}, seed={self.seed})"
