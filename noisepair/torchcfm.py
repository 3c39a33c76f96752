"""torchcfm's minibatch OT flow matching with noisepair's pairing: change one import.

    -from torchcfm.conditional_flow_matching import (
    +from noisepair.torchcfm import (
         ConditionalFlowMatcher,
         ExactOptimalTransportConditionalFlowMatcher,
         TargetConditionalFlowMatcher,
         VariancePreservingConditionalFlowMatcher,
     )

The flow matchers are torchcfm's own classes (the three without OT are re-exported unchanged;
the OT one subclasses torchcfm's and only swaps its ``ot_sampler``), so t, x_t, u_t and eps
come from torchcfm's formulas. :class:`OTPlanSampler` has the methods of torchcfm's
(``get_map``, ``sample_map``, ``sample_plan``, ``sample_plan_with_labels``) and differs where
torchcfm 1.0.7 is a problem for noise pairing (its issues #142, #19, #135, #117/#120/#132, #136):

- **A true permutation.** torchcfm draws B pairs from the exact plan *with replacement*, so
  about 37% of x0 and of x1 are left out of each step and others repeat. Here every row of x0
  is paired with exactly one row of x1: the noise stays exactly the N(0, I) draws.
  ``replace=True`` is still there, opt-in, for torchcfm's sampling of the plan.
- **x1 keeps its order**; only x0 moves. Labels, captions and any per-sample condition the
  caller holds stay aligned with x1 without reindexing (torchcfm reorders both).
- **The cost on the tensors' device** (torchcfm copies it to the host for POT). ``method`` is
  ``"exact"`` (noisepair's ``auto``: the fastest exact solver for the batch) or any noisepair
  permutation matcher (``"auction"`` on a GPU, ...).
- **Labels as conditions**: noise only moves between rows of the same label
  (:meth:`OTPlanSampler.sample_plan_with_labels` says exactly what is returned).
- ``across_ranks=True``: one assignment over the global batch of all ranks (torch.distributed),
  with :mod:`noisepair.distributed`: each rank computes its rows of the global cost, rank 0
  solves, every rank gets its x0. x0 itself is all-gathered (it is the caller's, not a seeded
  draw another rank could regenerate).
- An OT batch larger than the training batch (#135): the OT batch is what a call is given.
  Pair a large batch once and slice the result into training steps: since x1 keeps its
  order, the slices use every pair exactly once. Where the large batch cannot be loaded at
  once, ``MatchedNoiseLoader(loader, scope=k)`` matches k consecutive batches together.

Not here: torchcfm's Schrödinger-bridge matcher and its ``"sinkhorn"``/``"unbalanced"``/
``"partial"`` plans, which sample an entropic or partial plan on purpose (a permutation would
be another method), and ``sample_trajectory`` (OT through a time series of populations).
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import torch
from torchcfm import conditional_flow_matching as _cfm
from torchcfm.conditional_flow_matching import (
    ConditionalFlowMatcher,
    TargetConditionalFlowMatcher,
    VariancePreservingConditionalFlowMatcher,
    pad_t_like_x,
)

from noisepair.matchers import Matcher, Selector, get_matcher
from noisepair.pairing import as_labels, pair

#: torchcfm's plans that are not permutations on purpose.
NOT_PERMUTATIONS = ("unbalanced", "partial")
#: torchcfm's OTPlanSampler options for its POT solvers (refused: none means the same here).
TORCHCFM_OPTIONS = ("reg", "reg_m", "normalize_cost", "num_threads", "warn")


class OTPlanSampler:
    """Pairs x0 (source, usually noise) with x1 (target, the data) by an optimal assignment.

    ``method``: ``"exact"`` (noisepair's ``auto``: scipy or POT's network simplex at D <= 3,
    lapjv above) or a noisepair permutation matcher by name, instance or callable, with its
    ``method_options``. Note that ``"sinkhorn"`` is noisepair's: the entropic plan *rounded to
    a permutation*, not torchcfm's plan sampled with replacement. ``precision``: the cost's
    (``"float32"`` default). ``across_ranks``: match the global batch of all ranks (every rank
    calls the sampler at the same steps); ``timeout``: seconds a rank waits for the others.
    ``last_info`` holds the last pairing's info (costs matched and as given, the solver, ...).
    """

    def __init__(
        self,
        method: Any = "exact",
        *,
        precision: str = "float32",
        across_ranks: bool = False,
        timeout: float = 300.0,
        **method_options,
    ):
        self.matcher = _matcher(method, method_options)
        self.precision = precision
        self.across_ranks = bool(across_ranks)
        self.timeout = float(timeout)
        self.last_info: dict | None = None
        self._exchange = None

    # -- torchcfm's methods ----------------------------------------------------------------
    def get_map(self, x0: torch.Tensor, x1: torch.Tensor) -> np.ndarray:
        """The plan as torchcfm returns it: a (B, B) numpy array, ``pi[i, j]`` the mass moved
        from x0[i] to x1[j]; here a permutation matrix / B (this process's tensors only)."""
        if self.across_ranks:
            raise ValueError(
                "get_map returns the plan between this process's tensors; with across_ranks=True "
                "call sample_plan (or sample_plan_with_labels) for the global batch's pairing."
            )
        return _plan(self._index(x0, x1, None, None)[0])

    def sample_map(
        self, pi: np.ndarray, batch_size: int, replace: bool = False
    ) -> tuple[np.ndarray, np.ndarray]:
        """``(i, j)``: ``batch_size`` pairs drawn from ``pi`` with probability ``pi[i, j]``, as
        torchcfm draws them (numpy's global RNG), but without replacement by default, and in
        x1 order: from a permutation plan the full batch gives ``j = arange(B)``; a smaller
        ``batch_size`` gives that many distinct pairs."""
        p = np.asarray(pi, dtype=np.float64).reshape(-1)
        choices = np.random.choice(p.size, size=batch_size, p=p / p.sum(), replace=replace)
        i, j = np.divmod(choices, pi.shape[1])
        order = np.lexsort((i, j))
        return i[order], j[order]

    def sample_plan(
        self, x0: torch.Tensor, x1: torch.Tensor, replace: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(x0[idx], x1)``: x0 reordered by the optimal assignment, x1 as given.

        ``replace=True`` is torchcfm's sampling: B pairs drawn from the plan with replacement
        (rows of both go missing and repeat), ``(x0[i], x1[j])``."""
        if replace:
            i, j = self.sample_map(self.get_map(x0, x1), x0.shape[0], replace=True)
            return x0[i], x1[j]
        return self._pair(x0, x1, None, None)[0], x1

    def sample_plan_with_labels(
        self,
        x0: torch.Tensor,
        x1: torch.Tensor,
        y0: Any = None,
        y1: Any = None,
        replace: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor, Any, Any]:
        """``(x0[idx], x1, y0_out, y1)``: the optimal assignment among pairs of equal label.

        - ``y1`` only (noise x0 for labelled data): x0 row i may pair with x1 row j only when
          ``y1[i] == y1[j]``: the noise drawn for a class stays in that class, so each class's
          noise is exactly its own N(0, I) draws. ``y0_out`` is None.
        - ``y0`` only: likewise with ``y0``; ``y0_out`` is ``y0`` (a row's label never changes).
        - both: x0 row i may pair with x1 row j only when ``y0[i] == y1[j]``; each label must
          occur equally often in ``y0`` and ``y1`` (in the global batch with ``across_ranks``).
          ``y0_out`` is y0 reordered with x0, so ``y0_out == y1`` elementwise.
        - neither: :meth:`sample_plan`, with ``y0_out = y1 = None``.

        Labels: one per row (tensor, array or list), compared by value; NaN is refused.
        ``replace=True``: torchcfm's sampling with replacement, of this label-respecting plan.
        """
        if replace:
            i, j = self.sample_map(_plan(self._index(x0, x1, y0, y1)[0]), len(x0), replace=True)
            return x0[i], x1[j], None if y0 is None else y0[i], None if y1 is None else y1[j]
        x0_out, y0_out = self._pair(x0, x1, y0, y1)
        return x0_out, x1, y0_out, y1

    # -- the pairing -----------------------------------------------------------------------
    def _pair(self, x0, x1, y0, y1) -> tuple[torch.Tensor, Any]:
        """x0 reordered for x1, and y0 with it (None without y0)."""
        if self.across_ranks and _world() > 1:
            return self._pair_across_ranks(x0, x1, y0, y1)
        idx, y0_out = self._index(x0, x1, y0, y1)
        return x0[torch.as_tensor(idx, device=x0.device)], y0_out

    def _index(self, x0, x1, y0, y1) -> tuple[np.ndarray, Any]:
        """``(idx, y0_out)`` in this process: x0[idx][j] is paired with x1[j]."""
        _check_pair(x0, x1)
        n = x0.shape[0]
        if n == 1:
            warnings.warn(
                "a batch of one: the OT pairing has nothing to exchange, the pair is returned "
                "as given (drop_last=True on the DataLoader avoids a last batch of one).",
                stacklevel=3,
            )
        base, groups = _label_plan(_labels(y0, n, "y0"), _labels(y1, n, "y1"))
        z = x0 if base is None else x0[torch.as_tensor(base, device=x0.device)]
        cols, self.last_info = pair(x1, z, self.matcher, precision=self.precision, groups=groups)
        cols = cols.cpu().numpy()
        idx = cols if base is None else base[cols]
        return idx, _take(y0, idx)

    def _pair_across_ranks(self, x0, x1, y0, y1) -> tuple[torch.Tensor, Any]:
        """The global batch's assignment: x0 is all-gathered, the cost rows go to rank 0."""
        from noisepair.distributed import RankExchange, pair_across_ranks

        if self._exchange is None:  # collective: every rank makes its first call together
            device = x1.device if isinstance(x1, torch.Tensor) else None
            self._exchange = RankExchange(timeout=self.timeout, device=device)
        exchange = self._exchange
        agreed = exchange.steps
        try:
            _check_pair(x0, x1)
            n = x0.shape[0]
            a0, a1 = _labels(y0, n, "y0"), _labels(y1, n, "y1")
            gathered: dict = {}

            def draw(r: int, sizes: list[int]) -> torch.Tensor:
                if not gathered:  # the first call on every rank, after the step was agreed
                    gathered.update(_gather_step(exchange, x0, a0, a1))
                return gathered["x0"][gathered["offsets"][r] : gathered["offsets"][r + 1]]

            x0_out, self.last_info = pair_across_ranks(
                exchange,
                x1,
                [n],
                draw,
                self.matcher,
                precision=self.precision,
                groups=a1 if a1 is not None else a0,
            )
        except BaseException:
            if exchange.steps == agreed:  # failed before the step: tell the ranks waiting in it
                exchange.fail()
            raise
        if y0 is None or a1 is None:
            return x0_out, y0  # a row's own label (y0 only) or no label
        mine = slice(gathered["offsets"][exchange.rank], gathered["offsets"][exchange.rank + 1])
        return x0_out, _like(gathered["y0"][mine], y0)


class ExactOptimalTransportConditionalFlowMatcher(_cfm.ExactOptimalTransportConditionalFlowMatcher):
    """torchcfm's OT-CFM (its t, x_t, u_t, eps and both sampling methods, inherited), paired by
    noisepair's :class:`OTPlanSampler`; ``sampler_options`` go to it (``method``,
    ``across_ranks``, ...)."""

    def __init__(self, sigma: float = 0.0, **sampler_options):
        super().__init__(sigma)
        self.ot_sampler = OTPlanSampler(**sampler_options)


# -- helpers ---------------------------------------------------------------------------------
def _matcher(method: Any, options: dict) -> Matcher | Selector:
    given = sorted(set(options) & set(TORCHCFM_OPTIONS))
    if given:
        raise TypeError(
            f"{', '.join(given)}: options of torchcfm's POT solvers, which an exact assignment "
            "does not need: drop them. Options given here go to the noisepair matcher (e.g. "
            "tol= for method='auction'; noisepair's sinkhorn takes method=Sinkhorn(reg=...), "
            "reg relative to the median cost)."
        )
    if method in NOT_PERMUTATIONS:
        raise ValueError(
            f"method={method!r} is torchcfm's {method} OT, a plan that is not a permutation on "
            "purpose; use torchcfm's own OTPlanSampler for it. This sampler pairs by permutation "
            "(method='exact' or a noisepair matcher)."
        )
    matcher = get_matcher("auto" if method == "exact" else method, **options)
    if not matcher.permutation or matcher.candidates != 1:
        raise ValueError(
            f"method={method!r} picks among fresh draws per sample, so it cannot reorder a given "
            "x0; choose a permutation matcher ('exact', 'auction', 'greedy', 'sinkhorn', ...)."
        )
    return matcher


def _check_pair(x0: Any, x1: Any) -> None:
    """Clear errors for what cannot be paired, named as torchcfm names the tensors."""
    for name, t in (("x0", x0), ("x1", x1)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} is a {type(t).__name__}; torchcfm's API takes torch tensors.")
        if not t.is_floating_point():
            raise TypeError(
                f"{name} has dtype {t.dtype}; flow matching pairs floating-point tensors "
                "(convert with .float())."
            )
        if t.ndim < 1 or t.shape[0] == 0:
            raise ValueError(f"{name} has shape {tuple(t.shape)}: it needs rows to pair.")
        # NaN and inf propagate through a sum: one reduction, the count only when it is not finite
        bad = 0 if bool(torch.isfinite(t.sum())) else int((~torch.isfinite(t)).sum())
        if bad:
            raise ValueError(
                f"{name} holds {bad} non-finite values (NaN/inf); the distances to them are "
                "undefined. Fix the data or the noise before pairing."
            )
    if x0.shape != x1.shape:
        raise ValueError(
            f"x0 has shape {tuple(x0.shape)} and x1 {tuple(x1.shape)}: a permutation pairs two "
            "batches of one shape (torchcfm allowed batch sizes to differ only by sampling the "
            "plan with replacement). Draw x0 like x1, e.g. torch.randn_like(x1)."
        )
    if x0.device != x1.device:
        raise ValueError(f"x0 is on {x0.device} and x1 on {x1.device}; put both on one device.")


def _labels(y: Any, n: int, name: str) -> np.ndarray | None:
    if y is None:
        return None
    try:
        return as_labels(y, n)
    except ValueError as exc:
        raise ValueError(f"{name}: {exc}") from None


def _label_plan(a0: np.ndarray | None, a1: np.ndarray | None):
    """``(base, groups)``: x0[base] puts, in row j, an x0 row labelled like x1 row j (None when
    x0 is not relabelled), and ``groups`` the labels within which the assignment may move x0."""
    if a0 is None or a1 is None:
        return None, a1 if a1 is not None else a0
    o0, o1 = np.argsort(a0, kind="stable"), np.argsort(a1, kind="stable")
    if a0.shape != a1.shape or not np.array_equal(a0[o0], a1[o1]):
        l0, c0 = np.unique(a0, return_counts=True)
        l1, c1 = np.unique(a1, return_counts=True)
        n0, n1 = dict(zip(l0.tolist(), c0.tolist())), dict(zip(l1.tolist(), c1.tolist()))
        differ = {k: (n0.get(k, 0), n1.get(k, 0)) for k in n0.keys() | n1.keys()}
        differ = {k: v for k, v in differ.items() if v[0] != v[1]}
        raise ValueError(
            "y0 and y1 hold different label counts (label: (in y0, in y1)) "
            f"{dict(sorted(differ.items(), key=str)[:8])}; pairing only equal labels needs each "
            "label equally often in both. Pass y1 alone to pair noise within the classes of x1."
        )
    base = np.empty_like(o0)
    base[o1] = o0
    return base, a1


def _plan(idx: np.ndarray) -> np.ndarray:
    """The plan of a pairing, as torchcfm's get_map gives one: x0[idx[j]] -> x1[j], mass 1/B."""
    n = len(idx)
    pi = np.zeros((n, n))
    pi[idx, np.arange(n)] = 1.0 / n
    return pi


def _take(y: Any, idx: np.ndarray) -> Any:
    if y is None:
        return None
    if isinstance(y, torch.Tensor):
        return y[torch.as_tensor(idx, device=y.device)]
    return np.asarray(y)[idx] if isinstance(y, np.ndarray) else [y[i] for i in idx]


def _like(values: np.ndarray, y: Any) -> Any:
    """Labels gathered as numpy, back in ``y``'s form (tensor on its device, array or list)."""
    if isinstance(y, torch.Tensor):
        return torch.as_tensor(values, device=y.device).to(y.dtype)
    return values if isinstance(y, np.ndarray) else values.tolist()


def _world() -> int:
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        raise RuntimeError(
            "across_ranks=True needs torch.distributed initialised on every rank (torchrun, "
            "then torch.distributed.init_process_group) before the first call."
        )
    return dist.get_world_size()


def _gather_step(exchange: Any, x0: torch.Tensor, a0, a1) -> dict:
    """Every rank's x0 (in rank order, on x0's device), the row offsets per rank and, with two
    label sets, the global x0 relabelled like the global x1 (:func:`_label_plan`)."""
    import torch.distributed as dist

    group, device = exchange.group, exchange.device
    n = torch.tensor([x0.shape[0]], device=device)
    sizes = [torch.empty_like(n) for _ in range(exchange.world)]
    dist.all_gather(sizes, n, group=group)
    sizes = [int(s) for s in sizes]
    padded = torch.zeros((max(sizes), *x0.shape[1:]), dtype=x0.dtype, device=device)
    padded[: x0.shape[0]] = x0
    parts = [torch.empty_like(padded) for _ in sizes]
    dist.all_gather(parts, padded, group=group)
    out = {
        "x0": torch.cat([p[:s] for p, s in zip(parts, sizes)]).to(x0.device),
        "offsets": np.concatenate([[0], np.cumsum(sizes)]).tolist(),
    }
    if a0 is not None and a1 is not None:
        labels = [None] * exchange.world
        dist.all_gather_object(labels, (a0, a1), group=group)
        g0 = np.concatenate([lab[0] for lab in labels])
        base, _ = _label_plan(g0, np.concatenate([lab[1] for lab in labels]))
        out["x0"] = out["x0"][torch.as_tensor(base, device=x0.device)]
        out["y0"] = g0[base]
    return out


__all__ = [
    "OTPlanSampler",
    "ExactOptimalTransportConditionalFlowMatcher",
    "ConditionalFlowMatcher",
    "TargetConditionalFlowMatcher",
    "VariancePreservingConditionalFlowMatcher",
    "pad_t_like_x",
]
