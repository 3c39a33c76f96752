"""The CPU backend of ``method="auction"``: an auction on a candidate graph, compiled with numba.

Why: on a CPU the torch auction spends its time in Python between bidding rounds, and
lapjv's Jonker-Volgenant on the full matrix is hard to beat. Here each sample keeps only its
``k`` to ``2k`` cheapest noises under column-reduced prices (plus the noise drawn for it, so that
a full assignment always exists), and a Gauss-Seidel auction with epsilon-scaling runs on that
sparse graph in compiled code. One pass over the full matrix then certifies the result (LP
duality: every row keeps its value, every column is priced so that no row prefers it); when the
bound misses ``tol``, rows that a column outside their candidates serves better get fresh
candidates under the current prices and bid again. The bound is on the gap to the optimum of
the full problem, not of the candidate graph; ``Auction`` falls back to lapjv when it stays above
``tol``.

Near-tied or near-duplicate rows (D=2, tight clusters) defeat the candidates: the bidding is
cut short and lapjv answers. Needs numba (the ``fast`` extra); without it ``method="auction"``
runs the device auction (:mod:`.device`) in torch.
"""

from __future__ import annotations

import numba
import numpy as np

from noisepair.matchers.auction.common import auction_info

_JIT = dict(nogil=True, cache=True)  # nogil: the prefetch thread solves while training runs
_FAST = dict(_JIT, fastmath={"reassoc", "nsz", "contract"})  # vectorised minima (no NaN/inf flags)
_BUCKETS = 64  # histogram buckets that locate a row's k-th smallest block minimum
_BLOCK = (
    16  # columns per block of the scan: a block whose minimum is above the threshold is skipped
)


@numba.njit(**_FAST)
def _scan(c, p, limit, k, cand, cval, deg, mins):
    """One pass over the rows: ``mins[i] = min_j c[i, j] + p[j]`` (the dual of the full problem),
    and new candidates for every row whose minimum lies below ``limit[i]``. Returns how many.

    A row's candidates are the ``k`` to ``2k`` columns of least ``c[i, j] + p[j]`` (all those
    below a threshold), the diagonal among them. The row is read once, vectorised, for the
    minimum of every block of 16 columns; a histogram of those minima gives a threshold that at
    least k blocks, so at least k columns, reach below, and only those blocks are read again.
    Where more than 2k columns fall below it, the threshold is bisected.
    """
    n_rows, n = c.shape
    n_blocks = (n + _BLOCK - 1) // _BLOCK
    whole = n // _BLOCK
    block_min = np.empty(n_blocks)
    low = min(max(k, 2), n)  # a bid needs a second-best column
    refreshed = 0
    for i in range(n_rows):
        best = np.inf
        for b in range(whole):
            v = np.inf
            for t in range(_BLOCK):
                v = min(v, c[i, b * _BLOCK + t] + p[b * _BLOCK + t])
            block_min[b] = v
            best = min(best, v)
        if whole < n_blocks:
            v = np.inf
            for j in range(whole * _BLOCK, n):
                v = min(v, c[i, j] + p[j])
            block_min[whole] = v
            best = min(best, v)
        mins[i] = best
        if best >= limit[i]:
            continue
        refreshed += 1
        if n_blocks >= 2 * low:  # at least `low` blocks, so as many columns, reach below it
            delta = _threshold(block_min, best, low) - best
        else:  # a short row (the blocks would not be selective): select on its values
            delta = _threshold(c[i] + p, best, low) - best
        count = _collect(c, p, i, block_min, -np.inf, best + delta, cand, cval, 0)
        lo, hi = 0.0, np.inf  # delta too small / too large
        for _ in range(60):
            if count > 2 * k:
                hi = delta
            elif count < low:
                lo = delta
            else:
                break
            delta = 0.5 * (lo + hi) if hi < np.inf else 2.0 * delta + 1e-300
            count = _collect(c, p, i, block_min, -np.inf, best + delta, cand, cval, 0)
        else:  # exact ties the bracket cannot split: all below it, then ties up to 2k
            count = _collect(c, p, i, block_min, -np.inf, best + lo, cand, cval, 0)
            count = min(
                _collect(c, p, i, block_min, best + lo, best + hi, cand, cval, count), 2 * k
            )
        has_diagonal = False
        for s in range(count):
            has_diagonal = has_diagonal or cand[i, s] == i
        if not has_diagonal:  # a perfect matching always exists in the graph
            cand[i, count] = i
            cval[i, count] = c[i, i]
            count += 1
        deg[i] = count
    return refreshed


