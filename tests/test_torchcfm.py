"""noisepair.torchcfm against the real torchcfm (1.0.7, installed --no-deps) and POT's exact OT.

For one pairing, the flow matcher gives torchcfm's own t, x_t, u_t and eps; the pairing is an
optimal assignment (POT's exact optimum, as torchcfm's exact plan is), a permutation on any
batch, label-respecting, across two real ranks the global optimum; bad input gets a clear
error; and torchcfm's CIFAR-10 training loop (examples/images/cifar10/train_cifar10.py) runs
with the one-import drop-in and with MatchedNoiseLoader around its ``infiniteloop``.
"""

from __future__ import annotations

import os
import pickle

import numpy as np
import ot
import pytest
import torch
import torch.distributed as dist
from hypothesis import given, settings
from hypothesis import strategies as st
from ranks import join_gloo, spawn_ranks
from torch.utils.data import DataLoader, TensorDataset
from torchcfm import conditional_flow_matching as cfm
from torchcfm.models.unet.unet import UNetModelWrapper
from torchcfm.optimal_transport import OTPlanSampler as TorchcfmSampler

from noisepair import MatchedNoiseLoader
from noisepair.noise import draw_like
from noisepair.torchcfm import (
    ConditionalFlowMatcher,
    ExactOptimalTransportConditionalFlowMatcher,
    OTPlanSampler,
)


def batch(b: int, d: int, seed: int = 0, shape: tuple = ()) -> tuple[torch.Tensor, torch.Tensor]:
    """(x0, x1): N(0, I) noise and 4 well-separated clusters, float32."""
    g = torch.Generator().manual_seed(seed)
    x1 = 0.5 * torch.randn(b, d, generator=g) + 2.0 * torch.randint(0, 4, (b, 1), generator=g)
    x0 = torch.randn(b, d, generator=g)
    return (x0.reshape(b, *shape), x1.reshape(b, *shape)) if shape else (x0, x1)


def sq(a: torch.Tensor) -> np.ndarray:
    return a.reshape(len(a), -1).double().numpy()


def total(x0: torch.Tensor, x1: torch.Tensor) -> float:
    """The total squared distance of the pairs (x0[i], x1[i]), in float64."""
    return float(((sq(x0) - sq(x1)) ** 2).sum())


def optimum(x0: torch.Tensor, x1: torch.Tensor) -> float:
    """The exact OT optimum (POT's network simplex) as a total over the batch, in float64."""
    a, b = sq(x0), sq(x1)
    w = np.full(len(a), 1.0 / len(a))
    return float(ot.emd2(w, w, ot.dist(a, b), numItermax=10_000_000)) * len(a)


def sources(out: torch.Tensor, x0: torch.Tensor) -> np.ndarray:
    """For each row of ``out``, the row of ``x0`` it is (rows of x0 are distinct here)."""
    eq = (sq(out)[:, None, :] == sq(x0)[None, :, :]).all(-1)
    assert (eq.sum(1) == 1).all(), "a row of the output is not exactly one row of x0"
    return eq.argmax(1)


def missing(out: torch.Tensor, rows: torch.Tensor) -> int:
    return len(rows) - len(np.unique(sq(out), axis=0))


