"""Rank and world size; across-rank matching (Immiscible Diffusion's global batch) that moves
costs, not samples.

``rank_and_world()`` reads torch.distributed when it is initialised, else the ``RANK`` /
``WORLD_SIZE`` environment variables (torchrun sets both), else (0, 1).

Across-rank matching solves one assignment for the concatenated batch of all ranks. Every
rank's noise is a pure function of (seed, rank, epoch, batch index), so any rank can regenerate
any other rank's noise, and the samples never need to leave their rank:

1. the ranks agree on the step (batch sizes, item size, dtype, labels or not);
2. each rank computes its own rows of the global cost matrix, its samples against the noise of
   every rank, regenerated locally;
3. the rows (and the ``group_by`` labels) go to rank 0, which solves the full matrix with
   :func:`noisepair.pairing.assign`, the pairing code of a single process after the cost;
4. rank 0 broadcasts the assignment (integers) and the info; each rank takes the noise it was
   assigned from the draws it already holds.

What crosses the wire per step is ``world * B`` rows of ``world * B`` costs plus integers,
whatever the item size D; that is less than the samples themselves once D exceeds about
``world * B / 2``. The price is on every rank: it draws the noise of all ranks (``world * B * D``
values, held for the step) and computes a ``B x world*B`` block of the cost, where the solving
rank used to do all of it alone; benchmarks/results/across_ranks.md has the figures.

:class:`RankExchange` only moves data. It runs in the loader's prefetch thread on a process
group of its own, created per pass (NCCL when the loader's ``device`` is a CUDA device, gloo
otherwise), so it never interleaves with the trainer's collectives; every wait has a deadline and
a cancel check, so a rank that dies, fails or stops early surfaces as an error on the others,
never a hang.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import sys
import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import numpy as np

from noisepair.backend import get_backend
from noisepair.cost import cost_matrix
from noisepair.pairing import as_labels, assign, label_groups, validate_sample

# header fields: status, item size D, dtype code, has labels, number of batches, one size per batch
_OK, _DONE, _FAILED = 0, 1, 2


def rank_and_world() -> tuple[int, int]:
    dist = sys.modules.get("torch.distributed")
    if dist is not None and dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    if _jax_distributed():
        import jax

        return jax.process_index(), jax.process_count()
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def _jax_distributed() -> bool:
    """True once ``jax.distributed.initialize()`` ran. Asking ``jax.process_count()`` before
    that would start JAX's backend (and take the GPU's memory) in a script that only imported it."""
    if sys.modules.get("jax") is None:
        return False
    try:
        from jax._src import distributed
    except ImportError:  # pragma: no cover - a JAX without that module
        return False
    return getattr(distributed.global_state, "client", None) is not None


class Cancelled(Exception):
    """The iteration was closed while a collective was in flight (early ``break``)."""


class RankExchange:
    """The collectives of one pass over the data, on a process group of its own.

    Create it on every rank at the same point (``MatchedNoiseLoader.__iter__`` does, in the
    caller's thread: ``new_group`` is collective), then, from the prefetch thread, per match
    group: :meth:`agree`, :meth:`gather_rows`, :meth:`broadcast_object`; at the end of the data
    :meth:`finish`. ``bytes_sent`` counts the tensor bytes this rank sent to its peers.
    """

    def __init__(
        self,
        timeout: float = 300.0,
        scope: int = 1,
        cancelled: Callable[[], bool] = lambda: False,
        device: Any = None,
    ):
        import torch
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()):
            raise RuntimeError(
                "across_ranks=True needs torch.distributed initialised on every rank (torchrun, "
                "then torch.distributed.init_process_group) before the loader is iterated."
            )
        self.dist = dist
        self.rank, self.world = dist.get_rank(), dist.get_world_size()
        self.timeout = float(timeout)
        self.scope = int(scope)
        self.cancelled = cancelled
        self.device = torch.device("cpu") if device is None else torch.device(device)
        if self.device.type == "cuda" and self.device.index is None:
            self.device = torch.device("cuda", torch.cuda.current_device())
        backend = "nccl" if self.device.type == "cuda" else "gloo"
        # A fresh group per pass: collectives of an abandoned pass (closed early on one rank)
        # can never be matched with those of the next one.
        self.group = dist.new_group(backend=backend, timeout=timedelta(seconds=self.timeout))
        self.steps = 0
        self.bytes_sent = 0
        self._broken = False

    # -- collectives with a deadline and a cancel check ---------------------------------------
    def _wait(self, work, what: str) -> None:
        deadline = time.monotonic() + self.timeout
        pause = 1e-4
        while not work.is_completed():
            if self.cancelled():
                self._broken = True
                raise Cancelled(what)
            if time.monotonic() > deadline:
                self._broken = True
                raise TimeoutError(
                    f"rank {self.rank}: no answer from the other ranks within {self.timeout:g} s "
                    f"during {what} (step {self.steps}); a rank died, stopped early, or yields "
                    "fewer batches (give every rank the same number: split_by_node, "
                    "partial=False, with_epoch). Raise timeout= if the solve is just slow."
                )
            time.sleep(pause)
            pause = min(pause * 2, 0.005)
        try:
            work.wait()
        except Exception as exc:  # a peer closed its connection: it died
            self._broken = True
            raise RuntimeError(
                f"rank {self.rank}: {what} failed (another rank died?): {exc}"
            ) from exc

    def _all_gather_header(self, header: list[int]) -> np.ndarray:
        import torch

        mine = torch.tensor(header, dtype=torch.int64, device=self.device)
        out = [torch.empty_like(mine) for _ in range(self.world)]
        self.bytes_sent += mine.nbytes * (self.world - 1)
        self._wait(
            self.dist.all_gather(out, mine, group=self.group, async_op=True), "all_gather(header)"
        )
        return torch.stack(out).cpu().numpy()

    def _header(
        self, status: int, item: tuple[int, int, bool] = (0, 0, False), sizes=()
    ) -> list[int]:
        sizes = [int(s) for s in sizes] + [0] * (self.scope - len(sizes))
        d, dtype, labelled = item
        return [status, int(d), int(dtype), int(labelled), sum(1 for s in sizes if s > 0), *sizes]

    # -- the protocol -------------------------------------------------------------------------
    def agree(self, sizes: list[int], item: tuple[int, int, bool]) -> np.ndarray:
        """Start a step: every rank's batch sizes, shape (world, scope), after checking that
        every rank has data and that all agree on ``item`` = (D, dtype code, has labels)."""
        headers = self._all_gather_header(self._header(_OK, item, sizes))
        if (headers[:, 0] != _OK).any():
            self._broken = True
            bad = {
                r: ("failed" if h[0] == _FAILED else "ran out of batches")
                for r, h in enumerate(headers)
                if h[0] != _OK
            }
            raise RuntimeError(
                f"rank {self.rank}: across-rank matching stopped at step {self.steps}: rank(s) "
                f"{bad}. Every rank needs the same number of batches (partial=False, with_epoch)."
            )
        fields = {"item size": 1, "dtype": 2, "group_by labels": 3}
        differ = {
            k: headers[:, i].tolist() for k, i in fields.items() if len(set(headers[:, i])) > 1
        }
        if differ:
            self._broken = True
            raise ValueError(
                f"rank {self.rank}: the ranks disagree on the {' and '.join(differ)} (per rank: "
                f"{differ}); every rank must yield samples of one shape and dtype, with group_by "
                "labels on all ranks or on none."
            )
        self.steps += 1
        return headers[:, 5:]

    def gather_rows(self, rows: Any, counts: np.ndarray) -> list | None:
        """Rank 0 receives every rank's ``rows`` (``counts[r]`` rows on rank r, one width and
        dtype everywhere), as a list in rank order; the other ranks get None."""
        import torch

        padded = torch.zeros(
            (int(counts.max()), *rows.shape[1:]), dtype=rows.dtype, device=self.device
        )
        padded[: rows.shape[0]] = rows
        out = [torch.empty_like(padded) for _ in range(self.world)] if self.rank == 0 else None
        if self.rank != 0:
            self.bytes_sent += padded.nbytes
        self._wait(
            self.dist.gather(padded, out, dst=0, group=self.group, async_op=True), "gather(rows)"
        )
        return None if out is None else [o[: int(c)] for o, c in zip(out, counts)]

    def broadcast_object(self, obj: Any = None) -> Any:
        """Rank 0's ``obj`` (picklable) on every rank."""
        import torch

        payload = pickle.dumps(obj) if self.rank == 0 else b""
        size = torch.tensor([len(payload)], dtype=torch.int64, device=self.device)
        if self.rank == 0:
            self.bytes_sent += size.nbytes * (self.world - 1)
        self._wait(
            self.dist.broadcast(size, src=0, group=self.group, async_op=True), "broadcast(size)"
        )
        if self.rank == 0:
            data = torch.frombuffer(bytearray(payload), dtype=torch.uint8).to(self.device)
            self.bytes_sent += data.nbytes * (self.world - 1)
        else:
            data = torch.empty(int(size), dtype=torch.uint8, device=self.device)
        self._wait(
            self.dist.broadcast(data, src=0, group=self.group, async_op=True), "broadcast(object)"
        )
        return obj if self.rank == 0 else pickle.loads(data.cpu().numpy().tobytes())

    def all_gather_object(self, obj: Any) -> list:
        """Every rank's ``obj`` (picklable), in rank order, on every rank."""
        import torch

        payload = pickle.dumps(obj)
        sizes = self._all_gather_header([len(payload)])[:, 0]
        data = torch.zeros(int(sizes.max()), dtype=torch.uint8, device=self.device)
        data[: len(payload)] = torch.frombuffer(bytearray(payload), dtype=torch.uint8)
        out = [torch.empty_like(data) for _ in range(self.world)]
        self.bytes_sent += data.nbytes * (self.world - 1)
        self._wait(
            self.dist.all_gather(out, data, group=self.group, async_op=True), "all_gather(object)"
        )
        return [
            pickle.loads(o[: int(n)].cpu().numpy().tobytes()) if r != self.rank else obj
            for r, (o, n) in enumerate(zip(out, sizes))
        ]

    def finish(self) -> None:
        """End of this rank's data: check that every rank ran out at the same step."""
        headers = self._all_gather_header(self._header(_DONE))
        if (headers[:, 0] != _DONE).any():
            self._broken = True  # every rank has seen the mismatch: no collective may follow
            more = [r for r in range(self.world) if headers[r, 0] == _OK]
            raise RuntimeError(
                f"rank {self.rank} ran out of batches after {self.steps} match steps while rank(s) "
                f"{more} still have data: across_ranks=True needs the same number of batches on "
                "every rank (split_by_node with shards divisible by world*workers, partial=False, "
                "with_epoch(n) on the loader)."
            )

    def fail(self) -> None:
        """Tell the other ranks that this rank cannot go on (its batch could not be prepared)."""
        if not self._broken:
            try:
                self._all_gather_header(self._header(_FAILED))
            except Exception:
                pass
        self._broken = True

    def abort(self) -> None:
        """Every rank has seen this pass fail: no collective may follow on this group."""
        self._broken = True

    def close(self) -> None:
        """Free the group (only when no collective of this pass can still be in flight)."""
        group, self.group = self.group, None
        if group is not None and not self._broken:
            try:
                self.dist.destroy_process_group(group)
            except Exception:
                pass


