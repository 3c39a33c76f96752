"""The demo's embedded data: scikit-learn's 1,797 8x8 digits (shipped with it, no download),
the same digits projected by PCA to fewer dimensions, and 2-D toy sets made in code.

Every set is scaled to roughly unit range, like images in [-1, 1], so that N(0, I) noise and
data live on the same scale. The train/held-out split of the digits is fixed (it does not move
with the run's seed), so the metric always compares against the same held-out digits.

``digits-dK`` (K < 64) is the regime map's projection (benchmarks/regime.py): PCA to K
components fitted on the training digits, divided by one scalar so that the mean coordinate
variance is 1, like N(0, I)'s. The same 1,297 digits at a lower dimension: where matching
shortens paths most.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

#: data sets ``noisepair demo --data`` accepts (and ``digits-dK`` for any K from 1 to 63).
DATASETS = ("digits", "digits-d2", "digits-d8", "8gaussians", "moons", "checkerboard")
#: the 2-D toy sets.
TOY_SETS = ("8gaussians", "moons", "checkerboard")
#: held-out digits for the metric; the remaining 1,297 are trained on.
DIGITS_HELD_OUT = 500
#: size of the train/held-out sets drawn from the 2-D distributions.
TOY_TRAIN, TOY_HELD_OUT = 4000, 1000


def load(name: str = "digits") -> tuple[np.ndarray, np.ndarray]:
    """(train, held_out) float32 arrays of shape (N, D) for a data set of :data:`DATASETS`."""
    if name == "digits":
        return digits()
    if name.startswith("digits-d"):
        return digits_pca(_pca_dim(name))
    if name in TOY_SETS:
        rng = np.random.default_rng(1234)  # fixed: the data set is part of the benchmark
        data = toy_2d(name, TOY_TRAIN + TOY_HELD_OUT, rng)
        return data[:TOY_TRAIN], data[TOY_TRAIN:]
    raise ValueError(f"unknown data set {name!r}; choose one of {', '.join(DATASETS)}.")


def digits() -> tuple[np.ndarray, np.ndarray]:
    """The 8x8 digits as 64-d vectors in [-1, 1]: (1297 train, 500 held out), fixed split."""
    from sklearn.datasets import load_digits

    x = load_digits().data.astype(np.float32) / 16.0 * 2.0 - 1.0
    perm = np.random.default_rng(0).permutation(len(x))
    x = x[perm]
    return x[DIGITS_HELD_OUT:], x[:DIGITS_HELD_OUT]


def digits_pca(dim: int) -> tuple[np.ndarray, np.ndarray]:
    """The digits projected to ``dim`` PCA components (fitted on the training digits), scaled
    so that the mean coordinate variance is 1: (1297 train, 500 held out), fixed split."""
    from sklearn.decomposition import PCA

    train, held = digits()
    pca = PCA(n_components=dim, random_state=0).fit(train)
    train, held = pca.transform(train), pca.transform(held)
    scale = np.sqrt(train.var(0).mean())
    return (train / scale).astype(np.float32), (held / scale).astype(np.float32)


def _pca_dim(name: str) -> int:
    k = name.removeprefix("digits-d")
    if not k.isdigit() or not 1 <= int(k) < 64:
        raise ValueError(
            f"unknown data set {name!r}: digits-dK takes a dimension K from 1 to 63 (e.g. "
            "digits-d2); plain 'digits' is the 64-d set."
        )
    return int(k)


def toy_2d(name: str, n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` points of a 2-D toy distribution, scaled to about [-2, 2]."""
    if name == "8gaussians":
        angles = rng.integers(0, 8, n) * (np.pi / 4)
        centers = np.stack([np.cos(angles), np.sin(angles)], 1) * 2.0
        pts = centers + 0.15 * rng.standard_normal((n, 2))
    elif name == "moons":
        from sklearn.datasets import make_moons

        pts, _ = make_moons(n, noise=0.06, random_state=int(rng.integers(2**31)))
        pts = (pts - np.array([0.5, 0.25])) * 1.6
    elif name == "checkerboard":
        x1 = rng.uniform(-2, 2, n)
        x2 = rng.uniform(0, 1, n) + rng.integers(0, 2, n) * 2 - 2 + (np.floor(x1) % 2)
        pts = np.stack([x1, x2], 1)
    else:
        raise ValueError(f"unknown 2-D set {name!r}; choose one of {', '.join(TOY_SETS)}.")
    return pts.astype(np.float32)


class ShuffledBatches:
    """A minimal epoch loader: shuffled torch batches of a fixed array, ``drop_last``.

    The order depends only on (seed, epoch), set through :meth:`set_epoch` (which
    MatchedNoiseLoader forwards), so both arms of the demo see the same batches. With
    ``with_index`` each batch is ``(samples, their indices)``, which ``persistent=`` needs.
    """

    def __init__(self, data: np.ndarray, batch_size: int, seed: int = 0, with_index: bool = False):
        if batch_size > len(data):
            raise ValueError(
                f"batch size {batch_size} is larger than the {len(data)} training samples; "
                "use a smaller batch size."
            )
        self.data = data
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        self.with_index = bool(with_index)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.data) // self.batch_size

    def __iter__(self) -> Iterator:
        import torch

        order = np.random.default_rng([self.seed, self.epoch, 77]).permutation(len(self.data))
        for i in range(len(self)):
            idx = order[i * self.batch_size : (i + 1) * self.batch_size]
            batch = torch.from_numpy(self.data[idx])
            yield (batch, torch.from_numpy(idx)) if self.with_index else batch
