"""The demo's figures (matplotlib, Agg backend: no display needed).

Every figure says what was trained (data set, model, steps) and comes from the run itself:
the samples of its final models, the curves of its checkpoints, the pairs of its first batch.
"""

from __future__ import annotations

import re
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


def first_batches(train: np.ndarray, batch_size: int, seed: int, count: int, **arm):
    """The first ``count`` PairedBatches an arm trained on (same loader, seed and pairing)."""
    from noisepair.demo.train import arm_loader

    loader = arm_loader(train, batch_size, seed=seed, prefetch=0, **arm)
    try:
        return [pb for _, pb in zip(range(count), loader)]  # no batch pulled past count
    finally:
        loader.close()


def plot_paths_2d(
    path: Path,
    train: np.ndarray,
    description: str,
    *,
    batch_size: int,
    seed: int,
    method: str,
    batches: int = 20,
    **options,
) -> dict:
    """DANSM's picture on the run's own 2-D training data: the noise-to-sample segments of its
    first training batch as drawn (random arm) and as matched (matched arm), crossings counted;
    and the mean crossings over its first ``batches`` batches."""
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(10, 5.6), layout="constrained")
    pairs = {
        "random": first_batches(train, batch_size, seed, batches, method="random"),
        "matched": first_batches(train, batch_size, seed, batches, method=method, **options),
    }
    stats: dict[str, Any] = {"one_batch": {}, "mean_over_batches": {"batch_size": batch_size}}
    for ax, (arm, pbs) in zip(axes, pairs.items()):
        crossings = [count_crossings(pb.noise.numpy(), pb.sample.numpy()) for pb in pbs]
        costs = [pb.info["cost"] for pb in pbs]
        stats["mean_over_batches"][arm] = {
            "crossings_mean": float(np.mean(crossings)),
            "sq_path_length_mean": float(np.mean(costs)),
            "batches": len(pbs),
        }
        stats["one_batch"][arm] = {"crossings": crossings[0], "sq_path_length": costs[0]}
        x, z = pbs[0].sample.numpy(), pbs[0].noise.numpy()
        for zi, xi in zip(z, x):
            ax.plot([zi[0], xi[0]], [zi[1], xi[1]], color=COLORS[arm], alpha=0.4, lw=0.7)
        ax.scatter(z[:, 0], z[:, 1], s=8, c="0.45", label="noise z ~ N(0, I)", zorder=3)
        ax.scatter(x[:, 0], x[:, 1], s=10, c="k", marker="x", label="training sample x", zorder=3)
        label = "as drawn" if arm == "random" else f"matched ({method})"
        ax.set_title(
            f"{arm} arm: noise {label}\n{crossings[0]} crossings, mean |x - z|^2 = {costs[0]:.2f}",
            fontsize=10,
        )
        ax.set_aspect("equal")
        lim = 1.05 * max(np.abs(x).max(), np.abs(z).max())
        ax.set_xlim(-lim, lim)
        ax.set_ylim(-lim, lim)
        ax.legend(loc="lower left", fontsize=8)
    fig.suptitle(
        f"{description}, trained in this run: the noise-to-sample pairs of its first training "
        f"batch of {batch_size}\n(the same noise draws in both arms; matching only reassigns them)",
        fontsize=10,
    )
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return stats


