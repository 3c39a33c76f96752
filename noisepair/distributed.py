"""Rank and world size; gathering for across-rank matching (Immiscible Diffusion's global batch).

``rank_and_world()`` reads torch.distributed when it is initialised, else the ``RANK`` /
``WORLD_SIZE`` environment variables (torchrun sets both), else (0, 1).

:class:`RankExchange` pairs the global batch: every rank sends its samples (and labels) to rank
0, rank 0 draws the noise of every rank from that rank's own seed stream (draws depend only on
(seed, rank, epoch, batch index), so no noise crosses the wire on the way in), solves one
assignment of size ``world * B`` with the same ``pair()`` a single process would call on the
concatenated batch, and scatters to each rank the noise for its own samples. The result is
exactly single-process matching of the concatenated global batch.

Cost per step: rank 0 receives ``(world - 1) * B * D`` sample values and sends as many noise
values back; every rank waits for the slowest rank and for one solve of size ``world * B``
(Hungarian is cubic: ~0.1 s at 1024 on a CPU core, seconds at 4096). It runs in the loader's
prefetch thread, on its own gloo process group (CPU tensors, never the trainer's NCCL group,
so it cannot interleave with DDP's collectives), with a timeout: a rank that dies or stops
early surfaces as an error on the others, never a hang.
"""
from __future__ import annotations

import os
import sys
import time
from datetime import timedelta
from typing import Any, Callable

import numpy as np

from noisepair._frameworks import concat, is_torch, to_numpy

# header fields: status, item size D, has labels, number of batches, then one size per batch
_OK, _DONE, _FAILED = 0, 1, 2


def rank_and_world() -> tuple[int, int]:
    dist = sys.modules.get("torch.distributed")
    if dist is not None and dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


class Cancelled(Exception):
    """The iteration was closed while a collective was in flight (early ``break``)."""