# -- the math is torchcfm's ---------------------------------------------------------------------
@pytest.mark.parametrize("sigma", [0.0, 0.25])
@pytest.mark.parametrize("shape", [(), (2, 3, 3)], ids=["flat", "image"])
def test_same_t_xt_ut_eps_as_torchcfm_for_the_same_pairing(sigma, shape):
    x0, x1 = batch(32, int(np.prod(shape or (5,))), seed=1, shape=shape)
    y1 = torch.arange(32) % 3
    ours = ExactOptimalTransportConditionalFlowMatcher(sigma=sigma)
    assert isinstance(ours, cfm.ExactOptimalTransportConditionalFlowMatcher)
    theirs = cfm.ExactOptimalTransportConditionalFlowMatcher(sigma=sigma)
    paired = OTPlanSampler().sample_plan(x0, x1)
    paired_y = OTPlanSampler().sample_plan_with_labels(x0, x1, None, y1)
    # torchcfm's own matcher, given our pairing in place of its sampled plan
    theirs.ot_sampler.sample_plan = lambda a, b: paired
    theirs.ot_sampler.sample_plan_with_labels = lambda a, b, c, d: paired_y
    for t in (None, torch.rand(32, generator=torch.Generator().manual_seed(2))):
        torch.manual_seed(5)
        got = ours.sample_location_and_conditional_flow(x0, x1, t=t, return_noise=True)
        torch.manual_seed(5)
        want = theirs.sample_location_and_conditional_flow(x0, x1, t=t, return_noise=True)
        for g, w in zip(got, want):
            assert torch.equal(g, w)
        torch.manual_seed(6)
        got = ours.guided_sample_location_and_conditional_flow(x0, x1, y1=y1, return_noise=True)
        torch.manual_seed(6)
        want = theirs.guided_sample_location_and_conditional_flow(x0, x1, y1=y1, return_noise=True)
        assert got[3] is None and torch.equal(got[4], y1)
        for g, w in zip(got, want):
            assert g is w is None or torch.equal(g, w)
    # and that pairing is x1 in its order with x0 reordered: u_t = x1 - x0[idx] at sigma 0
    t, xt, ut = ExactOptimalTransportConditionalFlowMatcher().sample_location_and_conditional_flow(
        x0, x1
    )
    assert torch.equal(ut, x1 - paired[0]) and paired[1] is x1


# -- optimal, a permutation, labels respected ----------------------------------------------------
@pytest.mark.parametrize("b,d", [(16, 2), (128, 2), (64, 16), (128, 64)])
def test_optimal_where_torchcfms_exact_plan_is_and_a_permutation(b, d):
    x0, x1 = batch(b, d, seed=b + d)
    out, same = OTPlanSampler().sample_plan(x0, x1)
    assert same is x1
    assert sorted(sources(out, x0)) == list(range(b))
    best = optimum(x0, x1)
    assert total(out, x1) == pytest.approx(best, rel=1e-6)
    np.random.seed(0)  # torchcfm samples its plan with numpy's global RNG
    theirs = TorchcfmSampler("exact")
    t0, t1 = theirs.sample_plan(x0, x1, replace=False)  # its exact plan, drawn whole
    assert total(t0, t1) == pytest.approx(best, rel=1e-6)
    t0, t1 = theirs.sample_plan(x0, x1)  # its default: pairs drawn with replacement
    assert missing(t0, x0) > 0 and missing(t1, x1) > 0
    # torchcfm's sample_map on our plan: without replacement, the whole batch in x1 order
    sampler = OTPlanSampler()
    i, j = sampler.sample_map(sampler.get_map(x0, x1), b)
    assert np.array_equal(j, np.arange(b)) and torch.equal(x0[i], out)
    # replace=True, opt-in: torchcfm's sampling of our plan, pairs of the optimum, rows missing
    r0, r1 = sampler.sample_plan(x0, x1, replace=True)
    assert np.array_equal(sources(out, x0)[sources(r1, x1)], sources(r0, x0))
    assert missing(r0, x0) > 0


