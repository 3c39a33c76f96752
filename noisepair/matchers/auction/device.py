"""The auction that stays where the cost lives (``backend="device"``), built for a GPU.

Why: an auction needs hundreds to thousands of bidding rounds, and a solver that asks the host
after every round whether to go on (how many rows are free, which ones) spends its time waiting
for those answers, not bidding. Here the host looks only once per block of ``block`` rounds:

- **Prices first.** Column reduction, then a few log-domain Sinkhorn iterations (entropic OT,
  annealed down to a regularisation of ``eps / log n``) give prices close to optimal ones, so
  that the bidding starts three phases down epsilon-scaling, at image dimensions at its end.
- **Bidding in fixed shapes.** A round is Jacobi bidding as in Bertsekas' auction: every free row
  bids its best column's price plus the margin to its second best plus ``eps``; each column goes
  to its highest bidder. The free rows are gathered into a buffer of ``m`` slots (``m`` a power
  of two at least the free count, chosen by the host once per block: the free count never rises
  within a phase), so a round has the same shapes, and the same kernels, whatever the state. No
  round reads anything back: on CUDA the block of rounds is captured once per ``m`` in a CUDA
  graph and replayed; on CPU the same function runs eagerly.
- **An exact finish.** Once few rows are still free, their assignment to the unowned columns is
  solved exactly on the host (scipy on the small remainder) and the permutation certified; the
  long tail of single-row price wars is not waited for. While the certificate misses ``tol``,
  bidding goes on (the next phase of epsilon-scaling, or the same phase down to fewer free rows).

The certificate is LP duality as in the compiled auction: ``sum_i min_j (C_ij + p_j) - sum_j p_j``
is a lower bound on the optimum for any prices ``p``, so ``gap = primal - dual`` bounds the
distance of the permutation returned to the optimal total cost. At the last phase with every row
assigned, ``gap <= n * eps``, which ``eps`` is chosen to keep below ``tol``.
"""

from __future__ import annotations

import math
import threading
import warnings
from collections import OrderedDict

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

from noisepair.matchers.auction.common import auction_info

#: the phases of epsilon-scaling the Sinkhorn prices stand for: bidding starts at eps_top / theta^3
#: (or at the final eps, if larger), and Sinkhorn anneals down to that eps / log n.
WARM_PHASES = 3
#: the smallest bucket of free rows under CUDA graphs: below it a round costs the same on a GPU,
#: so fewer graphs are captured (eagerly, on a CPU, every row of the bucket costs time).
MIN_BUCKET = 64
#: CUDA graph sets kept (one per device, dtype, size and block length), least recently used out.
GRAPH_CACHE = 2


def device_auction(
    c: torch.Tensor,
    tol: float = 1e-3,
    theta: float = 6.0,
    eps0: float = 4.0,
    warm_start: int = 32,
    block: int = 8,
    max_rounds: int = 200_000,
    graphs: bool | None = None,
) -> tuple[torch.Tensor, dict]:
    """Assignment of a square torch matrix ``c`` to within ``tol`` of the optimal total cost.

    Returns ``(cols, info)``: ``cols[i]`` is the column of row i, a permutation on ``c``'s device;
    ``info`` holds the certificate (:func:`~noisepair.matchers.auction.common.auction_info`),
    ``blocks`` (host checks), ``finished_rows`` (rows the exact finish assigned), ``warm_start``,
    ``device_loop`` (``"cuda_graph"`` or ``"eager"``) and ``graph_replays`` (blocks replayed from
    a CUDA graph; a bucket's first block in a process runs eagerly, as the capture's warm-up).

    ``warm_start``: Sinkhorn iterations (0: prices from column reduction only, and
    epsilon-scaling from ``spread / eps0``). ``block``: rounds between host checks. ``graphs``:
    capture the blocks in CUDA graphs (default: on CUDA). ``max_rounds``: after that many rounds
    the remainder is finished exactly as it stands, and the bound reported may exceed ``tol``
    (``info["stopped"] = "max_rounds"``).
    """
    c = _checked(c)
    if c.shape[0] == 1:
        total = float(c[0, 0])
        cols = torch.zeros(1, dtype=torch.long, device=c.device)
        return cols, auction_info(0.0, total, total, total, 0, 0, 0.0, backend="device")
    graphs = c.is_cuda if graphs is None else bool(graphs) and c.is_cuda
    state = _graphed_state(c, block) if graphs else _Bidding(c, block)
    try:
        return _solve(state, tol, theta, eps0, int(warm_start), max_rounds)
    finally:
        state.close()


