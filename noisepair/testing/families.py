"""Hard data families: batches that stress a matcher or a noise check.

Plain numpy, seeded by the caller's generator, so a hypothesis strategy, a benchmark and a
user's own test all draw the same data from the same seed. Each family breaks a different
assumption: an offset or a scale far from the noise's, clusters and near-duplicates (near-tied
costs), low rank, heavy tails, and the 2-D toy sets of the flow-matching papers.
"""

from __future__ import annotations

import numpy as np

#: families that take any item shape.
FAMILIES = ("shifted", "scaled", "clustered", "low_rank", "heavy_tailed", "near_duplicates")
#: 2-D toy sets: their items are points, shape (2,).
TOY_2D = ("moons", "eight_gaussians", "checkerboard")


def make_batch(family: str, b: int, shape: tuple, rng: np.random.Generator) -> np.ndarray:
    """A float64 batch of ``b`` items of ``shape`` from ``family``."""
    shape = tuple(shape)
    if family in TOY_2D:
        if shape != (2,):
            raise ValueError(
                f"{family!r} is a 2-D toy set: its items have shape (2,), not {shape}."
            )
        return _toy_2d(family, b, rng)
    if family not in FAMILIES:
        raise ValueError(f"unknown family {family!r}; choose from {FAMILIES + TOY_2D}.")
    d = int(np.prod(shape))
    if family == "shifted":
        x = rng.normal(size=(b, d)) + 3.0
    elif family == "scaled":
        x = rng.normal(size=(b, d)) * 10.0
    elif family == "clustered":
        centres = rng.uniform(-2, 2, size=(4, d))
        x = centres[rng.integers(0, 4, b)] + 0.05 * rng.normal(size=(b, d))
    elif family == "low_rank":
        x = rng.normal(size=(b, 2)) @ rng.normal(size=(2, d))
    elif family == "heavy_tailed":
        x = rng.standard_cauchy(size=(b, d)).clip(-1e3, 1e3)
    else:  # near-duplicates: a few points, each repeated with a jitter far below the noise scale
        base = rng.normal(size=(max(1, b // 4), d))
        x = base[rng.integers(0, len(base), b)] + 1e-6 * rng.normal(size=(b, d))
    return x.reshape(b, *shape)


def _toy_2d(family: str, b: int, rng: np.random.Generator) -> np.ndarray:
    if family == "moons":
        t = rng.uniform(0, np.pi, b)
        upper = rng.random(b) < 0.5
        x = np.where(
            upper[:, None], np.c_[np.cos(t), np.sin(t)], np.c_[1 - np.cos(t), 0.5 - np.sin(t)]
        )
        return x + 0.05 * rng.normal(size=(b, 2))
    if family == "eight_gaussians":
        angles = rng.integers(0, 8, b) * np.pi / 4
        return 2.0 * np.c_[np.cos(angles), np.sin(angles)] + 0.1 * rng.normal(size=(b, 2))
    u = rng.uniform(-2, 2, size=(b, 2))  # checkerboard: keep the squares whose indices sum even
    flip = (np.floor(u[:, 0]) + np.floor(u[:, 1])) % 2 == 1
    u[flip, 1] = (u[flip, 1] + 3) % 4 - 2  # one square over: the parity flips
    return u