def pair_across_ranks(
    exchange: RankExchange,
    x: Any,
    sizes: list[int],
    draw: Callable[[int, list[int]], Any],
    matcher: Any,
    *,
    metric: str = "sqeuclidean",
    precision: str = "float32",
    groups: Any = None,
) -> tuple[Any, dict]:
    """Pair this rank's samples ``x`` (sum(sizes), ...) inside the global batch of all ranks.

    ``draw(r, sizes_r)`` returns rank r's noise for batches of ``sizes_r`` items, from rank r's
    seed stream (on any rank). Returns (noise for ``x``, info of the global solve); the info has
    the keys of :func:`noisepair.pairing.pair`, ``batch_size`` being the global batch.
    """
    import torch

    if not matcher.permutation or matcher.candidates != 1:
        raise ValueError(f"across-rank matching needs a permutation matcher, not {matcher!r}.")
    validate_sample(x)
    codes = None if groups is None else _label_codes(groups)
    if codes is not None and len(codes) != len(x):
        raise ValueError(f"group_by gave {len(codes)} labels for a batch of {len(x)} samples.")
    d = int(np.prod(x.shape[1:]))
    counts = exchange.agree(sizes, (d, _dtype_code(x), codes is not None))
    per_rank = counts.sum(1)
    offsets = np.concatenate([[0], np.cumsum(per_rank)])
    mine = slice(int(offsets[exchange.rank]), int(offsets[exchange.rank + 1]))

    error = None  # a local failure still takes part in the step, so that no rank waits for it
    block = torch.full(
        (len(x), int(offsets[-1])),
        float("nan"),
        device=exchange.device,
        dtype=torch.float64 if precision == "float64" else torch.float32,
    )
    try:
        parts = [draw(r, _batch_sizes(counts[r])) for r in range(exchange.world)]
        noise = get_backend(*parts).concat(parts)
        block.copy_(torch.as_tensor(cost_matrix(x, noise, metric, precision)))
    except Exception as exc:
        error = exc
        block.fill_(float("nan"))
    blocks = exchange.gather_rows(block, per_rank)
    labels = (
        None
        if codes is None
        else exchange.gather_rows(torch.as_tensor(codes, device=exchange.device), per_rank)
    )

    outcome = None
    if exchange.rank == 0:
        try:
            outcome = ("ok", *_solve_global(blocks, labels, x, matcher, d))
        except Exception as exc:
            error = error or exc
            why = f"{type(exc).__name__}: {exc}"
            step = exchange.steps - 1  # agree() counted this step
            outcome = ("error", f"rank 0 could not match the global batch at step {step}: {why}")
    outcome = exchange.broadcast_object(outcome)
    if outcome[0] != "ok":
        exchange.abort()
        if error is not None:
            raise error
        raise RuntimeError(f"rank {exchange.rank}: {outcome[1]}")
    _, cols, info = outcome
    return noise[get_backend(noise).as_index(cols[mine], noise)], info


