"""Matchers: exact optimality by brute force, permutations, frameworks, custom solvers."""

import itertools
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.optimize import linear_sum_assignment

import noisepair
from noisepair.matchers import MATCHERS, Matcher, get_matcher, is_permutation
from noisepair.matchers.exact import EMD, Hungarian
from noisepair.testing import assert_independent_of_order
from noisepair.testing.families import FAMILIES, TOY_2D
from noisepair.testing.strategies import FRAMEWORKS, data_specs, item_shapes

PERMUTATION_METHODS = sorted(name for name, cls in MATCHERS.items() if cls.permutation)
EXACT = [Hungarian(solver="lapjv"), Hungarian(solver="scipy"), EMD()]
#: families without tied costs (near-duplicates have several optima: any may be returned)
TIE_FREE = tuple(f for f in FAMILIES + TOY_2D if f != "near_duplicates")


def brute_force_optimum(cost):
    n = cost.shape[0]
    return min(cost[np.arange(n), list(p)].sum() for p in itertools.permutations(range(n)))


#: small batches of every hard family (near-duplicates give near-tied costs), any framework
SMALL = data_specs(
    batch_sizes=st.integers(1, 7),
    shapes=item_shapes(("vector",), max_dim=5),
    dtypes=("float32", "float64"),
)


@settings(max_examples=60, deadline=None, derandomize=True)
@given(spec=SMALL, scale=st.floats(0.1, 5))
def test_exact_methods_reach_brute_force_optimum(spec, scale):
    x = np.asarray(spec.batch(0), dtype=np.float64) * scale
    z = np.random.default_rng(spec.seed).normal(size=x.shape)
    b = len(x)
    cost = noisepair.cost_matrix(x, z, precision="float64")
    best = brute_force_optimum(cost)
    for matcher in EXACT:
        cols = np.asarray(matcher.solve(cost)[0])
        assert is_permutation(cols, b)
        assert cost[np.arange(b), cols].sum() == pytest.approx(best, rel=1e-6, abs=1e-9)


def test_exact_methods_handle_ties():
    cost = np.ones((6, 6))
    for matcher in EXACT:
        assert is_permutation(matcher.solve(cost)[0], 6)


@pytest.mark.parametrize("method", PERMUTATION_METHODS)
@pytest.mark.parametrize("framework", ["numpy", "torch"])
def test_every_permutation_method_returns_a_permutation(method, framework):
    rng = np.random.default_rng(1)
    x = rng.normal(size=(33, 3, 4, 4)).astype(np.float32) + 2.0
    z = rng.normal(size=(33, 3, 4, 4)).astype(np.float32)
    if framework == "torch":
        x, z = torch.from_numpy(x), torch.from_numpy(z)
    perm = noisepair.match(x, z, method)
    assert isinstance(perm, torch.Tensor if framework == "torch" else np.ndarray)
    assert is_permutation(np.asarray(perm), 33)


@pytest.mark.parametrize("method", ["hungarian", "emd", "sinkhorn", "greedy"])
def test_matching_shortens_paths_and_exact_is_best(method):
    rng = np.random.default_rng(2)
    x = (rng.normal(size=(128, 16)) * 0.3 + rng.choice([-2, 2], size=(128, 1))).astype(np.float32)
    z = rng.normal(size=(128, 16)).astype(np.float32)
    cost = noisepair.cost_matrix(x, z, precision="float64")
    optimum = cost[linear_sum_assignment(cost)].sum()
    perm = noisepair.match(x, z, method)
    total = cost[np.arange(128), perm].sum()
    assert total < np.trace(cost)
    assert total >= optimum - 1e-6 * optimum
    if method in ("hungarian", "emd"):
        assert total == pytest.approx(optimum, rel=1e-6)


def sequential_greedy(cost):
    """Reference: take edges in increasing cost, keep those whose row and column are free."""
    cols = -np.ones(cost.shape[0], dtype=int)
    used = set()
    for flat in np.argsort(cost, axis=None, kind="stable"):
        r, c = divmod(int(flat), cost.shape[1])
        if cols[r] < 0 and c not in used:
            cols[r] = c
            used.add(c)
    return cols