class RankExchange:
    """The collectives of one pass over the data, on a process group of its own.

    Create it on every rank at the same point (``MatchedNoiseLoader.__iter__`` does, in the
    caller's thread: ``new_group`` is collective), then call :meth:`pair` once per match group
    and :meth:`finish` at the end of the data, from the prefetch thread.
    """

    def __init__(self, timeout: float = 300.0, scope: int = 1,
                 cancelled: Callable[[], bool] = lambda: False):
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
        # A fresh gloo group per pass: collectives of an abandoned pass (closed early on one
        # rank) can never be matched with those of the next one.
        self.group = dist.new_group(backend="gloo", timeout=timedelta(seconds=self.timeout))
        self.steps = 0
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
            raise RuntimeError(f"rank {self.rank}: {what} failed (another rank died?): {exc}") from exc

    def _all_gather_header(self, header: list[int]):
        import torch

        mine = torch.tensor(header, dtype=torch.int64)
        out = [torch.empty_like(mine) for _ in range(self.world)]
        self._wait(self.dist.all_gather(out, mine, group=self.group, async_op=True), "all_gather(header)")
        return torch.stack(out).numpy()

    def _header(self, status: int, d: int = 0, labels: bool = False, sizes=()) -> list[int]:
        sizes = [int(s) for s in sizes] + [0] * (self.scope - len(sizes))
        return [status, d, int(labels), sum(1 for s in sizes if s > 0), *sizes]

    # -- the protocol -------------------------------------------------------------------------
    def finish(self) -> None:
        """End of this rank's data: check that every rank ran out at the same step."""
        headers = self._all_gather_header(self._header(_DONE))
        if (headers[:, 0] != _DONE).any():
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

    def pair(self, x: Any, sizes: list[int], draw: Callable[[int, list[int]], Any], matcher,
             *, metric: str, precision: str, groups: Any = None, pair_fn: Callable) -> tuple[Any, dict]:
        """Pair this rank's samples ``x`` (sum(sizes), ...) inside the global batch.

        ``draw(r, sizes_r)`` returns the noise of rank r for batches of ``sizes_r`` items, from
        rank r's seed stream. Returns (noise for ``x``, info of the global solve).
        """
        import torch

        d = int(np.prod(x.shape[1:]))
        headers = self._all_gather_header(self._header(_OK, d, groups is not None, sizes))
        if (headers[:, 0] != _OK).any():
            self._broken = True
            bad = {r: ("failed" if h[0] == _FAILED else "ran out of batches") for r, h in
                   enumerate(headers) if h[0] != _OK}
            raise RuntimeError(
                f"rank {self.rank}: across-rank matching stopped at step {self.steps}: rank(s) "
                f"{bad}. Every rank needs the same number of batches (partial=False, with_epoch)."
            )
        if len(set(headers[:, 1])) > 1 or len(set(headers[:, 2])) > 1:
            self._broken = True
            raise ValueError(
                f"ranks disagree on the item size {sorted(set(headers[:, 1]))} or on group_by; "
                "every rank must yield samples of one shape."
            )
        counts = headers[:, 4:].sum(1)
        nmax = int(counts.max())
        wire = torch.float64 if (is_torch(x) and x.dtype == torch.float64) or (
            not is_torch(x) and x.dtype == np.float64) else torch.float32
        n = int(sum(sizes))
        xs = torch.zeros(nmax, d + (groups is not None), dtype=wire)
        xs[:n, :d] = torch.as_tensor(to_numpy(x).reshape(n, d), dtype=wire) if not is_torch(x) \
            else x.detach().reshape(n, d).to("cpu", wire)
        if groups is not None:
            xs[:n, d] = torch.as_tensor(_label_codes(groups), dtype=wire)
        gathered = [torch.empty_like(xs) for _ in range(self.world)] if self.rank == 0 else None
        self._wait(self.dist.gather(xs, gathered, dst=0, group=self.group, async_op=True), "gather(samples)")

        # rank 0 solves; its status and the global info go out before the noise
        status = torch.zeros(4, dtype=torch.float64)
        noise_parts, error = None, None
        if self.rank == 0:
            try:
                xall = concat([_back_like(g[: int(c), :d], x) for g, c in zip(gathered, counts)])
                xall = xall.reshape(-1, *x.shape[1:])
                zall = concat([draw(r, [int(s) for s in headers[r, 4:] if s > 0])
                               for r in range(self.world)])
                labels = None
                if groups is not None:
                    labels = np.concatenate([to_numpy(g[: int(c), d]) for g, c in zip(gathered, counts)])
                idx, info = pair_fn(xall, zall, matcher, metric=metric, precision=precision,
                                    groups=labels)
                znew = zall[idx]
                flatz = znew.reshape(len(znew), -1)
                offsets = np.concatenate([[0], np.cumsum(counts)])
                noise_parts = []
                for r in range(self.world):
                    part = torch.zeros(nmax, d, dtype=wire)
                    piece = flatz[offsets[r]:offsets[r + 1]]
                    part[: int(counts[r])] = piece.detach().to("cpu", wire) if is_torch(piece) \
                        else torch.as_tensor(np.asarray(piece), dtype=wire)
                    noise_parts.append(part)
                status[:] = torch.tensor([1.0, info["cost"], info["cost_random"], info["seconds"]])
            except Exception as exc:  # tell the others before re-raising
                error = exc
        self._wait(self.dist.broadcast(status, src=0, group=self.group, async_op=True), "broadcast(status)")
        if status[0] != 1.0:
            self._broken = True
            if error is not None:
                raise error
            raise RuntimeError(f"rank {self.rank}: rank 0 failed to match the global batch "
                               f"at step {self.steps}; see rank 0's error.")
        mine = torch.empty(nmax, d, dtype=wire)
        self._wait(self.dist.scatter(mine, noise_parts, src=0, group=self.group, async_op=True),
                   "scatter(noise)")
        self.steps += 1
        noise = _back_like(mine[:n], x).reshape(x.shape)
        total = int(counts.sum())
        cost, cost_random = float(status[1]), float(status[2])
        info = {"method": matcher.name, "cost": cost, "cost_random": cost_random,
                "cost_ratio": cost / cost_random if cost_random > 0 else 1.0,
                "seconds": float(status[3]), "exact_permutation": matcher.permutation,
                "batch_size": n, "global_batch_size": total, "world_size": self.world,
                "across_ranks": True}
        return noise, info

    def close(self) -> None:
        """Free the group (only when no collective of this pass can still be in flight)."""
        group, self.group = self.group, None
        if group is not None and not self._broken:
            try:
                self.dist.destroy_process_group(group)
            except Exception:
                pass


def _back_like(t: Any, like: Any) -> Any:
    """A wire tensor back in the framework, dtype and device of ``like``."""
    if is_torch(like):
        return t.to(like.device, like.dtype)
    return t.numpy().astype(like.dtype, copy=False)


def _label_codes(groups: Any) -> np.ndarray:
    """Labels as exact float codes for the wire (any hashable labels: ints, strings)."""
    labels = to_numpy(groups).reshape(-1) if not isinstance(groups, (list, tuple)) else np.asarray(groups)
    if labels.dtype.kind in "iub" and (np.abs(labels.astype(np.int64)) < 2 ** 24).all():
        return labels.astype(np.int64)
    # arbitrary labels: a stable hash, identical on every rank
    import zlib

    return np.array([zlib.crc32(repr(v).encode()) % (2 ** 24) for v in labels.tolist()], dtype=np.int64)