@numba.njit(**_FAST)
def _threshold(values, lowest, k):
    """A value that at least ``k`` of ``values`` (whose minimum is ``lowest``) lie below: the top
    of the histogram bucket holding the k-th smallest (a selection without sorting)."""
    highest = values.max()
    counts = np.zeros(_BUCKETS + 1, np.int64)
    scale = _BUCKETS / max(highest - lowest, 1e-300)
    for v in values:
        counts[min(int((v - lowest) * scale), _BUCKETS)] += 1
    below = 0
    for b in range(_BUCKETS + 1):
        below += counts[b]
        if below >= k:
            return min(lowest + (b + 1) / scale, highest)
    return highest


@numba.njit(**_FAST)
def _collect(c, p, i, block_min, above, upto, cand, cval, start):
    """Append row i's columns with ``above < c[i, j] + p[j] <= upto`` to its candidates from
    slot ``start`` (as many as fit in the row's ``2k`` slots); returns how many there are."""
    n = c.shape[1]
    cap = cand.shape[1] - 1  # the last slot is kept for the diagonal
    count = start
    for b in range(block_min.shape[0]):
        if block_min[b] > upto:
            continue
        for j in range(b * _BLOCK, min(b * _BLOCK + _BLOCK, n)):
            v = c[i, j] + p[j]
            if above < v <= upto:
                if count < cap:
                    cand[i, count] = j
                    cval[i, count] = c[i, j]
                count += 1
    return count


@numba.njit(**_FAST)
def _col_min(c, u):
    """min_i (c[i, j] - u[i]) for every column."""
    out = np.full(c.shape[1], np.inf)
    for i in range(c.shape[0]):
        for j in range(c.shape[1]):
            out[j] = min(out[j], c[i, j] - u[i])
    return out


@numba.njit(**_JIT)
def _bid(cand, cval, deg, p, eps, r2c, owner, max_bids):
    """Gauss-Seidel auction: free rows bid until every row holds a column. Returns bids, or -1."""
    n = cand.shape[0]
    stack = np.empty(n, np.int64)
    top = 0
    for i in range(n):
        if r2c[i] < 0:
            stack[top] = i
            top += 1
    bids = 0
    while top > 0:
        top -= 1
        i = stack[top]
        best = np.inf
        second = np.inf
        jbest = -1
        for s in range(deg[i]):
            j = cand[i, s]
            v = cval[i, s] + p[j]
            if v < best:
                second = best
                best = v
                jbest = j
            elif v < second:
                second = v
        p[jbest] += second - best + eps
        old = owner[jbest]
        owner[jbest] = i
        r2c[i] = jbest
        if old >= 0:
            r2c[old] = -1
            stack[top] = old
            top += 1
        bids += 1
        if bids > max_bids:
            return -1
    return bids


@numba.njit(**_JIT)
def _release_slack(c, cand, cval, deg, p, eps, r2c, owner):
    """Free the rows whose column is no longer within eps of their best candidate."""
    for i in range(cand.shape[0]):
        best = np.inf
        for s in range(deg[i]):
            best = min(best, cval[i, s] + p[cand[i, s]])
        j = r2c[i]
        if c[i, j] + p[j] - best > eps:
            owner[j] = -1
            r2c[i] = -1