@settings(max_examples=30, deadline=None, derandomize=True)
@given(
    spec=data_specs(batch_sizes=st.integers(1, 40), dtypes=("float64",), frameworks=("numpy",)),
    uniform=st.booleans(),
)
def test_greedy_equals_edge_order_greedy(spec, uniform):
    x = spec.batch(0)
    b = len(x)
    rng = np.random.default_rng(spec.seed)
    z = rng.normal(size=x.shape)
    cost = (
        rng.random((b, b))
        if uniform
        else np.asarray(noisepair.cost_matrix(x, z, precision="float64"))
    )
    expected = sequential_greedy(cost)
    np.testing.assert_array_equal(get_matcher("greedy").solve(cost)[0], expected)
    np.testing.assert_array_equal(
        get_matcher("greedy").solve(torch.from_numpy(cost))[0].numpy(), expected
    )


@settings(max_examples=30, deadline=None, derandomize=True)
@given(
    spec=data_specs(
        families=TIE_FREE, batch_sizes=st.integers(2, 24), dtypes=("float32", "float64")
    ),
    method=st.sampled_from(["hungarian", "emd", "greedy", "auto"]),
)
def test_pairing_depends_on_the_batch_as_a_set_not_its_order(spec, method):
    """Exact assignment (a unique optimum) and nearest-first greedy pair a batch as a set."""
    x = spec.batch(0)
    z = FRAMEWORKS[spec.framework].convert(
        np.random.default_rng(spec.seed).standard_normal(tuple(x.shape)), spec.dtype
    )
    assert_independent_of_order(method, x, z, shuffles=2, seed=spec.seed)


def test_knn_picks_nearest_of_its_own_candidates():
    rng = np.random.default_rng(3)
    b, k, d = 20, 5, 8
    x = rng.normal(size=(b, d)).astype(np.float32)
    z = rng.normal(size=(b * k, d)).astype(np.float32)
    idx = noisepair.match(x, z, "knn", k=k)
    for i in range(b):
        cands = z[i * k : (i + 1) * k]
        assert idx[i] == i * k + np.argmin(((cands - x[i]) ** 2).sum(1))
    with pytest.raises(ValueError, match="5 candidate"):
        noisepair.match(x, z[:-1], "knn", k=k)


def test_scipy_style_callable_is_a_matcher_and_bad_callables_are_rejected():
    rng = np.random.default_rng(4)
    x, z = rng.normal(size=(16, 4)), rng.normal(size=(16, 4))
    cost = noisepair.cost_matrix(x, z, precision="float64")
    perm = noisepair.match(x, z, linear_sum_assignment)
    np.testing.assert_array_equal(perm, linear_sum_assignment(cost)[1])
    with pytest.raises(ValueError, match="permutation"):
        noisepair.match(x, z, lambda c: np.zeros(c.shape[0], dtype=int))


def test_unknown_method_and_cost_are_named():
    x = np.zeros((4, 2), np.float32)
    with pytest.raises(ValueError, match="unknown method 'hungry'"):
        noisepair.match(x, x, "hungry")
    with pytest.raises(ValueError, match="unknown cost"):
        noisepair.match(x, x, cost="manhattan")


@pytest.mark.parametrize("framework", ["numpy", "torch"])
@pytest.mark.parametrize("metric", ["sqeuclidean", "euclidean"])
def test_cost_matrix_matches_float64_pairwise_distances(framework, metric):
    rng = np.random.default_rng(5)
    x = rng.normal(size=(17, 2, 3, 5)).astype(np.float32) + 1.0
    z = rng.normal(size=(13, 2, 3, 5)).astype(np.float32)
    ref = ((x.reshape(17, 1, -1).astype(np.float64) - z.reshape(1, 13, -1)) ** 2).sum(-1)
    if metric == "euclidean":
        ref = np.sqrt(ref)
    if framework == "torch":
        x, z = torch.from_numpy(x), torch.from_numpy(z)
    got = np.asarray(noisepair.cost_matrix(x, z, metric))
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("precision", ["float16", "bfloat16"])
def test_half_precision_costs_do_not_overflow(precision):
    x = torch.randn(8, 70_000, generator=torch.Generator().manual_seed(0)) * 2
    c = noisepair.cost_matrix(x, torch.zeros_like(x), precision=precision)
    assert torch.isfinite(c).all()
    ref = (x.double() ** 2).sum(1)
    torch.testing.assert_close(c[:, 0].double(), ref, rtol=2e-2, atol=0)