def plot_quality(path: Path, runs: dict[str, dict], trained: str) -> None:
    """W2 to held-out data vs training step: one row per data set, one panel per sampler step
    count, the matched arm's final change (and whether it is within noise) in each panel."""
    plt = _plt()
    metrics = list(next(iter(runs.values()))["by_sampler"])
    fig, axes = plt.subplots(
        len(runs),
        len(metrics),
        figsize=(4.6 * len(metrics), 3.6 * len(runs)),
        squeeze=False,
        layout="constrained",
    )
    for row, run in zip(axes, runs.values()):
        steps, floor = run["checkpoints"], run["w2_floor"]
        for ax, metric in zip(row, metrics):
            for arm, curves in run["curves"].items():
                ax.plot(steps, curves[metric], "-o", ms=2.5, color=COLORS[arm], label=arm)
            ax.axhline(floor, color="0.5", ls=":", lw=1, label="real data (floor)")
            c = run["by_sampler"][metric]
            verdict = "within noise" if c["within_noise"] else "beyond noise"
            ax.text(
                0.97,
                0.95,
                f"matched {c['change'] * 100:+.0f}% ({verdict})",
                transform=ax.transAxes,
                ha="right",
                va="top",
                fontsize=9,
                bbox={"facecolor": "white", "alpha": 0.8, "edgecolor": "0.8"},
            )
            n = re.search(r"\d+$", metric)[0]
            bold = metric == run["metric"]
            ax.set_title(
                f"{run['description']}\n{n} sampler step{'s' if n != '1' else ''}"
                + (" (speedup metric)" if bold else ""),
                fontsize=9,
                fontweight="bold" if bold else "normal",
            )
            ax.set_xlabel("training step")
            ax.set_ylabel("W2 to held-out data")
            values = [v for curves in run["curves"].values() for v in curves[metric]]
            lo = min(min(values), floor)
            hi = max(np.percentile(curves[metric], 90) for curves in run["curves"].values())
            ax.set_ylim(lo - 0.05 * (hi - lo), hi + 0.15 * (hi - lo))
            ax.grid(alpha=0.3)
    axes[0, 0].legend(fontsize=8, loc="best")
    fig.suptitle(
        f"Quality during training, random vs matched pairing ({trained}); lower is better",
        fontsize=10,
    )
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_samples(
    path: Path,
    runs: dict[str, dict],
    samples: dict[str, dict[str, dict[int, np.ndarray]]],
    held_out: dict[str, np.ndarray],
    trained: str,
) -> None:
    """Per data set: held-out data once, then each arm's samples from the same noise with 1, 4
    and 50 sampler steps. Digits (64-d) as 8x8 images, 2-D sets as scatter plots."""
    plt = _plt()
    fig = plt.figure(figsize=(12, 5.4 * len(runs)), layout="constrained")
    for sub, (name, run) in zip(np.atleast_1d(fig.subfigures(len(runs), 1)), runs.items()):
        arms = samples[name]
        steps = list(next(iter(arms.values())))
        grid = sub.add_gridspec(len(arms), len(steps) + 1)
        image = run["dim"] == 64
        real = sub.add_subplot(grid[:, 0])
        _show(real, held_out[name], image, "k")
        shown = min(64, len(held_out[name])) if image else len(held_out[name])
        real.set_title(f"real: {shown} of {len(held_out[name])} held out", fontsize=9)
        for r, (arm, by_steps) in enumerate(arms.items()):
            for c, n in enumerate(steps):
                ax = sub.add_subplot(grid[r, c + 1])
                _show(ax, by_steps[n], image, COLORS[arm], reference=held_out[name])
                ax.set_title(
                    f"{arm}: {n} step{'s' if n > 1 else ''}", fontsize=9, color=COLORS[arm]
                )
        what = (
            "64 samples each"
            if image
            else "grey: held-out data"
            + ("" if run["dim"] == 2 else f"; first 2 of {run['dim']} coordinates")
        )
        sub.suptitle(
            f"{run['description']}: samples of the final models from the same noise ({what})\n"
            f"trained: {trained}",
            fontsize=10,
        )
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _show(ax, data: np.ndarray, image: bool, color, reference: np.ndarray | None = None) -> None:
    if image:
        ax.imshow(_grid(data[:64], (8, 8)), cmap="gray_r", vmin=-1, vmax=1)
    else:
        if reference is not None:
            ax.scatter(reference[:, 0], reference[:, 1], s=2, c="0.8")
        ax.scatter(data[:, 0], data[:, 1], s=2, alpha=0.6, c=color)
        lim = 1.1 * np.abs(reference if reference is not None else data).max()
        ax.set_xlim(-lim, lim)
        ax.set_ylim(-lim, lim)
        ax.set_aspect("equal")
    ax.set_xticks([])
    ax.set_yticks([])


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