def _checked(c) -> torch.Tensor:
    if not torch.is_tensor(c):
        raise TypeError(f"the device auction takes a torch tensor, got {type(c).__name__}.")
    if c.ndim != 2 or c.shape[0] != c.shape[1] or c.shape[0] == 0:
        raise ValueError(
            f"the auction needs a square, non-empty cost matrix, got {tuple(c.shape)}; a "
            "rectangular cost has no permutation (pad it, or match equal numbers of samples "
            "and noises)."
        )
    if not c.is_floating_point() or c.dtype in (torch.float16, torch.bfloat16):
        c = c.float()  # prices must move by eps: half precisions cannot resolve it
    if not bool(torch.isfinite(c).all()):
        raise ValueError(
            "the cost matrix holds NaN or inf; the auction needs finite costs (rescale the "
            "samples, or compute the cost in float64)."
        )
    return c


def _solve(s: _Bidding, tol, theta, eps0, warm_start, max_rounds):
    c, n = s.c, s.n
    trace = float(c.diagonal().double().sum())
    colmin = c.min(0).values
    s.p.copy_(-colmin)  # column reduction: absorbs each noise's offset (its |z_j|^2)
    lower = _dual(c, s.p)  # a lower bound on the optimum (LP duality)
    magnitude = max(float(c.abs().max()), float(colmin.abs().max()), 1e-30)
    floor = 8 * torch.finfo(c.dtype).eps * magnitude  # prices cannot move by less
    eps_final = max(tol * abs(lower) / n, floor)
    rows = c[torch.linspace(0, n - 1, min(n, 256), device=c.device).long()] + s.p
    eps_top = max(float((rows.max(1).values - rows.min(1).values).mean()) / eps0, eps_final)
    eps, warmed = eps_top, 0
    if warm_start > 0 and eps_final > floor:
        start = max(eps_final, eps_top / theta**WARM_PHASES)
        p = sinkhorn_prices(c, s.p, start / math.log(n), warm_start, eps_top)
        if bool(torch.isfinite(p).all()):
            s.p.copy_(p)
            warmed = warm_start
            lower = max(lower, _dual(c, s.p))
            eps_final = max(tol * abs(lower) / n, floor)
            eps = max(start, eps_final)
    s.eps.fill_(eps)
    rounds = blocks = 0
    phases = 1
    finish_at = max(4, n // 64)  # free rows at which the exact finish is first tried
    while True:
        free = int((s.r2c[:n] < 0).sum())  # the one host read per block
        blocks += 1
        if free <= finish_at or rounds >= max_rounds:
            cols, finished = _finish(c, s.r2c[:n], s.owner[:n])
            gap, primal, dual, rmin = _certify(c, s.p, cols)
            if gap <= tol * abs(primal) or rounds >= max_rounds:
                break
            if eps > eps_final:  # the next phase re-prices the rest: its tail is not worth bidding
                eps = max(eps / theta, eps_final)
                phases += 1
                s.eps.fill_(eps)
                s.drop_slack(rmin, eps)
                free = int((s.r2c[:n] < 0).sum())
                finish_at = max(4, n // 64)
            elif free == 0:  # n * eps_final covers tol: only rounding leaves the gap above it
                break
            else:
                finish_at = free // 4
        if free:
            s.rounds(_bucket(free, n, s.min_bucket))
            rounds += s.block
    info = auction_info(
        gap,
        primal,
        dual,
        trace,
        rounds,
        phases,
        eps,
        backend="device",
        blocks=blocks,
        finished_rows=finished,
        warm_start=warmed,
        device_loop=s.loop,
        graph_replays=s.replays,
    )
    if gap > tol * abs(primal) and rounds >= max_rounds:
        info["stopped"] = "max_rounds"
    return cols, info


def _bucket(free: int, n: int, smallest: int) -> int:
    """Slots for the free rows: a power of two (few distinct shapes, so few graphs), at most n."""
    return min(n, max(smallest, 1 << max(free - 1, 0).bit_length()))


def sinkhorn_prices(
    c: torch.Tensor, p: torch.Tensor, reg: float, iters: int, start: float | None = None
) -> torch.Tensor:
    """Column prices near optimal ones: ``p - g`` for the column potential ``g`` of log-domain
    Sinkhorn on ``c + p`` (uniform marginals), its regularisation annealed geometrically from
    ``start`` down to ``reg`` over the first half of ``iters``, then held."""
    reduced = c + p
    g = torch.zeros_like(p)
    half = max(iters // 2, 1)
    anneal = max((start or reg) / reg, 1.0)
    for i in range(iters):
        r = reg * anneal ** max(0.0, 1.0 - i / half)
        f = torch.logsumexp(torch.sub(g, reduced).div_(r), 1).mul_(-r)
        g = torch.logsumexp(torch.sub(f[:, None], reduced).div_(r), 0).mul_(-r)
    return p - g


def bidding_rounds(c, p, r2c, owner, eps, m: int, rounds: int) -> None:
    """``rounds`` Jacobi bidding rounds, in place on prices ``p`` and the assignment (``r2c``:
    row -> column, ``owner``: column -> row, -1 for none; both with a last slot that absorbs
    writes meant for no one), for at most ``m`` free rows. Fixed shapes and no host read: a CUDA
    graph can capture it (and ``torch.compile(fullgraph=True)`` traces it without a break)."""
    n = c.shape[0]
    ar = torch.arange(n, device=c.device)
    sink = torch.full((m + 1,), n, dtype=torch.long, device=c.device)
    low = torch.full((n,), -math.inf, dtype=c.dtype, device=c.device)
    none = torch.full((n,), -1, dtype=torch.long, device=c.device)
    for _ in range(rounds):
        free = r2c[:n] < 0
        slot = torch.where(free, free.cumsum(0) - 1, m).clamp_(max=m)
        rows = sink.clone().scatter_(0, slot, ar)[:m]  # the free rows, then n (padding)
        valid = rows < n
        values = c.index_select(0, torch.where(valid, rows, 0)).add_(p)
        top, arg = values.topk(2, dim=1, largest=False)
        j = arg[:, 0]
        bid = torch.where(valid, p[j] + (top[:, 1] - top[:, 0]) + eps, -math.inf)
        best = low.clone().scatter_reduce_(0, j, bid, "amax")
        bidder = torch.where(valid & (bid >= best[j]), rows, -1)
        win = none.clone().scatter_reduce_(0, j, bidder, "amax")  # column -> its new owner
        won = win >= 0
        old = owner[:n]
        r2c.scatter_(0, torch.where(won & (old >= 0), old, n), -1)  # the outbid are free again
        r2c.scatter_(0, torch.where(won, win, n), ar)
        owner[:n] = torch.where(won, win, old)
        p.copy_(torch.where(won, best, p))


class _Bidding:
    """The auction's state on the cost's device, and its block of rounds run eagerly."""

    loop = "eager"
    replays = 0
    min_bucket = 1

    def __init__(self, c: torch.Tensor, block: int):
        self.c, self.n, self.block = c, c.shape[0], int(block)
        self.p = torch.empty(self.n, dtype=c.dtype, device=c.device)
        self.r2c = torch.full((self.n + 1,), -1, dtype=torch.long, device=c.device)
        self.owner = torch.full((self.n + 1,), -1, dtype=torch.long, device=c.device)
        self.eps = torch.zeros((), dtype=c.dtype, device=c.device)

    def rounds(self, m: int) -> None:
        bidding_rounds(self.c, self.p, self.r2c, self.owner, self.eps, m, self.block)

    def drop_slack(self, rmin: torch.Tensor, eps: float) -> None:
        """Free the rows whose column is more than ``eps`` above their best (``rmin``): epsilon
        complementary slackness for the next phase."""
        n = self.n
        r2c = self.r2c[:n]
        held = r2c >= 0
        col = torch.where(held, r2c, 0)
        slack = self.c[torch.arange(n, device=self.c.device), col] + self.p[col] - rmin
        drop = held & (slack > eps)
        self.owner.scatter_(0, torch.where(drop, r2c, n), -1)
        r2c.masked_fill_(drop, -1)

    def close(self) -> None:
        """The solve is over (its results copied out of the state)."""


class _Graphed(_Bidding):
    """The same state at fixed addresses, its block captured in one CUDA graph per bucket ``m``
    and replayed; cached between solves of the same shape (capture costs far more than replay).
    A lock serialises the solves that share it."""

    loop = "cuda_graph"
    min_bucket = MIN_BUCKET

    def __init__(self, c: torch.Tensor, block: int):
        super().__init__(torch.empty_like(c), block)
        self.lock = threading.Lock()
        self.graphs: dict[int, torch.cuda.CUDAGraph] = {}
        self.seen: set[int] = set()
        self.pool = torch.cuda.graph_pool_handle()
        self.failed: str | None = None

    def load(self, c: torch.Tensor) -> _Graphed:
        self.lock.acquire()
        self.c.copy_(c)
        self.r2c.fill_(-1)
        self.owner.fill_(-1)
        self.replays = 0
        return self

    def rounds(self, m: int) -> None:
        if self.failed or m not in self.seen:  # a first block of this shape: eager, a warm-up
            self.seen.add(m)
            return super().rounds(m)
        if m not in self.graphs:
            graph = torch.cuda.CUDAGraph()
            try:
                with torch.cuda.graph(graph, pool=self.pool, capture_error_mode="thread_local"):
                    super().rounds(m)
            except Exception as exc:  # the same rounds, eagerly: slower, never wrong
                self.failed = f"{type(exc).__name__}: {exc}"
                self.loop = f"eager (CUDA graph capture failed: {self.failed[:200]})"
                warnings.warn(f"the device auction runs eagerly: {self.loop}", stacklevel=4)
                return super().rounds(m)
            self.graphs[m] = graph
        self.graphs[m].replay()
        self.replays += 1

    def close(self) -> None:
        torch.cuda.current_stream(self.c.device).synchronize()  # the results left the buffers
        self.lock.release()


_GRAPHED: OrderedDict[tuple, _Graphed] = OrderedDict()
_GRAPHED_LOCK = threading.Lock()


def _graphed_state(c: torch.Tensor, block: int) -> _Graphed:
    key = (c.device, c.dtype, c.shape[0], int(block))
    with _GRAPHED_LOCK:
        state = _GRAPHED.pop(key, None) or _Graphed(c, block)
        _GRAPHED[key] = state
        while len(_GRAPHED) > GRAPH_CACHE:
            _GRAPHED.popitem(last=False)
    return state.load(c)


def _dual(c: torch.Tensor, p: torch.Tensor) -> float:
    """The LP dual value of prices ``p``: a lower bound on the optimal total cost."""
    return float((c + p).min(1).values.double().sum() - p.double().sum())


def _certify(c, p, cols):
    """``(gap, primal, dual, row minima of c + p)`` of the permutation ``cols`` under ``p``."""
    rmin = (c + p).min(1).values
    primal = float(c[torch.arange(c.shape[0], device=c.device), cols].double().sum())
    dual = float(rmin.double().sum() - p.double().sum())
    return max(primal - dual, 0.0), primal, dual, rmin


def _finish(c, r2c, owner) -> tuple[torch.Tensor, int]:
    """A permutation from the partial assignment: the free rows take the unowned columns by an
    exact assignment of that remainder, solved on the host (scipy). Returns it and its size."""
    rows = (r2c < 0).nonzero().squeeze(1)
    cols = r2c.clone()
    if rows.numel() == 0:
        return cols, 0
    free_cols = (owner < 0).nonzero().squeeze(1)
    sub = c[rows][:, free_cols].double().cpu().numpy()
    pick = linear_sum_assignment(sub)[1]
    cols[rows] = free_cols[torch.from_numpy(np.ascontiguousarray(pick)).to(c.device)]
    return cols, int(rows.numel())
