"""Two real ranks (gloo, file store) streaming WebDataset shards through 2 DataLoader workers each.

One spawn runs the per-rank and the across-rank epoch and breaks off a third pass mid-epoch with
its state saved; a second spawn (a fresh process group) resumes from that state; a third kills
a rank mid-epoch; a fourth drives the across-rank exchange directly (several item sizes,
frameworks, matchers, labels, a scope of two batches) and through loaders that fail or run out
early. The parent checks coverage, equal batch counts, per-rank noise, global optimality, the
info format, the bytes sent, resume and the failure modes against single-process computations.
"""

from __future__ import annotations

import os
import pickle
import time

import numpy as np
import pytest
import torch
import torch.distributed as dist  # noqa: E402
import torch.multiprocessing as mp  # noqa: E402
import webdataset as wds
from ranks import join_gloo, spawn_ranks

from noisepair import MatchedNoiseLoader  # noqa: E402
from noisepair.distributed import RankExchange, pair_across_ranks  # noqa: E402
from noisepair.matchers import get_matcher  # noqa: E402
from noisepair.noise import draw_like  # noqa: E402
from noisepair.pairing import match, pair  # noqa: E402

WORLD, WORKERS, SHARDS, PER_SHARD, BATCH, SHAPE = 2, 2, 8, 24, 8, (3, 4, 4)
BATCHES_PER_RANK = SHARDS * PER_SHARD // (WORLD * BATCH)  # 12
SEED, BREAK_AT = 7, 5


def write_shards(folder: str) -> str:
    rng = np.random.default_rng(0)
    pattern = os.path.join(folder, "shard-%03d.tar")
    with wds.ShardWriter(pattern, maxcount=PER_SHARD, verbose=0) as sink:
        for i in range(SHARDS * PER_SHARD):
            x = (rng.standard_normal(SHAPE) * 0.5 + (i % 3)).astype(np.float32)
            sink.write({"__key__": f"s{i:05d}", "x.npy": x, "cls": i % 3})
    return os.path.join(folder, f"shard-{{000..{SHARDS - 1:03d}}}.tar")


def make_loader(urls: str, **kw) -> MatchedNoiseLoader:
    """The recipe of the README: split_by_node, explicit shardshuffle, partial=False, with_epoch."""
    ds = (
        wds.WebDataset(urls, nodesplitter=wds.split_by_node, shardshuffle=False, empty_check=False)
        .decode()
        .to_tuple("x.npy", "__key__")
        .batched(BATCH, partial=False)
    )
    inner = wds.WebLoader(ds, batch_size=None, num_workers=WORKERS).with_epoch(BATCHES_PER_RANK)
    return MatchedNoiseLoader(inner, seed=SEED, **kw)


def record(loader, limit=None):
    out = []
    for pb in loader:
        assert isinstance(pb.sample, torch.Tensor)  # WebLoader's DataLoader converts ndarrays
        out.append(
            {
                "keys": list(pb.batch[1]),
                "x": pb.sample.numpy(),
                "z": pb.noise.numpy(),
                "info": pb.info,
            }
        )
        if limit is not None and len(out) == limit:
            break
    return out


# the exchange, driven directly: (name, framework, D, method, labels, batch sizes per rank)
CASES = [
    ("d2", "torch", 2, "hungarian", None, [[8], [8]]),
    ("d48", "torch", 48, "hungarian", None, [[8], [8]]),
    ("d3072", "torch", 3072, "hungarian", None, [[8], [8]]),
    ("d48-numpy", "numpy", 48, "hungarian", None, [[8], [8]]),
    ("d48-labels", "torch", 48, "hungarian", "int", [[8], [8]]),
    ("d3072-labels", "torch", 3072, "hungarian", "int", [[8], [8]]),
    ("d48-numpy-str-labels", "numpy", 48, "hungarian", "str", [[8], [8]]),
    ("d48-scope", "torch", 48, "hungarian", None, [[8, 8], [8, 5]]),
    ("d2-auto", "torch", 2, "auto", None, [[8], [8]]),
    ("d48-auto", "torch", 48, "auto", "int", [[8], [8]]),
    ("d48-emd", "numpy", 48, "emd", None, [[8], [8]]),
    ("d48-greedy", "torch", 48, "greedy", None, [[8], [8]]),
    ("d48-random", "torch", 48, "random", None, [[8], [8]]),
    ("d48-auction", "torch", 48, "auction", None, [[8], [8]]),
]
STEPS = 2


