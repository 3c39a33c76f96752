"""The dense auction in torch, for costs on a GPU (and the CPU fallback without numba).

All unassigned rows bid at once (Jacobi auction): each takes its best and second-best column
under the current prices, bids the difference plus ``eps``, and every column goes to its highest
bidder. Phases divide ``eps`` by ``theta`` and keep the pairs that still satisfy eps-complementary
slackness. The loop runs where the cost lives, so on a CUDA tensor cost and assignment stay on
the GPU (the only host traffic is a few scalars per round to decide whether to go on).

Every phase ends with a certified bound: with prices ``p`` the value
``sum_i min_j (C_ij + p_j) - sum_j p_j`` is a lower bound on the optimum (LP duality), so
``gap_bound = (primal - dual) / primal`` bounds how far the permutation returned is from the
optimal total cost. The solver stops as soon as that bound is below ``tol`` (relative to the total
cost); ``info["gap_bound_gain"]`` states the same gap relative to the improvement over random
pairing (total cost falls only a few percent at image dimensions, so a small share of the total
can be a large share of the improvement: both are reported).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from noisepair.backend import get_backend
from noisepair.matchers.auction.common import auction_info


def auction_on_torch(cost: Any, **options) -> tuple[Any, dict]:
    """:func:`auction` on any cost (a tensor stays where it is, other arrays are copied to a CPU
    tensor); the columns come back in the cost's framework and on its device."""
    b = get_backend(cost)
    on_torch = b.name == "torch"
    c = cost if on_torch else torch.from_numpy(np.ascontiguousarray(b.to_numpy(cost)))
    if not c.is_floating_point() or c.dtype in (torch.float16, torch.bfloat16):
        c = c.float()
    cols, info = auction(c, **options)
    return (cols if on_torch else b.as_index(cols.numpy(), cost)), dict(info, backend="torch")


def auction(c, tol: float = 1e-3, theta: float = 6.0, eps0: float = 4.0, max_rounds: int = 200_000):
    """Minimum-cost assignment of a square torch matrix ``c`` to within ``tol`` of the optimum.

    Returns ``(cols, info)``: ``cols[i]`` is the column of row i (a permutation, on ``c``'s
    device) and ``info`` holds ``gap`` (primal - dual, absolute), ``gap_bound`` (relative to the
    total cost), ``gap_bound_gain`` (relative to the gain over the identity pairing),
    ``auction_rounds``, ``auction_phases`` and ``auction_eps``.
    """
    n = c.shape[0]
    if c.ndim != 2 or c.shape[1] != n:
        raise ValueError(f"the auction needs a square cost matrix, got {tuple(c.shape)}.")
    dev, dt = c.device, c.dtype
    ar = torch.arange(n, device=dev)
    if n == 1:
        return ar.clone(), auction_info(0.0, 0.0, 0.0, 0.0, 0, 0, 0.0)
    # Column reduction (as Jonker-Volgenant): prices start at -min_i C_ij, which absorbs the
    # per-noise offsets (|z_j|^2) that would otherwise take many bidding rounds to discover.
    p = -c.min(0).values
    rowmin = c.min(1).values
    lower = float(rowmin.double().sum())  # a lower bound on the optimum (prices 0)
    sample = (
        c[torch.linspace(0, n - 1, min(n, 256), device=dev).long()] + p
    )  # spread from <= 256 rows
    spread = float((sample.max(1).values - sample.min(1).values).mean())
    del sample
    # float32 prices cannot move by less than a few ulps of the costs' magnitude: floor eps there
    floor = 1e-6 * max(float(c.abs().max()), float(p.abs().max()), 1e-30)
    if spread <= floor:  # every row is (nearly) constant: every permutation is optimal
        return ar.clone(), auction_info(0.0, 0.0, 0.0, 0.0, 0, 0, 0.0)
    eps_final = max(tol * abs(lower) / n, floor)
    eps = max(spread / eps0, eps_final)
    owner = torch.full((n,), -1, dtype=torch.long, device=dev)  # column -> row
    r2c = torch.full((n,), -1, dtype=torch.long, device=dev)  # row -> column
    neg_inf = torch.tensor(-float("inf"), dtype=dt, device=dev)
    rounds = phases = 0
    trace = float(c.diagonal().double().sum())
    while True:
        phases += 1
        while True:
            free = (r2c < 0).nonzero().squeeze(1)
            k = free.numel()
            if k == 0:
                break
            rounds += 1
            if rounds > max_rounds:
                raise RuntimeError(
                    f"auction did not converge in {max_rounds} rounds (eps={eps:.3g})."
                )
            values = c + p if k == n else torch.index_select(c, 0, free).add_(p)
            top, arg = values.topk(2, dim=1, largest=False)
            j1 = arg[:, 0]
            bid = p[j1] + (top[:, 1] - top[:, 0]) + eps
            best = neg_inf.expand(n).clone().scatter_reduce_(0, j1, bid, "amax")
            cand = torch.where(bid >= best[j1], free, -1)
            win = torch.full((n,), -1, dtype=torch.long, device=dev).scatter_reduce_(
                0, j1, cand, "amax"
            )
            won = (win >= 0).nonzero().squeeze(1)
            old = owner[won]
            r2c[old[old >= 0]] = -1
            w = win[won]
            owner[won] = w
            r2c[w] = won
            p[won] = best[won]
        reduced = c + p
        rmin = reduced.min(1).values
        primal = float(c[ar, r2c].double().sum())
        dual = float(rmin.double().sum() - p.double().sum())
        gap = max(primal - dual, 0.0)
        if gap <= tol * abs(primal) or eps <= eps_final:
            break
        eps = max(eps / theta, eps_final)
        drop = (reduced[ar, r2c] - rmin) > eps  # pairs no longer eps-optimal start over
        owner[r2c[drop]] = -1
        r2c[drop] = -1
        del reduced
    return r2c, auction_info(gap, primal, dual, trace, rounds, phases, eps)