# -- defects of issue 11: NaN labels, a cost that overflows -----------------------------------
@pytest.mark.parametrize("method", ["random", "hungarian", "greedy"])
def test_nan_group_labels_are_an_error_not_unset_rows(method):
    """NaN equals no label: such samples belonged to no group and their index rows were left
    uninitialised (duplicated noise with method='random'). They are refused, by name."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 8)).astype(np.float32)
    z = rng.normal(size=(64, 8)).astype(np.float32)
    labels = rng.integers(0, 4, 64).astype(np.float64)
    labels[[3, 17]] = np.nan
    with pytest.raises(ValueError, match=r"NaN labels for 2 sample\(s\) \(rows \[3, 17\]\)"):
        noisepair.match(x, z, method, groups=labels)
    labels[[3, 17]] = -1  # the fix the message names: every sample gets a label
    perm = noisepair.match(x, z, method, groups=labels)
    assert is_permutation(perm, 64)
    for label in np.unique(labels):
        assert set(perm[labels == label]) == set(np.flatnonzero(labels == label))


def test_nan_group_labels_are_refused_by_the_loader():
    rng = np.random.default_rng(1)
    batches = [
        {
            "x": rng.normal(size=(16, 4)).astype(np.float32),
            "label": np.where(np.arange(16) == 5, np.nan, np.arange(16) % 2),
        }
    ]
    with pytest.raises(ValueError, match="NaN labels"):
        list(noisepair.MatchedNoiseLoader(batches, key="x", group_by="label", prefetch=0))


@pytest.mark.parametrize(
    "method",
    [
        "hungarian",
        "emd",
        "greedy",
        "auction",
        "auto",
        "sinkhorn",
        "random",
        "knn",
        linear_sum_assignment,
    ],
)
def test_a_cost_that_overflows_float32_never_reaches_a_solver(method):
    """Finite samples around 3e19 square to inf in float32: lapjv then corrupted the heap, emd,
    greedy and the auction returned cost=nan. The cost is checked and the fix named."""
    rng = np.random.default_rng(2)
    k = 3 if method == "knn" else 1
    x = (rng.normal(size=(32, 8)) * 3e19).astype(np.float32)
    z = rng.normal(size=(32 * k, 8)).astype(np.float32)
    assert np.isfinite(x).all()
    options = {"k": k} if method == "knn" else {}
    with pytest.raises(ValueError, match="overflows float32.*precision='float64'"):
        noisepair.match(x, z, method, **options)
    _, info = noisepair.pairing.pair(x, z, get_matcher(method, **options), precision="float64")
    assert np.isfinite(info["cost"])


@pytest.mark.parametrize("framework", ["numpy", "torch", "jax"])
def test_the_finite_check_sees_every_value_not_only_the_sum(framework):
    """The check sums first (a finite sum proves every value finite); a sum that overflows
    while every value is finite, and a NaN or inf anywhere, are each told apart."""
    from noisepair.backend import get_backend

    convert = {
        "numpy": np.asarray,
        "torch": torch.from_numpy,
        "jax": lambda a: pytest.importorskip("jax.numpy").asarray(a),
    }[framework]
    big = np.full((4, 8), 3e37, np.float32)  # finite values whose float32 sum is inf
    assert np.isinf(big.sum())
    b = get_backend(convert(big))
    assert b.all_finite(convert(big))
    for bad in (np.nan, np.inf, -np.inf):
        x = np.zeros((4, 8), np.float32)
        x[2, 5] = bad
        assert not b.all_finite(convert(x))
        big_bad = big.copy()
        big_bad[1, 1] = bad
        assert not b.all_finite(convert(big_bad))
    with pytest.raises(ValueError, match="overflows float32"):  # not "non-finite values"
        noisepair.match(convert(big), convert(np.zeros((4, 8), np.float32)), "hungarian")


# -- the matcher contract ----------------------------------------------------------------------
def _docs_block(heading):
    text = (Path(__file__).resolve().parents[1] / "docs" / "matchers.md").read_text()
    section = text.split(heading, 1)[1]
    return section.split("```python\n", 1)[1].split("```", 1)[0]


def test_docs_custom_matcher_example_runs():
    namespace: dict = {}
    exec(compile(_docs_block("## Your own matcher"), "docs/matchers.md", "exec"), namespace)
    matcher = namespace["ScipyExact"]()
    rng = np.random.default_rng(5)
    x, z = rng.normal(size=(24, 6)).astype(np.float32), rng.normal(size=(24, 6)).astype(np.float32)
    cost = noisepair.cost_matrix(x, z)
    np.testing.assert_array_equal(noisepair.match(x, z, matcher), linear_sum_assignment(cost)[1])


class _Exact(Matcher):
    """A user's few-line matcher whose info says which cost it saw."""

    name = "user-exact"
    exact = True

    def solve(self, cost, *, dim=None):
        c = np.asarray(cost)
        rows, cols = linear_sum_assignment(c)
        return cols, {"total": float(c[rows, cols].sum()), "dim": dim}