def case_data(case, rank, step):
    """Rank ``rank``'s samples and labels of one step: a shift per rank and per label, so that
    the global assignment differs from the per-rank ones."""
    name, framework, d, _, labelled, sizes = case
    n = sum(sizes[rank])
    rng = np.random.default_rng([rank, step, d, len(name)])
    labels = rng.integers(0, 3, n)
    x = (rng.standard_normal((n, d)) + rank + 0.5 * labels[:, None]).astype(np.float32)
    if labelled == "str":
        labels = np.array(["cat", "dog", "eel"])[labels]
    x = torch.from_numpy(x) if framework == "torch" else x
    return x, (labels if labelled else None)


def case_draw(x, step):
    """rank r's noise for batches of these sizes, as the loader draws it (batch index = position)."""

    def draw(r, sizes):
        parts = [
            draw_like(x, n, seed=SEED, rank=r, epoch=0, index=step * 2 + j)
            for j, n in enumerate(sizes)
        ]
        return torch.cat(parts) if isinstance(x, torch.Tensor) else np.concatenate(parts)

    return draw


def _error(exc):
    return (type(exc).__name__, str(exc))


def _exchange_phase(rank):
    out = {"cases": {}, "errors": {}}
    for case in CASES:
        name, _, _, method, _, sizes = case
        matcher = get_matcher(method)
        exchange = RankExchange(timeout=30, scope=len(sizes[0]))
        steps = []
        for step in range(STEPS):
            x, labels = case_data(case, rank, step)
            before = exchange.bytes_sent
            z, info = pair_across_ranks(
                exchange, x, sizes[rank], case_draw(x, step), matcher, groups=labels
            )
            z = z.numpy() if isinstance(z, torch.Tensor) else z
            steps.append(
                {
                    "z": z,
                    "info": info,
                    "bytes": exchange.bytes_sent - before,
                    "torch": isinstance(x, torch.Tensor),
                }
            )
        exchange.finish()
        exchange.close()
        out["cases"][name] = steps

    def attempt(what, fn):
        try:
            fn()
            out["errors"][what] = None
        except Exception as exc:
            out["errors"][what] = _error(exc)

    case = CASES[1]

    def run_step(x, draw, matcher="hungarian"):
        exchange = RankExchange(timeout=30)
        try:
            pair_across_ranks(exchange, x, [len(x)], draw, get_matcher(matcher))
        finally:
            exchange.close()

    x, _ = case_data(case, rank, 0)

    def failing_draw(r, sizes):
        if rank == 1 and r == 1:
            raise RuntimeError("the noise of rank 1 could not be drawn")
        return case_draw(x, 0)(r, sizes)

    attempt("draw fails on rank 1", lambda: run_step(x, failing_draw))
    huge = x * 3e19 if rank == 1 else x  # finite samples whose squared distances overflow
    attempt("cost overflows on rank 1", lambda: run_step(huge, case_draw(huge, 0)))
    attempt(
        "solver fails on rank 0",
        lambda: run_step(x, case_draw(x, 0), lambda cost: np.zeros(len(cost), dtype=np.int64)),
    )
    wide = torch.cat([x, x[:, :1]], 1) if rank == 1 else x
    attempt("ranks disagree on D", lambda: run_step(wide, case_draw(wide, 0)))

    # loaders with a long timeout: a rank left waiting in a collective hangs the phase (and the
    # spawn's deadline fails the test) instead of timing out quietly
    batches = [case_data(case, rank, i)[0] for i in range(3 - rank)]  # rank 1 runs out early
    attempt(
        "uneven batch counts",
        lambda: list(MatchedNoiseLoader(batches, seed=SEED, across_ranks=True, timeout=600)),
    )

    def broken_inner():
        for i in range(3):
            if rank == 1 and i == 1:
                raise OSError("rank 1's shard is unreadable")
            yield case_data(case, rank, i)[0]

    attempt(
        "inner loader fails on rank 1",
        lambda: list(MatchedNoiseLoader(broken_inner(), seed=SEED, across_ranks=True, timeout=600)),
    )

    # seed=None: each rank's run seed differs; the exchange makes every rank use rank 0's
    torch.manual_seed(100 + rank)
    plain = [case_data(case, rank, i)[0] for i in range(2)]
    loader = MatchedNoiseLoader(plain, across_ranks=True, timeout=30)
    out["run_seed"] = {
        "before": loader.seed,
        "z": [pb.noise.numpy() for pb in loader],
        "after": loader.seed,
    }
    attempt(
        "explicit seeds differ",
        lambda: list(MatchedNoiseLoader(plain, seed=SEED + rank, across_ranks=True, timeout=30)),
    )

    # the loader with group_by (labels in the batch) and a per-rank loader for the info format
    labelled = [case_data(CASES[4], rank, i) for i in range(3)]
    for key, across in (("group_by", True), ("group_by_per_rank", False)):
        loader = MatchedNoiseLoader(
            labelled, seed=SEED, group_by=1, across_ranks=across, timeout=30
        )
        out[key] = [{"z": pb.noise.numpy(), "info": pb.info} for pb in loader]
    return out