def candidate_auction(
    c: np.ndarray,
    tol: float = 1e-3,
    k: int = 48,
    theta: float = 5.0,
    eps0: float = 4.0,
    max_refresh: int = 2,
) -> tuple[np.ndarray, dict]:
    """Minimum-cost assignment of a square float matrix ``c`` to within ``tol`` of the optimum.

    Returns ``(cols, info)`` like :func:`~noisepair.matchers.auction.device.device_auction`:
    ``cols`` a permutation, ``info`` the certified ``gap`` (absolute) and ``gap_bound`` (relative
    to the total cost), ``gap_bound_gain``, ``auction_rounds`` (bids), ``auction_phases``,
    ``auction_eps``, ``candidates`` and ``refreshes``.
    """
    n = c.shape[0]
    c = np.ascontiguousarray(c)
    if c.dtype not in (np.float32, np.float64):
        c = c.astype(np.float32)
    ar = np.arange(n)
    trace = float(np.trace(c, dtype=np.float64))
    if n == 1:
        return ar, auction_info(0.0, trace, trace, trace, 0, 0, 0.0, candidates=k, refreshes=0)
    p = -c.min(0).astype(np.float64)  # column reduction, as Jonker-Volgenant
    cand = np.zeros((n, 2 * k + 1), np.int64)
    cval = np.zeros(cand.shape)
    deg = np.zeros(n, np.int64)
    mins = np.empty(n)
    _scan(c, p, np.full(n, np.inf), k, cand, cval, deg, mins)
    lower = float(mins.sum() - p.sum())  # a lower bound on the optimum (LP duality)
    filled = np.arange(cand.shape[1]) < deg[:, None]
    spread = float((np.where(filled, cval + p[cand], -np.inf).max(1) - mins).mean())
    magnitude = max(float(np.abs(p).max()), abs(float(c.max())), 1e-30)  # max |c|: min c = -max p
    floor = float(np.finfo(c.dtype).eps) * magnitude * 4
    if spread <= floor:  # every row (nearly) constant: any permutation is optimal
        return ar, auction_info(0.0, trace, trace, trace, 0, 0, 0.0, candidates=k, refreshes=0)
    eps_final = max(tol * abs(lower) / (2 * n), floor)  # 2 n eps_final of slack fits in tol
    eps = max(spread / eps0, eps_final)
    r2c = np.full(n, -1, np.int64)
    owner = np.full(n, -1, np.int64)
    bids = phases = refreshes = 0
    max_bids = 100 * n  # far above a phase's needs when the candidates suffice: stops a price war
    while True:
        phases += 1
        done = _bid(cand, cval, deg, p, eps, r2c, owner, max_bids)
        if done < 0:  # a bidding war the candidates cannot settle: no result, no bound
            return ar, auction_info(
                np.inf,
                trace,
                -np.inf,
                trace,
                bids + max_bids,
                phases,
                eps,
                candidates=k,
                refreshes=refreshes,
            )
        bids += done
        if eps > eps_final:
            eps = max(eps / theta, eps_final)
            _release_slack(c, cand, cval, deg, p, eps, r2c, owner)
            continue
        # Certify against the full matrix (LP duality): rows keep their values u_i, every column
        # is priced max_i (u_i - c_ij) so that no row prefers it; sum u - sum prices <= optimum.
        mine = c[ar, r2c] + p[r2c]
        primal = float(c[ar, r2c].sum(dtype=np.float64))
        dual = float(mine.sum() + _col_min(c, mine).sum())
        if primal - dual <= tol * abs(primal) or refreshes == max_refresh:
            break
        # Rows that a column outside their candidates serves better than their own (by more than
        # the 2 eps the auction leaves) get new candidates under the current prices and bid again.
        limit = mine - 2 * eps
        if _scan(c, p, limit, k, cand, cval, deg, mins) == 0:
            break
        refreshes += 1
        stale = np.flatnonzero(mins < limit)
        owner[r2c[stale]] = -1
        r2c[stale] = -1
    return r2c, auction_info(
        max(primal - dual, 0.0),
        primal,
        dual,
        trace,
        bids,
        phases,
        eps,
        candidates=k,
        refreshes=refreshes,
    )
