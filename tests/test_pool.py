"""NoisePool: every draw of a cycle used exactly once, the within-cycle drift, determinism,
exact resume, group_by, and the Gaussianity of a whole cycle."""

import copy
import pickle

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.optimize import linear_sum_assignment

from noisepair.checks import gaussianity_report
from noisepair.cost import cost_matrix
from noisepair.pool import NoisePool


def rows_sorted(a):
    a = np.asarray(a)
    return a[np.lexsort(a.T[::-1])]


def data(n, d=4, seed=0, shift=0.0):
    return (np.random.default_rng(seed).standard_normal((n, d)) * 0.5 + shift).astype(np.float32)


def emit(pool, x, sizes, groups=None):
    out, infos, lo = [], [], 0
    for b in sizes:
        z, info = pool.take(x[lo : lo + b], None if groups is None else groups[lo : lo + b])
        out.append(z)
        infos.append(info)
        lo += b
    return np.concatenate(out), infos


@settings(max_examples=40, deadline=None)
@given(
    size=st.integers(1, 40),
    sizes=st.lists(st.integers(1, 25), min_size=1, max_size=12),
    rule=st.sampled_from(["greedy", "exact"]),
    seed=st.integers(0, 2**16),
)
def test_each_cycle_emits_every_draw_exactly_once(size, sizes, rule, seed):
    x = data(sum(sizes), d=3, seed=seed)
    pool = NoisePool(size, rule=rule, seed=seed)
    z, infos = emit(pool, x, sizes)
    # in stream order the noise of cycle c is emitted as one run of `size` vectors
    for c in range(len(z) // size):
        assert np.array_equal(
            rows_sorted(z[c * size : (c + 1) * size]), rows_sorted(pool.drawn(c, x))
        )
    tail = z[(len(z) // size) * size :]
    if len(tail):  # the cycle in progress: distinct draws of it, as many as used
        drawn = {tuple(r) for r in pool.drawn(len(z) // size, x)}
        assert len({tuple(r) for r in tail}) == len(tail) and all(tuple(r) in drawn for r in tail)
    assert infos[-1]["pool_cycle"] == len(z) // size
    assert infos[-1]["pool_left"] == size - len(tail)


def test_early_batches_of_a_cycle_get_nearer_noise():
    # 8 batches per cycle: the first batch chooses among the whole pool, the last takes the rest
    x = data(128 * 8 * 6, d=8, shift=1.0)
    pool = NoisePool(1024, seed=3)
    _, infos = emit(pool, x, [128] * 48)
    ratio = np.array([i["cost_ratio"] for i in infos]).reshape(6, 8)
    assert ratio[:, 0].max() < ratio[:, -1].min()
    assert np.all(np.diff(ratio.mean(0)) > 0)  # the drift is monotone over the cycle


def test_noise_of_first_batches_is_biased_whole_cycle_is_gaussian():
    x = data(100 * 10 * 20, d=4, shift=1.5)
    pool = NoisePool(1000, seed=5)
    z, _ = emit(pool, x, [100] * 200)
    cycles = z.reshape(20, 1000, 4)
    assert gaussianity_report(cycles.reshape(-1, 4)).passed  # 20 whole cycles: N(0, I) draws
    first = cycles[:, :100].reshape(-1, 4)  # first batch of every cycle: pulled towards the data
    report = gaussianity_report(first)
    assert not report.passed and first.mean() > 0.2


def test_exact_rule_is_the_rectangular_optimum_and_shorter_than_greedy():
    x = data(64, d=6, shift=0.5)
    greedy, exact = NoisePool(500, rule="greedy", seed=9), NoisePool(500, rule="exact", seed=9)
    _, gi = greedy.take(x)
    _, ei = exact.take(x)
    cost = cost_matrix(x, greedy.drawn(0, x))
    rows, cols = linear_sum_assignment(cost)
    assert ei["cost"] * 64 == pytest.approx(cost[rows, cols].sum(), rel=1e-5)
    assert ei["cost"] < gi["cost"] < gi["cost_random"]
    assert (ei["solver"], gi["solver"], ei["gap_bound"], gi["gap_bound"]) == (
        "scipy",
        "greedy",
        0.0,
        None,
    )


def test_greedy_rule_is_dansm_sample_by_sample():
    x = data(10, d=3)
    pool = NoisePool(30, seed=1)
    z, _ = pool.take(x)
    drawn = pool.drawn(0, x)
    free = list(range(30))
    for i in range(10):  # each sample in order takes its nearest still-unused noise
        j = min(free, key=lambda k: ((x[i] - drawn[k]) ** 2).sum())
        assert np.array_equal(z[i], drawn[j])
        free.remove(j)


def test_deterministic_from_the_seed():
    x = data(300)
    a, _ = emit(NoisePool(128, seed=4), x, [50] * 6)
    b, _ = emit(NoisePool(128, seed=4), x, [50] * 6)
    c, _ = emit(NoisePool(128, seed=5), x, [50] * 6)
    d, _ = emit(NoisePool(128, seed=4, rank=1), x, [50] * 6)
    assert np.array_equal(a, b) and not np.allclose(a, c) and not np.allclose(a, d)


@pytest.mark.parametrize("rule", ["greedy", "exact"])
def test_resume_mid_cycle_gives_identical_noise(rule):
    x = data(700, d=5)
    sizes = [64] * 10
    whole, _ = emit(NoisePool(200, rule=rule, seed=2), x, sizes)
    first = NoisePool(200, rule=rule, seed=2)
    emit(first, x, sizes[:5])  # 320 used: one full cycle and 120 of the second
    state = pickle.loads(pickle.dumps(first.state_dict()))
    assert state["pools"][None]["cycle"] == 1 and len(state["pools"][None]["used"]) == 120
    resumed = NoisePool(200, rule=rule, seed=2)
    resumed.load_state_dict(state)
    rest, _ = emit(resumed, x[320:], sizes[5:])
    assert np.array_equal(rest, whole[320:])


def test_load_state_dict_refuses_other_settings():
    state = NoisePool(100, seed=1).state_dict()
    with pytest.raises(ValueError, match="same settings"):
        NoisePool(200, seed=1).load_state_dict(state)


def test_group_by_gives_each_label_its_own_pool():
    x = data(600, d=3)
    labels = np.random.default_rng(0).integers(0, 3, 600)
    pool = NoisePool(50, seed=7)
    z, infos = emit(pool, x, [60] * 10, labels)
    for lab in range(3):
        mine = z[labels == lab]
        for c in range(len(mine) // 50):
            assert np.array_equal(
                rows_sorted(mine[c * 50 : (c + 1) * 50]), rows_sorted(pool.drawn(c, x, label=lab))
            )
    assert set(infos[-1]["pool_cycle"]) == {0, 1, 2}
    assert infos[-1]["pool_left"][1] == 50 - (labels == 1).sum() % 50
    state = copy.deepcopy(pool.state_dict())
    assert set(state["pools"]) == {0, 1, 2}


def test_group_by_needs_integer_labels():
    with pytest.raises(ValueError, match="integer labels"):
        NoisePool(10).take(data(4), np.array(["a", "b", "a", "b"]))
    with pytest.raises(ValueError, match="4 samples"):
        NoisePool(10).take(data(4), np.array([0, 1]))


def test_batch_larger_than_the_pool_spans_cycles():
    x = data(25)
    pool = NoisePool(10, seed=0)
    z, info = pool.take(x)
    assert info["pool_cycle"] == 2 and info["pool_left"] == 5
    for c in range(2):
        assert np.array_equal(rows_sorted(z[c * 10 : (c + 1) * 10]), rows_sorted(pool.drawn(c, x)))


def test_torch_in_torch_out_with_item_shape():
    x = torch.from_numpy(data(12, d=6)).reshape(12, 2, 3)
    z, info = NoisePool(40, seed=0).take(x)
    assert isinstance(z, torch.Tensor) and z.shape == x.shape and z.dtype == x.dtype
    assert 0 < info["cost_ratio"] < 1 and info["method"] == "pool-greedy"
    again, _ = NoisePool(40, seed=0).take(x.clone())
    assert torch.equal(z, again)


def test_one_pool_serves_one_item_shape():
    pool = NoisePool(40)
    pool.take(data(4, d=6))
    with pytest.raises(ValueError, match="item shape"):
        pool.take(data(4, d=5))


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match=">= 1"):
        NoisePool(0)
    with pytest.raises(ValueError, match="rule"):
        NoisePool(10, rule="hungarian")


# -- MatchedNoiseLoader(pool=P) ---------------------------------------------------------------
def batches(n_batches=12, b=50, d=4, seed=0):
    x = data(n_batches * b, d=d, seed=seed, shift=0.5)
    return [torch.from_numpy(x[i * b : (i + 1) * b]) for i in range(n_batches)]


def noises(loader, n=None):
    out = []
    for pb in loader:
        out.append(pb.noise.numpy().copy())
        if n is not None and len(out) == n:
            break
    return out


def test_loader_pool_uses_every_draw_of_a_cycle_once():
    from noisepair.loader import MatchedNoiseLoader

    data_ = batches()
    loader = MatchedNoiseLoader(data_, pool=200, method="greedy", seed=3, prefetch=2)
    pbs = list(loader)
    z = np.concatenate([pb.noise.numpy() for pb in pbs])
    pool = NoisePool(200, seed=3)
    for c in range(3):
        assert np.array_equal(
            rows_sorted(z[c * 200 : (c + 1) * 200]), rows_sorted(pool.drawn(c, data_[0]))
        )
    assert [pb.info["pool_cycle"] for pb in pbs[:5]] == [0, 0, 0, 1, 1]
    assert pbs[0].info["method"] == "pool-greedy" and pbs[0].info["pool_left"] == 150
    exact = MatchedNoiseLoader(data_, pool=200, method="hungarian", seed=3, prefetch=0)
    assert next(iter(exact)).info["solver"] == "scipy"


@pytest.mark.parametrize("prefetch", [0, 3])
def test_loader_pool_resumes_where_the_consumer_was(prefetch):
    from noisepair.loader import MatchedNoiseLoader

    data_ = batches()
    whole = MatchedNoiseLoader(data_, pool=130, method="greedy", seed=1, prefetch=prefetch)
    expected = noises(whole) + noises(whole)  # two epochs: the pool runs on across them
    first = MatchedNoiseLoader(data_, pool=130, method="greedy", seed=1, prefetch=prefetch)
    got = noises(first)
    it = iter(first)
    got += [next(it).noise.numpy().copy() for _ in range(5)]  # the thread runs ahead of this
    state = pickle.loads(pickle.dumps(first.state_dict()))
    first.close()
    resumed = MatchedNoiseLoader(data_, pool=130, method="greedy", seed=1, prefetch=prefetch)
    resumed.load_state_dict(state)
    got += noises(resumed)
    assert len(got) == len(expected) and all(np.array_equal(a, b) for a, b in zip(got, expected))
    # a pass broken off after 2 batches is followed by a fresh pass of the epoch; the pool goes
    # on from where the consumer was (2 batches taken), whatever the thread had paired ahead
    again = MatchedNoiseLoader(data_, pool=130, method="greedy", seed=1, prefetch=prefetch)
    restarted = noises(again, 2) + noises(again)
    pool = NoisePool(130, seed=1)
    reference = [pool.take(x)[0].numpy() for x in data_[:2] + data_]
    assert len(restarted) == 14 and all(np.array_equal(a, b) for a, b in zip(restarted, reference))


def test_loader_pool_refuses_what_it_cannot_do():
    from noisepair.loader import MatchedNoiseLoader

    with pytest.raises(ValueError, match="method='greedy'"):
        MatchedNoiseLoader(batches(), pool=100, method="knn")
    with pytest.raises(ValueError, match="scope=1"):
        MatchedNoiseLoader(batches(), pool=100, method="greedy", scope=4)
    state = MatchedNoiseLoader(batches(), method="greedy").state_dict()
    with pytest.raises(ValueError, match="pool"):
        MatchedNoiseLoader(batches(), pool=100, method="greedy").load_state_dict(state)


def test_loader_large_scope_uses_the_auction_and_says_so():
    from noisepair.loader import MatchedNoiseLoader
    from noisepair.matchers.auction import has_numba

    data_ = batches(n_batches=8, b=128, d=64)
    loader = MatchedNoiseLoader(
        data_, scope=8, method="auto", prefetch=2, seed=0, method_options={"approximate": True}
    )
    pbs = list(loader)
    assert {pb.info["scope"] for pb in pbs} == {8}
    assert {pb.info["solver"] for pb in pbs} == {"auction" if has_numba() else "hungarian"}
    assert all(pb.info["gap_bound"] <= 1e-3 for pb in pbs)
    z = np.concatenate([pb.noise.numpy() for pb in pbs])
    drawn = np.concatenate(
        [
            __import__("noisepair.noise", fromlist=["draw_like"])
            .draw_like(data_[0], 128, seed=0, index=i)
            .numpy()
            for i in range(8)
        ]
    )
    assert np.array_equal(rows_sorted(z), rows_sorted(drawn))  # a permutation of the 1,024 draws