def _worker(rank: int, folder: str, urls: str, phase: str) -> None:
    # a spawned rank inherits "spawn" as its default start method; its DataLoader workers must
    # fork from it to see its process group (webdataset's split_by_node reads the rank there)
    mp.set_start_method("fork", force=True)
    os.environ.pop("RANK", None)
    os.environ.pop("WORLD_SIZE", None)
    join_gloo(rank, WORLD, f"{folder}/store-{phase}")
    result = {}
    try:
        if phase == "run":
            result["per_rank"] = record(make_loader(urls))
            result["across"] = record(make_loader(urls, across_ranks=True, timeout=30))
            loader = make_loader(urls, across_ranks=True, timeout=30)
            result["head"] = record(loader, limit=BREAK_AT)  # early break with prefetch running
            result["state"] = loader.state_dict()
            loader.close()
        elif phase == "resume":
            with open(os.path.join(folder, f"run-{rank}.pkl"), "rb") as f:
                state = pickle.load(f)["state"]
            loader = make_loader(urls, across_ranks=True, timeout=30)
            loader.load_state_dict(state)
            result["tail"] = record(loader)
        elif phase == "exchange":
            result = _exchange_phase(rank)
        elif phase == "die":
            loader = make_loader(urls, across_ranks=True, timeout=20)
            start = time.monotonic()
            try:
                for i, _ in enumerate(loader):
                    if rank == 1 and i == 2:
                        with open(os.path.join(folder, f"{phase}-{rank}.pkl"), "wb") as f:
                            pickle.dump({"died": True}, f)
                        os._exit(0)  # a rank vanishes mid-epoch, without a word
                result["error"] = None
            except Exception as exc:  # what rank 0 must see: an error, not a hang
                result["error"] = f"{type(exc).__name__}: {exc}"
            result["seconds"] = time.monotonic() - start
            with open(os.path.join(folder, f"{phase}-{rank}.pkl"), "wb") as f:
                pickle.dump(result, f)
            os._exit(0)
    finally:
        with open(os.path.join(folder, f"{phase}-{rank}.pkl"), "wb") as f:
            pickle.dump(result, f)
    dist.destroy_process_group()


