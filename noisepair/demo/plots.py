"""The demo's figures (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

COLORS = {"random": "#d62728", "matched": "#1f77b4"}


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def count_crossings(z: np.ndarray, x: np.ndarray) -> int:
    """Number of pairs of 2-D segments z[i]->x[i], z[j]->x[j] that properly cross."""
    p, r = np.asarray(z, np.float64), np.asarray(x, np.float64) - np.asarray(z, np.float64)
    d = p[None, :, :] - p[:, None, :]  # p_j - p_i
    cross = r[:, None, 0] * r[None, :, 1] - r[:, None, 1] * r[None, :, 0]  # r_i x r_j
    with np.errstate(divide="ignore", invalid="ignore"):
        t = (d[..., 0] * r[None, :, 1] - d[..., 1] * r[None, :, 0]) / cross  # along i
        u = (d[..., 0] * r[:, None, 1] - d[..., 1] * r[:, None, 0]) / cross  # along j
    hit = (np.abs(cross) > 1e-12) & (t > 0) & (t < 1) & (u > 0) & (u < 1)
    return int(np.triu(hit, 1).sum())


def pair_2d(name: str, batch: int, seed: int, method: str) -> tuple[np.ndarray, np.ndarray, dict]:
    """One batch of a 2-D set with noise paired by ``method`` through MatchedNoiseLoader."""
    from noisepair.demo.data import toy_2d
    from noisepair.loader import MatchedNoiseLoader

    x = toy_2d(name, batch, np.random.default_rng([seed, 5]))
    loader = MatchedNoiseLoader([x], method=method, seed=seed, prefetch=0)
    pb = next(iter(loader))
    loader.close()
    return pb.sample, pb.noise, pb.info


def crossing_stats(name: str, batch: int = 64, batches: int = 20, seed: int = 0) -> dict:
    """Mean crossings and squared path length per batch, random vs hungarian pairing."""
    out: dict[str, Any] = {"data": name, "batch_size": batch, "batches": batches}
    for arm, method in (("random", "random"), ("matched", "hungarian")):
        cr, cost = [], []
        for b in range(batches):
            x, z, info = pair_2d(name, batch, seed + b, method)
            cr.append(count_crossings(z, x))
            cost.append(info["cost"])
        out[arm] = {
            "crossings_mean": float(np.mean(cr)),
            "sq_path_length_mean": float(np.mean(cost)),
        }
    return out


def plot_paths_2d(
    path: Path, names=("8gaussians", "moons"), batch: int = 64, seed: int = 0
) -> dict:
    """DANSM's picture: straight noise->sample paths, random vs matched, with crossings counted."""
    plt = _plt()
    fig, axes = plt.subplots(len(names), 2, figsize=(9, 4.4 * len(names)), squeeze=False)
    counts: dict[str, dict] = {}
    for row, name in enumerate(names):
        counts[name] = {}
        for col, (arm, method) in enumerate((("random", "random"), ("matched", "hungarian"))):
            x, z, info = pair_2d(name, batch, seed, method)
            n_cross = count_crossings(z, x)
            counts[name][arm] = {"crossings": n_cross, "sq_path_length": info["cost"]}
            ax = axes[row, col]
            for zi, xi in zip(z, x):
                ax.plot([zi[0], xi[0]], [zi[1], xi[1]], color=COLORS[arm], alpha=0.45, lw=0.8)
            ax.scatter(z[:, 0], z[:, 1], s=10, c="0.4", label="noise z ~ N(0, I)", zorder=3)
            ax.scatter(x[:, 0], x[:, 1], s=10, c="k", marker="x", label="sample x", zorder=3)
            ax.set_title(
                f"{name}: {arm} pairing ({method})\n{n_cross} crossings, "
                f"mean |x - z|^2 = {info['cost']:.2f}",
                fontsize=10,
            )
            ax.set_aspect("equal")
            ax.set_xlim(-3.5, 3.5)
            ax.set_ylim(-3.5, 3.5)
            if row == 0 and col == 0:
                ax.legend(loc="lower left", fontsize=8)
    fig.suptitle(
        f"Noise-to-sample paths of one batch of {batch}: matching keeps the same noise "
        "draws, only reassigns them",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return counts


def plot_quality(
    path: Path,
    steps: list[int],
    curves: dict[str, dict[str, list[float]]],
    headline: str,
    target: float,
    steps_to_target: dict,
    floor: float | None,
) -> None:
    """W2 to held-out data vs training step, one panel per sampler step count."""
    plt = _plt()
    names = list(next(iter(curves.values())).keys())
    fig, axes = plt.subplots(1, len(names), figsize=(4.6 * len(names), 3.8), squeeze=False)
    for ax, name in zip(axes[0], names):
        for arm, arm_curves in curves.items():
            ax.plot(steps, arm_curves[name], "-o", ms=2.5, color=COLORS[arm], label=arm)
        if floor is not None:
            ax.axhline(floor, color="0.5", ls=":", lw=1, label="real data (floor)")
        if name == headline:
            ax.axhline(target, color="0.2", ls="--", lw=1, label="target: random's final")
            for arm, s in steps_to_target.items():
                if s is not None:
                    ax.axvline(s, color=COLORS[arm], ls="--", lw=1)
            ax.set_title(f"{name} (headline)", fontsize=10, fontweight="bold")
        else:
            ax.set_title(name, fontsize=10)
        ax.set_xlabel("training step")
        ax.set_ylabel("W2 to held-out data (lower is better)")
        lo = min(min(min(c[name]) for c in curves.values()), floor if floor is not None else np.inf)
        hi = max(np.percentile(c[name], 90) for c in curves.values())
        ax.set_ylim(lo - 0.05 * (hi - lo), hi + 0.1 * (hi - lo))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_samples(
    path: Path,
    samples: dict[str, dict[str, np.ndarray]],
    reference: np.ndarray,
    image_shape: tuple[int, int] | None,
) -> None:
    """Samples of both arms at the last checkpoint, per sampler step count, next to real data.

    ``samples``: arm -> sampler label -> (n, D) array. Images are shown as grids of 8x8 digits;
    2-D sets as scatter plots.
    """
    plt = _plt()
    arms = list(samples)
    labels = list(next(iter(samples.values())))
    fig, axes = plt.subplots(
        len(arms),
        len(labels) + 1,
        figsize=(2.9 * (len(labels) + 1), 3.0 * len(arms)),
        squeeze=False,
    )
    for r, arm in enumerate(arms):
        panels = [("real (held out)", reference)] + [
            (f"{arm}, {lab}", samples[arm][lab]) for lab in labels
        ]
        for c, (title, data) in enumerate(panels):
            ax = axes[r, c]
            if image_shape is not None:
                ax.imshow(_grid(data[:64], image_shape), cmap="gray_r", vmin=-1, vmax=1)
                ax.set_xticks([])
                ax.set_yticks([])
            else:
                ax.scatter(data[:, 0], data[:, 1], s=2, alpha=0.5, c="k" if c == 0 else COLORS[arm])
                ax.set_xlim(-3, 3)
                ax.set_ylim(-3, 3)
                ax.set_aspect("equal")
            ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _grid(images: np.ndarray, shape: tuple[int, int], cols: int = 8) -> np.ndarray:
    h, w = shape
    n = len(images)
    rows = -(-n // cols)
    canvas = np.full((rows * (h + 1) + 1, cols * (w + 1) + 1), -1.0)
    for i, img in enumerate(np.clip(images, -1, 1)):
        r, c = divmod(i, cols)
        canvas[1 + r * (h + 1) : 1 + r * (h + 1) + h, 1 + c * (w + 1) : 1 + c * (w + 1) + w] = (
            img.reshape(h, w)
        )
    return canvas