def _solve_global(
    blocks: list, labels: list | None, x: Any, matcher: Any, d: int
) -> tuple[np.ndarray, dict]:
    """Rank 0: the global cost from every rank's rows, checked, solved as a single process would."""
    import torch

    for r, b in enumerate(blocks):
        if not bool(torch.isfinite(b).all()):
            raise ValueError(
                f"the cost rows of rank {r} are not finite: rank {r} failed to compute them (see "
                "its error), or its samples are so large that squared distances overflow; "
                "rescale the samples (or use precision='float64')."
            )
    cost = torch.cat(blocks)
    b = get_backend(x)
    cost = cost if b.owns(cost) else cost.cpu().numpy()  # the sample's framework, as in pair()
    n = cost.shape[0]
    parts = None if labels is None else label_groups(torch.cat(labels).cpu().numpy(), n)

    def cost_of(rows):
        if rows is None:
            return cost
        sel = get_backend(cost).as_index(rows, cost)
        return cost[sel][:, sel]

    cols, info = assign(matcher, n, parts, cost_of, dim=d)
    return get_backend(cols).to_numpy(cols).astype(np.int64), info


def _batch_sizes(row: np.ndarray) -> list[int]:
    return [int(s) for s in row if s > 0]


def _dtype_code(x: Any) -> int:
    name = str(x.dtype).replace("torch.", "")
    return int.from_bytes(hashlib.blake2b(name.encode(), digest_size=4).digest(), "little")


def _label_codes(groups: Any) -> np.ndarray:
    """Labels as int64 codes, equal on every rank for equal labels (ints as they are, any other
    hashable label by a 63-bit hash of its repr); NaN is refused as in single-process pairing."""
    labels = as_labels(groups)
    if labels.dtype.kind in "iub":
        return labels.astype(np.int64)
    return np.array(
        [
            int.from_bytes(hashlib.blake2b(repr(v).encode(), digest_size=8).digest(), "little") >> 1
            for v in labels.tolist()
        ],
        dtype=np.int64,
    )