def spawn(folder: str, urls: str, phase: str) -> list[dict]:
    return spawn_ranks(
        _worker, (folder, urls, phase), WORLD, lambda r: os.path.join(folder, f"{phase}-{r}.pkl")
    )


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    folder = str(tmp_path_factory.mktemp("dist"))
    urls = write_shards(folder)
    run = spawn(folder, urls, "run")
    resume = spawn(folder, urls, "resume")
    return {"run": run, "resume": resume, "folder": folder, "urls": urls}


def _sqdist(x, z):
    return float(((x.reshape(len(x), -1) - z.reshape(len(z), -1)) ** 2).sum())


def test_every_sample_once_per_epoch_and_equal_batch_counts(runs):
    for mode in ("per_rank", "across"):
        per_rank = [r[mode] for r in runs["run"]]
        assert [len(b) for b in per_rank] == [BATCHES_PER_RANK] * WORLD
        keys = [k for batches in per_rank for b in batches for k in b["keys"]]
        assert len(keys) == SHARDS * PER_SHARD
        assert sorted(keys) == [f"s{i:05d}" for i in range(SHARDS * PER_SHARD)]
        assert all(len(b["keys"]) == BATCH for batches in per_rank for b in batches)


def test_each_rank_draws_its_own_noise(runs):
    z0 = np.stack([b["z"] for b in runs["run"][0]["per_rank"]])
    z1 = np.stack([b["z"] for b in runs["run"][1]["per_rank"]])
    assert not np.allclose(z0, z1)
    assert [b["info"]["rank"] for b in runs["run"][1]["per_rank"]] == [1] * BATCHES_PER_RANK
    # rank r's noise is a permutation of rank r's own seed stream
    for r in range(WORLD):
        b = runs["run"][r]["per_rank"][3]
        drawn = draw_like(torch.from_numpy(b["x"]), BATCH, seed=SEED, rank=r, epoch=0, index=3)
        assert np.array_equal(np.sort(drawn.numpy().ravel()), np.sort(b["z"].ravel()))


def test_across_ranks_equals_single_process_matching_of_the_global_batch(runs):
    across = [r["across"] for r in runs["run"]]
    per_rank = [r["per_rank"] for r in runs["run"]]
    gain = []
    for i in range(BATCHES_PER_RANK):
        xg = torch.from_numpy(np.concatenate([across[r][i]["x"] for r in range(WORLD)]))
        zg = torch.cat(
            [draw_like(xg, BATCH, seed=SEED, rank=r, epoch=0, index=i) for r in range(WORLD)]
        )
        expected = zg[match(xg, zg, "hungarian")].numpy()
        xg = xg.numpy()
        got = np.concatenate([across[r][i]["z"] for r in range(WORLD)])
        np.testing.assert_array_equal(got, expected)
        # the per-rank solution is one feasible global permutation: global is never worse
        same_x = np.concatenate([per_rank[r][i]["x"] for r in range(WORLD)])
        np.testing.assert_array_equal(same_x, xg)
        c_global = _sqdist(xg, got)
        c_local = _sqdist(xg, np.concatenate([per_rank[r][i]["z"] for r in range(WORLD)]))
        assert c_global <= c_local * (1 + 1e-6)
        gain.append(c_local - c_global)
        # one info format for every path: the keys of single-process pairing, the global batch
        for r in range(WORLD):
            assert across[r][i]["info"].keys() == per_rank[r][i]["info"].keys()
            assert across[r][i]["info"]["batch_size"] == WORLD * BATCH
            assert across[r][i]["info"]["gap_bound"] == 0.0
    assert sum(gain) > 0  # and strictly better somewhere


def test_resume_in_a_fresh_process_group_loses_and_repeats_nothing(runs):
    for r in range(WORLD):
        head, tail = runs["run"][r]["head"], runs["resume"][r]["tail"]
        full = runs["run"][r]["across"]
        assert runs["run"][r]["state"]["delivered"] == BREAK_AT
        assert len(head) + len(tail) == len(full)
        for got, want in zip(head + tail, full):
            assert got["keys"] == want["keys"]
            np.testing.assert_array_equal(got["z"], want["z"])