@pytest.mark.parametrize("shared", [_Exact(), get_matcher("auto")], ids=["user", "auto"])
def test_one_matcher_instance_serves_two_loaders_in_two_threads(shared):
    """solve is pure: two loaders in two threads, different dimensions and scales, one matcher
    instance; each batch's info describes that batch's own solve."""
    rng = np.random.default_rng(6)
    data = {
        2: [rng.normal(size=(130, 2)).astype(np.float32) * 5 for _ in range(12)],
        64: [rng.normal(size=(40, 64)).astype(np.float32) for _ in range(12)],
    }
    results: dict = {}

    def run(d):
        results[d] = list(noisepair.MatchedNoiseLoader(data[d], method=shared, seed=d, prefetch=2))

    threads = [threading.Thread(target=run, args=(d,)) for d in data]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for d, pbs in results.items():
        assert len(pbs) == 12
        for pb in pbs:
            cost = noisepair.cost_matrix(pb.sample, pb.noise)
            total = float(np.trace(cost))  # the noise emitted is the matched noise
            assert pb.info["gap_bound"] == 0
            assert pb.info["cost"] * pb.info["batch_size"] == pytest.approx(total, rel=1e-4)
            if isinstance(shared, _Exact):
                assert pb.info["dim"] == d and pb.info["total"] == pytest.approx(total, rel=1e-4)
            else:
                assert pb.info["solver"] == ("emd" if d == 2 else "hungarian")


def test_knn_is_a_selector_and_permutation_matchers_are_matchers():
    from noisepair.matchers import MATCHERS, Selector

    assert issubclass(MATCHERS["knn"], Selector) and not MATCHERS["knn"].permutation
    for name in ("hungarian", "emd", "sinkhorn", "greedy", "auction", "auto"):
        assert issubclass(MATCHERS[name], Matcher) and MATCHERS[name].permutation
    assert MATCHERS["random"].permutation  # the identity: a selection that permutes nothing
    assert [
        m.exact
        for m in (
            get_matcher("hungarian"),
            get_matcher("emd"),
            get_matcher("greedy"),
            get_matcher("auction"),
            get_matcher("knn"),
        )
    ] == [True, True, False, False, False]


def test_pot_is_optional(tmp_path):
    """Without POT: emd and sinkhorn name the extra to install, auto never picks emd, and every
    other method runs."""
    code = textwrap.dedent("""
        import sys
        sys.modules["ot"] = None  # POT made unimportable
        import numpy as np
        import noisepair
        from noisepair.matchers import get_matcher
        rng = np.random.default_rng(0)
        x, z = rng.normal(size=(200, 2)).astype(np.float32), rng.normal(size=(200, 2)).astype(np.float32)
        for method in ("emd", "sinkhorn"):
            try:
                noisepair.match(x, z, method)
            except ImportError as e:
                assert str(e) == f"method={method!r} needs POT: pip install 'noisepair[pot]'", e
            else:
                raise SystemExit(f"{method}: no ImportError")
        assert get_matcher("auto").choose(200, 2).name == "hungarian"  # scipy, not emd
        _, info = noisepair.pairing.pair(x, z, get_matcher("auto"))
        assert info["solver"] == "hungarian" and info["gap_bound"] == 0
        for method in ("hungarian", "greedy", "random", "auction"):
            noisepair.match(x, z, method)
        print("ok")
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


def test_hungarian_on_a_cost_beyond_float32_answers_with_scipy():
    """lapjv works in float32 and corrupts memory on inf: a float64 cost that does not fit is
    solved by scipy. Run in a child process, where heap corruption shows as a crash."""
    code = textwrap.dedent("""
        import numpy as np
        from scipy.optimize import linear_sum_assignment
        from noisepair.matchers.exact import Hungarian
        c = np.random.default_rng(0).random((64, 64)) * 1e40
        for _ in range(5):
            cols, _ = Hungarian().solve(c)
            assert (cols == linear_sum_assignment(c)[1]).all()
        print("ok")
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr
