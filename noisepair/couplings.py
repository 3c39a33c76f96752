"""How a match group gets its noise: one class per coupling, chosen once per loader.

- :class:`BatchMatching`: the group's own draws, assigned by the matcher (Immiscible
  Diffusion's per batch, DANSM's scope of k batches). Keeps no state.
- :class:`PoolMatching`: DANSM's noise pool (:mod:`noisepair.pool`). Its state carries on
  across groups, passes and epochs.
- :class:`RankMatching`: the global batch of all torch.distributed ranks in one assignment
  (:mod:`noisepair.distributed`).
- :class:`SemiDiscreteNoise`: SD-FM's semi-discrete coupling, where the noise picked the data
  (:mod:`noisepair.semidiscrete`): each batch gets the very noise that chose its samples.
- LOOM-CFM's persistent seeds: :class:`noisepair.persistent.PersistentMatching`.

A coupling with state keeps it itself and hands out *markers*: ``mark()`` after a group is
paired, ``rewind(marker)`` when a pass starts from a position, ``export(marker)`` for a
``state_dict`` (plain Python: it must load under ``torch.load(weights_only=True)``) and
``restore(state) -> marker`` for ``load_state_dict``. Positions hold markers, never the state.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from noisepair.backend import flat, get_backend
from noisepair.distributed import pair_across_ranks
from noisepair.noise import draw_like
from noisepair.pairing import pair
from noisepair.pool import NoisePool


@dataclass(frozen=True)
class Group:
    """Where a match group's noise comes from: rank ``rank``'s stream of ``seed`` in
    ``epoch``, batches numbered from ``first``; ``exchange`` talks to the other ranks; ``ids``
    names the data point of each sample (``persistent=``)."""

    seed: int
    rank: int
    epoch: int
    first: int
    exchange: Any = None
    ids: Any = None

    def draws(self, like: Any, sizes: list[int], candidates: int = 1, rank: int | None = None):
        """Rank ``rank``'s (default: this rank's) draws for batches of ``sizes`` items."""
        rank = self.rank if rank is None else rank
        d = [
            draw_like(
                like,
                n * candidates,
                seed=self.seed,
                rank=rank,
                epoch=self.epoch,
                index=self.first + j,
            )
            for j, n in enumerate(sizes)
        ]
        return d[0] if len(d) == 1 else get_backend(*d).concat(d)


class Stateless:
    """A coupling that keeps no state: a batch's position is the whole story."""

    def mark(self) -> Any:
        return None

    def rewind(self, marker: Any, seed: int, rank: int) -> None:
        pass

    def export(self, marker: Any) -> Any:
        return None

    def restore(self, state: Any) -> Any:
        if state is not None:
            raise ValueError(
                "the state holds a noise pool's or seed table's state, but this loader matches "
                "per batch: build it with the pool=/persistent= setting the state was saved with."
            )
        return None


class BatchMatching(Stateless):
    """Each group's own draws (one stream per batch index), assigned to its samples."""

    def __init__(self, matcher: Any, metric: str, precision: str):
        self.matcher, self.metric, self.precision = matcher, metric, precision

    def pair(self, x: Any, sizes: list[int], labels: Any, group: Group) -> tuple[Any, dict]:
        z = group.draws(x, sizes, self.matcher.candidates)
        idx, info = pair(
            x, z, self.matcher, metric=self.metric, precision=self.precision, groups=labels
        )
        return z[idx], info


class RankMatching(BatchMatching):
    """The global batch of all ranks in one assignment; the group's exchange moves the costs
    (none in a single process: then it is per-batch matching)."""

    def pair(self, x: Any, sizes: list[int], labels: Any, group: Group) -> tuple[Any, dict]:
        if group.exchange is None:
            return super().pair(x, sizes, labels, group)

        def draw(rank: int, rank_sizes: list[int]) -> Any:
            return group.draws(x, rank_sizes, rank=rank)

        return pair_across_ranks(
            group.exchange,
            x,
            sizes,
            draw,
            self.matcher,
            metric=self.metric,
            precision=self.precision,
            groups=labels,
        )


class SemiDiscreteNoise(Stateless):
    """The noise of a batch a :class:`~noisepair.semidiscrete.SemiDiscreteBatchSampler` chose:
    batch ``index`` of ``epoch`` was drawn by its noise, row k choosing sample k, so the noise
    is regenerated and delivered as drawn (exactly N(0, I); the data, not the noise, follow the
    coupling). Keeps no state: the batch's position is the whole story."""

    def __init__(self, sampler: Any):
        self.sampler = sampler

    def pair(self, x: Any, sizes: list[int], labels: Any, group: Group) -> tuple[Any, dict]:
        began = time.perf_counter()
        b = get_backend(x)
        parts, offset = [], 0
        for j, n in enumerate(sizes):
            z = self.sampler.noise(group.epoch, group.first + j, like=x[offset : offset + n])
            if len(z) != n:
                raise ValueError(
                    f"batch {group.first + j} has {n} samples but its sampler drew "
                    f"{len(z)} noises: keep the DataLoader's batches whole (no drop or filter)."
                )
            parts.append(z)
            offset += n
        z = parts[0] if len(parts) == 1 else b.concat(parts)
        d = b.float64(flat(x)) - b.float64(flat(z))
        matched, n = float((d * d).sum()), len(x)
        random = random_pairing_cost(x, z)
        info = {
            "method": "semidiscrete",
            "cost": matched / n,
            "cost_random": random,
            "cost_ratio": matched / n / random if random > 0 else 1.0,
            "seconds": time.perf_counter() - began,
            "exact_permutation": True,  # the noise as drawn; the data were chosen by it
            "gap_bound": None,
            "batch_size": n,
        }
        return z, info


def random_pairing_cost(x: Any, z: Any) -> float:
    """The mean squared distance of a uniformly random pairing of the rows of ``x`` and ``z``:
    the mean over all pairs, |x|^2 + |z|^2 - 2 x.z averaged, in closed form."""
    xf, zf = (get_backend(a).float64(flat(a)) for a in (x, z))
    mx, mz = xf.mean(0), zf.mean(0)
    return float((xf * xf).sum(1).mean() + (zf * zf).sum(1).mean() - 2 * (mx * mz).sum())


class PoolMatching:
    """DANSM's noise pool: the marker is the pool's (small) state itself."""

    def __init__(self, pool: NoisePool):
        self.pool = pool

    def pair(self, x: Any, sizes: list[int], labels: Any, group: Group) -> tuple[Any, dict]:
        return self.pool.take(x, labels)

    def mark(self) -> Any:
        return self.pool.state_dict()

    def rewind(self, marker: Any, seed: int, rank: int) -> None:
        self.pool.seed, self.pool.rank = seed, rank
        self.pool.load_state_dict(marker if marker is not None else self.pool.empty_state())

    def export(self, marker: Any) -> Any:
        return marker if marker is not None else self.pool.empty_state()

    def restore(self, state: Any) -> Any:
        if state is None:
            raise ValueError(
                "the state holds no noise pool, but this loader has pool="
                f"{self.pool.size}: build it without pool= to resume that state."
            )
        self.pool.check_state(state)
        return state