@settings(max_examples=40, deadline=None)
@given(
    b=st.integers(2, 40),
    d=st.integers(1, 6),
    classes=st.integers(1, 4),
    labels=st.sampled_from(["none", "y0", "y1", "both"]),
    seed=st.integers(0, 2**32 - 1),
)
def test_any_batch_is_a_permutation_optimal_within_labels(b, d, classes, labels, seed):
    rng = np.random.default_rng(seed)
    x0 = torch.from_numpy(rng.standard_normal((b, d), dtype=np.float32))
    x1 = torch.from_numpy(rng.standard_normal((b, d), dtype=np.float32) * 2 + 1)
    y = torch.from_numpy(rng.integers(0, classes, b))
    y0 = y[torch.from_numpy(rng.permutation(b))] if labels in ("y0", "both") else None
    y1 = y if labels in ("y1", "both") else None
    out, same, y0_out, y1_out = OTPlanSampler().sample_plan_with_labels(x0, x1, y0, y1)
    assert same is x1 and y1_out is y1
    src = sources(out, x0)
    assert sorted(src) == list(range(b))  # no x0 row repeated, none missing
    # where x0 may go: rows of x1 of its own label (its row's label when x0 has none)
    own = {"none": None, "y0": y0, "y1": y1, "both": y0}[labels]
    target = {"none": None, "y0": y0, "y1": y1, "both": y1}[labels]
    if own is not None:
        assert torch.equal(own[src], target)
    if y0 is not None:
        assert torch.equal(y0_out, y0[src])
    # optimal within the labels: the sum of the exact optima of each label's pairs
    keys = [None] if own is None else torch.unique(target).tolist()
    best = 0.0
    for k in keys:
        rows = slice(None) if k is None else (target == k).numpy()
        cols = slice(None) if k is None else (own == k).numpy()
        best += optimum(x0[cols], x1[rows])
    assert total(out, x1) == pytest.approx(best, rel=1e-5, abs=1e-6)


def test_labels_keep_noise_within_a_class_where_torchcfm_mixes_them():
    x0, x1 = batch(96, 8, seed=3)
    y1 = torch.arange(96) % 4
    y0 = y1[torch.randperm(96, generator=torch.Generator().manual_seed(0))]
    out, _, y0_out, _ = OTPlanSampler().sample_plan_with_labels(x0, x1, y0, y1)
    assert torch.equal(y0_out, y1)
    assert torch.equal(y0[sources(out, x0)], y1)
    np.random.seed(1)
    t0, _, ty0, ty1 = TorchcfmSampler("exact").sample_plan_with_labels(x0, x1, y0, y1)
    assert (ty0 != ty1).any()  # torchcfm's plan ignores the labels
    # pairing within classes costs more than the unconstrained optimum, never less
    assert total(out, x1) > total(OTPlanSampler().sample_plan(x0, x1)[0], x1)


def test_label_errors_name_the_problem():
    x0, x1 = batch(6, 2)
    sampler = OTPlanSampler()
    with pytest.raises(ValueError, match=r"different label counts .*1: \(3, 2\)"):
        sampler.sample_plan_with_labels(
            x0, x1, torch.tensor([0, 0, 1, 1, 1, 2]), torch.arange(6) % 3
        )
    with pytest.raises(ValueError, match="y1: group_by gave 5 labels for a batch of 6"):
        sampler.sample_plan_with_labels(x0, x1, None, torch.zeros(5))
    with pytest.raises(ValueError, match="y0: group_by gave NaN labels"):
        sampler.sample_plan_with_labels(x0, x1, torch.tensor([0.0, 1, 2, float("nan"), 0, 1]))


def test_an_ot_batch_larger_than_the_training_batch_uses_every_pair_once():
    """torchcfm #135: one OT over 4 training batches, sliced into 4 steps."""
    x0, x1 = batch(128, 8, seed=4)
    x0p, x1p = OTPlanSampler().sample_plan(x0, x1)
    fm = ConditionalFlowMatcher(sigma=0.0)  # the pairing is done: torchcfm's flow math alone
    steps = [
        fm.sample_location_and_conditional_flow(x0p[s : s + 32], x1p[s : s + 32])
        for s in range(0, 128, 32)
    ]
    assert torch.equal(torch.cat([u for _, _, u in steps]), x1 - x0p)
    assert sorted(sources(x0p, x0)) == list(range(128))
    per_step = sum(optimum(x0[s : s + 32], x1[s : s + 32]) for s in range(0, 128, 32))
    assert total(x0p, x1) < per_step


# -- clear errors ---------------------------------------------------------------------------------
def _nan(t: torch.Tensor) -> torch.Tensor:
    t = t.clone()
    t[1, 0] = float("nan")
    return t


