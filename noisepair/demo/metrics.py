"""The demo's quality metric: exact 2-Wasserstein distance to held-out data.

W2 between the empirical distribution of n generated samples and the n held-out samples, on
the squared Euclidean cost, in the data space itself (64-d pixels for the digits, 2-d for the
toy sets). Two clouds of equal size are solved as an assignment (the optimal plan between two
uniform n-point clouds is a permutation: Birkhoff), unequal ones with POT's network simplex
(``ot.emd2``); both are exact. No learned feature extractor, no download: lower is better, and
the value a perfect model would get is not 0 but the W2 between two finite samples of the data
(reported as ``w2_floor``).

Whether two arms differ is judged against how much the curves still move at the end of
training (:func:`compare`): with one seed per arm, a gap smaller than that could reverse if
training stopped a checkpoint earlier or later.
"""

from __future__ import annotations

import numpy as np


def w2(a: np.ndarray, b: np.ndarray) -> float:
    """Exact W2 between two point clouds (uniform weights)."""
    from scipy.optimize import linear_sum_assignment
    from scipy.spatial.distance import cdist

    a = np.asarray(a, dtype=np.float64).reshape(len(a), -1)
    b = np.asarray(b, dtype=np.float64).reshape(len(b), -1)
    cost = cdist(a, b, "sqeuclidean")
    if len(a) == len(b):
        value = cost[linear_sum_assignment(cost)].mean()
    else:
        import ot

        value = ot.emd2(
            np.full(len(a), 1 / len(a)), np.full(len(b), 1 / len(b)), cost, numItermax=10_000_000
        )
    return float(np.sqrt(max(value, 0.0)))


def w2_floor(train: np.ndarray, held_out: np.ndarray, seed: int = 0) -> float:
    """W2 between held-out data and as many real training samples: the best a model can do."""
    n = min(len(held_out), len(train))
    idx = np.random.default_rng(seed).choice(len(train), n, replace=False)
    return w2(train[idx], held_out[:n])


def smooth(values: list[float], window: int = 3) -> list[float]:
    """Trailing mean over ``window`` checkpoints (fewer at the start)."""
    out = []
    for i in range(len(values)):
        chunk = values[max(0, i - window + 1) : i + 1]
        out.append(float(np.mean(chunk)))
    return out


def steps_to_target(
    steps: list[int], values: list[float], target: float, window: int = 3
) -> int | None:
    """First checkpoint step whose trailing mean (``window`` checkpoints) is <= ``target``."""
    for s, v in zip(steps, smooth(values, window)):
        if v <= target + 1e-12:
            return int(s)
    return None


def speedup(steps: list[int], baseline: list[float], other: list[float], window: int = 3) -> dict:
    """How much sooner ``other`` reaches the baseline's final quality.

    The target is the baseline's final quality, the mean of its last ``window`` checkpoints;
    each arm reaches it at the first checkpoint where its trailing ``window``-mean is at or
    below it. ``speedup`` = baseline's steps / other's steps; when ``other`` never reaches the
    target, ``speedup`` is the upper bound baseline's steps / last step and ``reached`` is False.
    """
    target = smooth(baseline, window)[-1]
    s_base = steps_to_target(steps, baseline, target, window)
    s_other = steps_to_target(steps, other, target, window)
    if s_other is None:
        return {
            "target": target,
            "steps_baseline": s_base,
            "steps_other": None,
            "speedup": s_base / steps[-1],
            "reached": False,
        }
    return {
        "target": target,
        "steps_baseline": s_base,
        "steps_other": s_other,
        "speedup": s_base / s_other,
        "reached": True,
    }


def compare(random: list[float], matched: list[float], window: int = 3) -> dict:
    """The matched arm's final quality against random's, and whether the gap is within noise.

    Final quality: the mean of the last ``window`` checkpoints. ``noise``: twice the RMS change
    from one checkpoint to the next over the second half of training, both arms pooled; a gap
    no larger than that is ``within_noise`` (the curves still move that much, so the order
    could reverse if training stopped a checkpoint earlier or later).
    """
    final_r, final_m = smooth(random, window)[-1], smooth(matched, window)[-1]
    half = len(random) // 2
    moves = np.concatenate([np.diff(np.asarray(c[half:], dtype=float)) for c in (random, matched)])
    noise = 2.0 * float(np.sqrt(np.mean(moves**2))) if moves.size else 0.0
    return {
        "final": {"random": final_r, "matched": final_m},
        "change": (final_m - final_r) / final_r if final_r else 0.0,
        "noise": noise,
        "within_noise": bool(abs(final_m - final_r) <= noise),
    }


def adaptive_nfe(field, z, rtol: float = 1e-5, atol: float = 1e-5) -> int:
    """Evaluations of ``field(x, t)`` that scipy's adaptive RK45 needs to carry all of ``z``
    from t=0 to 1 as one ODE (OT-CFM's straightness metric: a straight field needs few)."""
    import torch
    from scipy.integrate import solve_ivp

    shape = tuple(z.shape)

    def f(t, y):
        with torch.no_grad():
            x = torch.from_numpy(y.astype(np.float32)).reshape(shape)
            return (
                field(x, torch.full((shape[0],), float(t))).numpy().reshape(-1).astype(np.float64)
            )

    y0 = np.asarray(z, dtype=np.float64).reshape(-1)
    return int(solve_ivp(f, (0.0, 1.0), y0, method="RK45", rtol=rtol, atol=atol).nfev)


def discretisation_error(sample, z, steps=(1, 2, 4), reference: int = 100) -> dict[int, float]:
    """E|Phi_K(z) - Phi_ref(z)|^2 for each K in ``steps``: how far K sampler steps land from a
    fine solve of the same ODE. Needs no data; 0 for a perfectly straight field."""
    ref = np.asarray(sample(z, reference))
    return {k: float(((np.asarray(sample(z, k)) - ref) ** 2).sum(1).mean()) for k in steps}