def test_a_rank_that_dies_is_an_error_not_a_hang(runs):
    out = spawn(runs["folder"], runs["urls"], "die")
    assert out[1] == {"died": True}
    assert out[0]["error"] is not None, "rank 0 finished an epoch its peer never saw"
    assert out[0]["seconds"] < 60


@pytest.fixture(scope="module")
def exchanged(runs):
    return spawn(runs["folder"], runs["urls"], "exchange")


def single_process(case, step):
    """pairing.pair on the concatenated global batch: the reference for across-rank matching."""
    name, framework, d, method, labelled, sizes = case
    xs, zs, labels = [], [], []
    for r in range(WORLD):
        x, lab = case_data(case, r, step)
        xs.append(x)
        zs.append(case_draw(x, step)(r, sizes[r]))
        labels.append(lab)
    cat = torch.cat if framework == "torch" else np.concatenate
    xg, zg = cat(xs), cat(zs)
    groups = np.concatenate(labels) if labelled else None
    idx, info = pair(xg, zg, get_matcher(method), groups=groups)
    zg = zg.numpy() if framework == "torch" else zg
    idx = idx.numpy() if framework == "torch" else idx
    return zg, idx, groups, info


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_exchange_equals_single_process_pairing_with_the_same_info(exchanged, case):
    name, framework, _, method, _, sizes = case
    for step in range(STEPS):
        zg, idx, groups, want = single_process(case, step)
        got = [exchanged[r]["cases"][name][step] for r in range(WORLD)]
        assert [g["torch"] for g in got] == [framework == "torch"] * WORLD  # framework kept
        z = np.concatenate([g["z"] for g in got])
        assert z.dtype == zg.dtype and z.shape == zg.shape
        if method == "auction":  # approximate: a permutation of the global draws within its bound
            rows = [int(np.flatnonzero((zg == v).all(1))[0]) for v in z]
            assert sorted(rows) == list(range(len(zg)))
            assert 0.0 <= got[0]["info"]["gap_bound"] <= get_matcher("auction").tol
        else:
            np.testing.assert_array_equal(z, zg[idx])
        if groups is not None:  # noise only moved between samples of the same label
            rows = [int(np.flatnonzero((zg == v).all(1))[0]) for v in z]
            assert (groups[rows] == groups).all()
        for g in got:
            info = g["info"]
            assert list(info) == list(want)  # the same keys, in the same order
            assert info == got[0]["info"]  # every rank sees the global solve's info
            assert info["batch_size"] == sum(map(sum, sizes))
            for key in ("method", "exact_permutation", "solver", "backend"):
                assert info.get(key) == want.get(key)
            assert info["cost"] == pytest.approx(want["cost"], rel=1e-4)
            assert info["cost_random"] == pytest.approx(want["cost_random"], rel=1e-4)
            if method != "auction":
                assert info["gap_bound"] == want["gap_bound"]


def test_bytes_sent_do_not_grow_with_the_item_size(exchanged):
    def sent(name, rank):
        return [s["bytes"] for s in exchanged[rank]["cases"][name]]

    for r in range(WORLD):
        assert sent("d2", r) == sent("d48", r) == sent("d3072", r)
        assert sent("d48-labels", r) == sent("d3072-labels", r)
    # rank 1 sends its header, its rows of the global cost (float32) and its labels: nothing of D
    for name, _, _, _, labelled, sizes in CASES:
        n = [sum(s) for s in sizes]
        header = (5 + len(sizes[0])) * 8 * (WORLD - 1)
        expected = header + max(n) * sum(n) * 4 + (max(n) * 8 if labelled else 0)
        assert sent(name, 1) == [expected] * STEPS, name
    # the old design sent rank 1's samples: B x D floats, here 8 x 3072 x 4 bytes
    assert sent("d3072", 1)[0] * 10 < 8 * 3072 * 4