X0, X1 = batch(8, 3)
BAD = [
    ("shapes", X0, torch.randn(8, 4), ValueError, r"x0 has shape \(8, 3\) and x1 \(8, 4\)"),
    ("batch sizes", X0[:6], X1, ValueError, "a permutation pairs two batches of one shape"),
    ("nan x0", _nan(X0), X1, ValueError, "x0 holds 1 non-finite values"),
    ("inf x1", X0, X1.clone().fill_(float("inf")), ValueError, "x1 holds 24 non-finite"),
    ("int x1", X0, torch.ones(8, 3, dtype=torch.int64), TypeError, "x1 has dtype torch.int64"),
    ("numpy x0", X0.numpy(), X1, TypeError, "x0 is a ndarray; torchcfm's API takes torch"),
    ("empty", X0[:0], X1[:0], ValueError, r"x0 has shape \(0, 3\): it needs rows"),
]


@pytest.mark.parametrize("case", BAD, ids=[c[0] for c in BAD])
def test_bad_batches_get_clear_errors(case):
    _, x0, x1, error, message = case
    fm = ExactOptimalTransportConditionalFlowMatcher()
    with pytest.raises(error, match=message):
        fm.sample_location_and_conditional_flow(x0, x1)


def test_a_batch_of_one_warns_and_keeps_its_pair():
    x0, x1 = X0[:1], X1[:1]
    with pytest.warns(UserWarning, match="a batch of one"):
        out, same = OTPlanSampler().sample_plan(x0, x1)
    assert torch.equal(out, x0) and same is x1


def test_options_that_are_not_a_permutation_are_refused():
    with pytest.raises(ValueError, match="torchcfm's unbalanced OT"):
        OTPlanSampler("unbalanced")
    with pytest.raises(ValueError, match="cannot reorder a given x0"):
        OTPlanSampler("knn")
    with pytest.raises(TypeError, match="num_threads: options of torchcfm's POT solvers"):
        ExactOptimalTransportConditionalFlowMatcher(num_threads=4)
    with pytest.raises(ValueError, match="with across_ranks=True call sample_plan"):
        OTPlanSampler(across_ranks=True).get_map(X0, X1)
    with pytest.raises(RuntimeError, match="needs torch.distributed initialised"):
        OTPlanSampler(across_ranks=True).sample_plan(X0, X1)


def test_other_matchers_and_float64_batches():
    x0, x1 = batch(64, 16, seed=5)
    best = optimum(x0, x1)
    out = OTPlanSampler("auction").sample_plan(x0, x1)[0]
    assert sorted(sources(out, x0)) == list(range(64))
    assert total(out, x1) <= best * (1 + 1e-3)
    out = OTPlanSampler("random").sample_plan(x0, x1)[0]  # no pairing: I-CFM's pairs
    assert torch.equal(out, x0)
    sampler = OTPlanSampler()
    sampler.sample_plan(x0.double(), x1.double())
    assert sampler.last_info["exact_permutation"] and sampler.last_info["gap_bound"] == 0.0


# -- across ranks: two real gloo ranks ------------------------------------------------------------
WORLD, PER_RANK = 2, 12


def _global_data():
    """The global batch (2 ranks x 12 rows): x1 shifted by rank, so the global assignment
    differs from the per-rank ones; y0 a permutation of y1 whose per-rank counts differ."""
    x0, x1 = batch(WORLD * PER_RANK, 6, seed=7)
    x1 = x1 + torch.arange(WORLD).repeat_interleave(PER_RANK)[:, None] * 1.5
    y1 = torch.tensor([0] * 8 + [1] * 4 + [1] * 4 + [2] * 8)
    y0 = torch.tensor([2] * 6 + [0] * 6 + [0] * 2 + [1] * 8 + [2] * 2)
    return x0, x1, y0, y1


def _rank_worker(rank: int, folder: str) -> None:
    join_gloo(rank, WORLD, f"{folder}/store")
    mine = slice(rank * PER_RANK, (rank + 1) * PER_RANK)
    x0, x1, y0, y1 = (v[mine] for v in _global_data())
    out: dict = {}
    try:
        sampler = OTPlanSampler(across_ranks=True, timeout=60)
        out["plain"] = sampler.sample_plan(x0, x1)[0]
        out["info"] = sampler.last_info
        out["both"] = sampler.sample_plan_with_labels(x0, x1, y0, y1)
        out["y1"] = sampler.sample_plan_with_labels(x0, x1, None, y1)
        fm = ExactOptimalTransportConditionalFlowMatcher(across_ranks=True, timeout=60)
        out["fm"] = fm.guided_sample_location_and_conditional_flow(x0, x1, y1=y1)
        try:  # NaN on rank 1 only: an error on both ranks, not a hang on rank 0
            OTPlanSampler(across_ranks=True, timeout=60).sample_plan(
                _nan(x0) if rank == 1 else x0, x1
            )
            out["error"] = None
        except Exception as exc:
            out["error"] = f"{type(exc).__name__}: {exc}"
    finally:
        with open(os.path.join(folder, f"rank{rank}.pkl"), "wb") as f:
            pickle.dump(out, f)
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    folder = str(tmp_path_factory.mktemp("torchcfm_ranks"))
    # fresh interpreters (as in test_distributed.py); POT would import JAX in each: not needed
    saved = os.environ.get("POT_BACKEND_DISABLE_JAX")
    os.environ["POT_BACKEND_DISABLE_JAX"] = "1"
    try:
        return spawn_ranks(
            _rank_worker, (folder,), WORLD, lambda r: os.path.join(folder, f"rank{r}.pkl")
        )
    finally:
        if saved is None:
            del os.environ["POT_BACKEND_DISABLE_JAX"]
        else:
            os.environ["POT_BACKEND_DISABLE_JAX"] = saved