DISAGREE = "disagree on the item size (per rank: {'item size': [48, 49]})"


@pytest.mark.parametrize(
    "what, rank0, rank1",
    [
        (
            "draw fails on rank 1",
            ("ValueError", "cost rows of rank 1 are not finite"),
            ("RuntimeError", "the noise of rank 1 could not be drawn"),
        ),
        (
            "cost overflows on rank 1",
            ("ValueError", "cost rows of rank 1 are not finite"),
            ("RuntimeError", "rank 0 could not match the global batch"),
        ),
        (
            "solver fails on rank 0",
            ("ValueError", "did not return a permutation"),
            ("RuntimeError", "did not return a permutation"),
        ),
        ("ranks disagree on D", ("ValueError", DISAGREE), ("ValueError", DISAGREE)),
        (
            "uneven batch counts",
            ("RuntimeError", "{1: 'ran out of batches'}"),
            ("RuntimeError", "rank 1 ran out of batches after 2 match steps"),
        ),
        (
            "inner loader fails on rank 1",
            ("RuntimeError", "{1: 'failed'}"),
            ("OSError", "rank 1's shard is unreadable"),
        ),
    ],
)
def test_a_failing_or_short_rank_is_an_error_on_every_rank(exchanged, what, rank0, rank1):
    for r, (kind, text) in enumerate((rank0, rank1)):
        error = exchanged[r]["errors"][what]
        assert error is not None, f"rank {r} saw no error for {what!r}"
        assert error[0] == kind and text in error[1], (r, error)


def test_group_by_across_ranks_through_the_loader(exchanged):
    case = CASES[4]
    across = [exchanged[r]["group_by"] for r in range(WORLD)]
    per_rank = [exchanged[r]["group_by_per_rank"] for r in range(WORLD)]
    assert [len(a) for a in across] == [3] * WORLD
    for i in range(3):
        xs = [case_data(case, r, i) for r in range(WORLD)]
        xg = torch.cat([x for x, _ in xs])
        labels = np.concatenate([lab for _, lab in xs])
        zg = torch.cat(
            [draw_like(xg, 8, seed=SEED, rank=r, epoch=0, index=i) for r in range(WORLD)]
        )
        idx, info = pair(xg, zg, get_matcher("hungarian"), groups=labels)
        got = np.concatenate([across[r][i]["z"] for r in range(WORLD)])
        np.testing.assert_array_equal(got, zg[idx].numpy())
        for r in range(WORLD):
            assert across[r][i]["info"].keys() == per_rank[r][i]["info"].keys()
            assert across[r][i]["info"]["gap_bound"] == 0.0
            assert across[r][i]["info"]["cost"] == pytest.approx(info["cost"], rel=1e-4)


def test_ranks_with_different_run_seeds_share_rank_0s_seed_across_ranks(exchanged):
    seeds = [exchanged[r]["run_seed"] for r in range(WORLD)]
    assert [s["before"] for s in seeds] == [100, 101] and [s["after"] for s in seeds] == [100, 100]
    for i in range(2):
        xg = torch.cat([case_data(CASES[1], r, i)[0] for r in range(WORLD)])
        zg = torch.cat(
            [
                draw_like(xg, len(xg) // WORLD, seed=100, rank=r, epoch=0, index=i)
                for r in range(WORLD)
            ]
        )
        got = np.concatenate([seeds[r]["z"][i] for r in range(WORLD)])
        np.testing.assert_array_equal(np.sort(got, 0), np.sort(zg.numpy(), 0))  # rank 0's draws
    for r in (0, 1):
        error = exchanged[r]["errors"]["explicit seeds differ"]
        assert error is not None
    assert "needs one seed on every rank" in exchanged[1]["errors"]["explicit seeds differ"][1]