def test_across_ranks_is_the_global_batchs_optimal_assignment(ranks):
    x0, x1, y0, y1 = _global_data()
    got = torch.cat([r["plain"] for r in ranks])
    assert torch.equal(got, OTPlanSampler().sample_plan(x0, x1)[0])
    assert ranks[0]["info"]["batch_size"] == WORLD * PER_RANK
    assert ranks[0]["info"]["gap_bound"] == 0.0
    # x0 crossed ranks, and per-rank pairing (a feasible global one) costs more
    assert {int(s) // PER_RANK for s in sources(got[:PER_RANK], x0)} == {0, 1}
    local = torch.cat(
        [
            OTPlanSampler().sample_plan(x0[s : s + PER_RANK], x1[s : s + PER_RANK])[0]
            for s in (0, 12)
        ]
    )
    assert total(got, x1) < total(local, x1)


def test_across_ranks_labels_match_in_the_global_batch(ranks):
    x0, x1, y0, y1 = _global_data()
    # per-rank label counts differ, so only the global batch can pair equal labels
    with pytest.raises(ValueError, match="different label counts"):
        OTPlanSampler().sample_plan_with_labels(
            x0[:PER_RANK], x1[:PER_RANK], y0[:PER_RANK], y1[:PER_RANK]
        )
    want = OTPlanSampler().sample_plan_with_labels(x0, x1, y0, y1)
    got = [torch.cat([r["both"][k] for r in ranks]) for k in (0, 1, 2, 3)]
    assert torch.equal(got[0], want[0]) and torch.equal(got[2], y1) and torch.equal(got[3], y1)
    assert torch.equal(y0[sources(got[0], x0)], y1)
    got_y1 = torch.cat([r["y1"][0] for r in ranks])
    assert torch.equal(got_y1, OTPlanSampler().sample_plan_with_labels(x0, x1, None, y1)[0])
    assert torch.equal(y1[sources(got_y1, x0)], y1)
    # the flow matcher: torchcfm's u_t on the globally paired x0, labels as given
    for r, rank in enumerate(ranks):
        t, xt, ut, fy0, fy1 = rank["fm"]
        mine = slice(r * PER_RANK, (r + 1) * PER_RANK)
        assert fy0 is None and torch.equal(fy1, y1[mine])
        assert torch.equal(ut, x1[mine] - got_y1[mine])


def test_across_ranks_a_bad_batch_on_one_rank_is_an_error_on_both(ranks):
    assert ranks[1]["error"].startswith("ValueError: x0 holds 1 non-finite values")
    assert ranks[0]["error"].startswith("RuntimeError: rank 0: across-rank matching stopped")
    assert "{1: 'failed'}" in ranks[0]["error"]


# -- torchcfm's CIFAR-10 training loop, on tiny data ----------------------------------------------
def infiniteloop(dataloader):
    """What torchcfm's examples/images/cifar10/utils_cifar.py loops over: the images, forever."""
    while True:
        for x, _ in iter(dataloader):
            yield x


def _cifar_like():
    g = torch.Generator().manual_seed(0)
    images = (torch.rand(48, 3, 8, 8, generator=g) * 2 - 1).clamp(-1, 1)
    dataset = TensorDataset(images, torch.arange(48) % 10)
    torch.manual_seed(0)
    net_model = UNetModelWrapper(
        dim=(3, 8, 8),
        num_res_blocks=1,
        num_channels=32,
        channel_mult=[1],
        num_heads=1,
        num_head_channels=32,
        attention_resolutions="8",
        dropout=0.1,
    )
    dataloader = DataLoader(dataset, batch_size=16, shuffle=True, num_workers=0, drop_last=True)
    return dataloader, net_model, torch.optim.Adam(net_model.parameters(), lr=2e-4)


def _train_step(net_model, optim, FM, x0, x1):
    """The body of train_cifar10.py's step loop after x0 and x1 are in hand."""
    optim.zero_grad()
    t, xt, ut = FM.sample_location_and_conditional_flow(x0, x1)
    vt = net_model(t, xt)
    loss = torch.mean((vt - ut) ** 2)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(net_model.parameters(), 1.0)
    optim.step()
    return loss.item()


def test_train_cifar10_with_the_one_import_drop_in():
    """(a) `from noisepair.torchcfm import (...)` in place of torchcfm's, nothing else."""
    from noisepair import torchcfm as dropin

    # the script's import statement, from the new module: the matchers without OT are torchcfm's
    for name in ("ConditionalFlowMatcher", "TargetConditionalFlowMatcher"):
        assert getattr(dropin, name) is getattr(cfm, name)
    assert (
        dropin.VariancePreservingConditionalFlowMatcher
        is cfm.VariancePreservingConditionalFlowMatcher
    )
    rank = torch.device("cpu")
    dataloader, net_model, optim = _cifar_like()
    datalooper = infiniteloop(dataloader)
    FM = ExactOptimalTransportConditionalFlowMatcher(sigma=0.0)
    before = [p.detach().clone() for p in net_model.parameters()]
    for _step in range(3):
        x1 = next(datalooper).to(rank)
        x0 = torch.randn_like(x1)
        loss = _train_step(net_model, optim, FM, x0, x1)
        assert np.isfinite(loss)
        info = FM.ot_sampler.last_info
        assert info["exact_permutation"] and info["batch_size"] == 16
        assert info["cost_ratio"] < 1  # every step's x0 re-paired, shorter than as drawn
    assert any(not torch.equal(a, b) for a, b in zip(before, net_model.parameters()))


def test_train_cifar10_with_matched_noise_loader_around_infiniteloop():
    """(b) the loader pairs in its prefetch thread; the step takes x0 from it (--model icfm)."""
    rank = torch.device("cpu")
    dataloader, net_model, optim = _cifar_like()
    loader = MatchedNoiseLoader(infiniteloop(dataloader), seed=0, output="batch", device=rank)
    datalooper = iter(loader)
    FM = ConditionalFlowMatcher(sigma=0.0)
    try:
        for step in range(3):
            x1, x0 = next(datalooper)
            assert x1.device == x0.device == rank
            # x0 is this step's own seeded draws, reordered: the multiset is exactly N(0, I)'s
            drawn = draw_like(x1, len(x1), seed=0, rank=0, epoch=0, index=step)
            assert torch.equal(torch.sort(x0.reshape(-1))[0], torch.sort(drawn.reshape(-1))[0])
            assert loader.last_info["cost_ratio"] < 1
            assert np.isfinite(_train_step(net_model, optim, FM, x0, x1))
    finally:
        datalooper.close()
