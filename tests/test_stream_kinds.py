"""Native resume for three streaming loaders, each the package from the registry reading shards
this file writes (litdata chunks, MosaicML MDS shards, parquet files):

- litdata's ``StreamingDataLoader`` (the kind ``LitDataState``);
- MosaicML streaming's ``StreamingDataset`` under a torch ``DataLoader`` (``SamplesSeenState``);
- a Hugging Face ``IterableDataset`` streamed from local parquet files, batched by itself
  (``LoaderState``) and through torchdata's ``StatefulDataLoader`` (``DatasetEpochState``).

For each: every sample once per epoch across a resume at several points (inside a match group,
after the epoch's last batch, in a later epoch) with the batches and the noise, bit for bit, of
an uninterrupted run; a resume that reads one match group, not the epoch so far; and two gloo
ranks resumed in a fresh process group. tests/test_resume_model.py drives the same kinds through
random sequences of breaks, restores and set_epoch.
"""

from __future__ import annotations

import atexit
import contextlib
import gc
import glob
import importlib.machinery
import importlib.metadata
import importlib.util
import io
import os
import pickle
import sys
import tempfile
import warnings

import litdata
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import torch.distributed as dist
from datasets import load_dataset
from datasets.distributed import split_dataset_by_node
from ranks import join_gloo, spawn_ranks
from torch.utils.data import DataLoader
from torchdata.stateful_dataloader import StatefulDataLoader

from noisepair import MatchedNoiseLoader


def import_mosaic():
    """MosaicML streaming's ``StreamingDataset``, ``MDSWriter`` and ``SharedMemory``. The
    package's ``__init__`` also imports its dataset zoo: ``streaming.vision`` needs torchvision
    (the registry has no build of it for a CPU torch) and its ``StreamingDataLoader`` needs
    transformers. A ``StreamingDataset`` over local shards uses neither, so the package and
    ``streaming.base`` are entered without running their ``__init__``; every module loaded is
    mosaic's own, found where the distribution is installed (a benchmark's folder holds a
    ``streaming.py`` of ours that would shadow it)."""
    search = [str(importlib.metadata.distribution("mosaicml-streaming").locate_file(""))]
    for name in ("streaming", "streaming.base"):
        if name not in sys.modules:
            spec = importlib.machinery.PathFinder.find_spec(name, search)
            sys.modules[name] = importlib.util.module_from_spec(spec)
        search = sys.modules[name].__path__
    from streaming.base.dataset import StreamingDataset
    from streaming.base.format.mds.writer import MDSWriter
    from streaming.base.shared.memory import SharedMemory

    return StreamingDataset, MDSWriter, SharedMemory


MosaicDataset, MDSWriter, MosaicMemory = import_mosaic()

D, B, N, SEED, WORLD = 6, 4, 32, 5, 2  # N items: 8 batches an epoch, 4 per rank on 2 ranks
PER_SHARD = 8
KINDS = ("litdata", "mosaic", "hf", "hf_sdl")
SHUFFLED = ("litdata", "mosaic")


def item(i: int) -> dict:
    x = np.random.default_rng(i).normal(size=D).astype(np.float32) + 1
    return {"x": x, "id": np.int64(i), "label": np.int64(i % 3)}


# -- shards, in each library's own format ------------------------------------------------------
def write_litdata(folder: str, n: int) -> None:
    cache = litdata.streaming.Cache(input_dir=folder, chunk_size=PER_SHARD)
    for i in range(n):
        cache[i] = item(i)
    cache.done()
    cache.merge()


def write_mds(folder: str, n: int) -> None:
    columns = {"x": f"ndarray:float32:{D}", "id": "int64", "label": "int64"}
    with MDSWriter(out=folder, columns=columns, size_limit=PER_SHARD * 64) as out:
        for i in range(n):
            out.write(item(i))


def write_parquet(folder: str, n: int) -> None:
    os.makedirs(folder)
    for s, start in enumerate(range(0, n, PER_SHARD)):
        rows = [item(i) for i in range(start, min(start + PER_SHARD, n))]
        table = pa.table(
            {
                "x": pa.array([r["x"] for r in rows], type=pa.list_(pa.float32())),
                "id": pa.array([r["id"] for r in rows], type=pa.int64()),
                "label": pa.array([r["label"] for r in rows], type=pa.int64()),
            }
        )
        pq.write_table(table, os.path.join(folder, f"part-{s:03d}.parquet"))


WRITERS = {"litdata": write_litdata, "mosaic": write_mds, "hf": write_parquet}
_SHARDS = tempfile.TemporaryDirectory(prefix="noisepair-shards-")


def shards(library: str, n: int, root: str | None = None) -> str:
    """A folder of items 0..n-1 in ``library``'s format, written once per process."""
    folder = os.path.join(root or _SHARDS.name, f"{library}-{n}")
    if not os.path.isdir(folder):
        WRITERS[library](folder, n)
    return folder


def parquet_stream(folder: str):
    """The files in order, unshuffled: a shuffle buffer does not survive a resume (Hugging
    Face: "examples from shuffle buffers are lost when resuming")."""
    files = sorted(glob.glob(os.path.join(folder, "*.parquet")))
    return load_dataset("parquet", data_files=files, split="train", streaming=True)


def make_inner(kind: str, n: int = N, *, workers: int = 0, reads: list | None = None, root=None):
    """The inner loader, as a fresh process builds it; ``reads`` gets a 1 per item decoded."""
    folder = shards("hf" if kind.startswith("hf") else kind, n, root)
    count = None if reads is None else reads.append
    if kind == "litdata":
        dataset = counted(litdata.StreamingDataset, "__getitem__", count)
        dataset = dataset(folder, shuffle=True, seed=3)
        return litdata.StreamingDataLoader(dataset, batch_size=B, num_workers=workers)
    if kind == "mosaic":
        _MOSAIC_MADE.append(folder)
        dataset = counted(MosaicDataset, "get_item", count)
        with lock_files_in(root or _SHARDS.name):
            dataset = dataset(local=folder, batch_size=B, shuffle=True, shuffle_seed=3)
        return DataLoader(dataset, batch_size=B, num_workers=workers)
    stream = parquet_stream(folder)
    if dist.is_initialized():
        stream = split_dataset_by_node(stream, dist.get_rank(), dist.get_world_size())
    if count is not None:
        stream = stream.map(lambda example: count(1) or example)
    if kind == "hf":
        return stream.with_format("numpy").batch(B)
    return StatefulDataLoader(stream.with_format("torch"), batch_size=B, num_workers=workers)


@contextlib.contextmanager
def lock_files_in(folder: str):
    """A mosaic dataset leaves two lock files in the temporary folder, for good (and each
    dataset of the process takes the next free pair of names): this keeps them in ours. The
    ranks of a node must share the folder (they lock their shared barrier there)."""
    saved, tempfile.tempdir = tempfile.tempdir, folder
    try:
        yield
    finally:
        tempfile.tempdir = saved


_MOSAIC_MADE: list = []  # mosaic datasets made since the last release_mosaic()


def release_mosaic() -> None:
    """What mosaic does at the process's exit, done once no dataset it made is in use (after a
    test): each StreamingDataset holds about ten shared-memory blocks, open files included, until
    the process exits, which a test that builds hundreds runs out of; this closes them, unlinks
    those this process created and removes the lock files, so the next dataset takes prefix 0."""
    if not _MOSAIC_MADE:
        return
    _MOSAIC_MADE.clear()
    gc.collect()
    for memory in [m for m in gc.get_objects() if type(m) is MosaicMemory]:
        memory.cleanup()
        atexit.unregister(memory.cleanup)
    for lock in glob.glob(os.path.join(_SHARDS.name, "*_filelock")):
        os.remove(lock)


@pytest.fixture(autouse=True)
def _release_mosaic():
    yield
    release_mosaic()


def counted(dataset_class, method: str, count):
    """``dataset_class``, or a subclass whose ``method`` (the one that reads an item) calls
    ``count(1)`` first."""
    if count is None:
        return dataset_class

    def read(self, *args, **kwargs):
        count(1)
        return getattr(dataset_class, method)(self, *args, **kwargs)

    return type(f"Counted{dataset_class.__name__}", (dataset_class,), {method: read})


def wrap(inner, scope: int = 1, **kw) -> MatchedNoiseLoader:
    return MatchedNoiseLoader(inner, key="x", seed=SEED, scope=scope, **kw)


# -- runs --------------------------------------------------------------------------------------
def through_a_checkpoint(state: dict) -> dict:
    buffer = io.BytesIO()
    torch.save({"loader": state}, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)["loader"]


def seen(pb) -> tuple:
    ids = np.asarray(pb.batch["id"]).tolist()
    return pb.info["epoch"], pb.info["batch_index"], ids, np.asarray(pb.noise)


def record(loader, limit=None) -> list:
    out = []
    for pb in loader:
        out.append(seen(pb))
        if len(out) == limit:
            break
    return out


def same(a: list, b: list) -> bool:
    return len(a) == len(b) and all(
        x[:3] == y[:3] and np.array_equal(x[3], y[3]) for x, y in zip(a, b)
    )


def ids_of(batches: list) -> list:
    return sorted(i for batch in batches for i in batch[2])


def run_and_save(loader, plan: dict) -> tuple[list, list]:
    """Each epoch of ``plan`` ({epoch: points}) in full, saving the state after ``points``
    batches; returns the epochs' batches and (epoch, points, state) per save."""
    epochs, saved = [], []
    for epoch, points in plan.items():
        loader.set_epoch(epoch)
        batches = []
        for pb in loader:
            batches.append(seen(pb))
            if len(batches) in points:
                saved.append((epoch, len(batches), through_a_checkpoint(loader.state_dict())))
        epochs.append(batches)
    return epochs, saved


def resume(make, state: dict) -> tuple[list, list]:
    """A fresh loader restored from ``state``: the rest of its epoch, then the next epoch."""
    loader = make()
    loader.load_state_dict(state)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the loop does no work: "skips batches itself"
        return record(loader), record(loader)


# 3 and 5: inside a match group of 2; 8: after the epoch's last batch, before its end is seen
PLAN = {0: (1, 3, 8), 1: (5,)}
SETUPS = [(kind, scope, 0) for kind in KINDS for scope in (1, 2)]
SETUPS += [("litdata", 2, 2), ("mosaic", 2, 2), ("hf_sdl", 2, 2)]  # DataLoader workers


@pytest.mark.parametrize("kind, scope, workers", SETUPS)
def test_every_sample_once_per_epoch_with_the_same_noise_across_a_resume(kind, scope, workers):
    def make():
        return wrap(make_inner(kind, workers=workers), scope)

    reference = make()
    assert type(reference._inner).__name__ == EXPECTED_KIND[kind]
    full, _ = run_and_save(reference, {0: (), 1: ()})
    for epoch in full:
        assert len(epoch) == N // B and ids_of(epoch) == list(range(N))
    if kind in SHUFFLED:
        assert ids_of(full[0][:1]) != ids_of(full[1][:1])  # each epoch has its own order

    epochs, saved = run_and_save(make(), PLAN)
    assert all(same(a, b) for a, b in zip(epochs, full))
    for epoch, at, state in saved:
        assert state["delivered"] == at
        assert state["inner_at"] == 0 or state["inner_state"] is not None  # the native path
        rest, after = resume(make, state)
        assert same(full[epoch][:at] + rest, full[epoch]), f"epoch {epoch} resumed at {at}"
        if epoch + 1 < len(full):
            assert same(after, full[epoch + 1]), f"the epoch after a resume at {epoch}/{at}"


EXPECTED_KIND = {
    "litdata": "LitDataState",
    "mosaic": "SamplesSeenState",
    "hf": "DatasetEpochState",
    "hf_sdl": "DatasetEpochState",
}


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("scope", [1, 2])
def test_a_resume_reads_one_match_group_not_the_epoch_so_far(kind, scope):
    """prefetch=0: the items decoded from load_state_dict to the first batch are one match
    group, plus at most a batch of the library's own (a Hugging Face pipeline re-reads what it
    read since its last inner checkpoint), the same at batch 3 as at batch 7: no replay (which
    would decode 3 and 7 batches first)."""
    reads: list = []

    def first_batch(state=None):
        loader = wrap(make_inner(kind, reads=reads), scope, prefetch=0)
        reads.clear()
        if state is not None:
            loader.load_state_dict(state)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return next(iter(loader)).info["batch_index"], len(reads)

    assert first_batch() == (0, scope * B)
    first = wrap(make_inner(kind, reads=[]), scope, prefetch=0)  # the same pipeline, counted
    states = {at: through_a_checkpoint(first.state_dict()) for at, _ in enumerate(first, 1)}
    at_3, at_7 = first_batch(states[3]), first_batch(states[7])
    assert (at_3[0], at_7[0]) == (3, 7)
    assert scope * B <= at_3[1] == at_7[1] <= (scope + 1) * B


@pytest.mark.parametrize("kind", KINDS)
def test_a_state_is_a_snapshot_also_after_a_restore(kind):
    """States kept in memory, not through a checkpoint: the one loaded is left as it was, and
    each taken after the restore resumes where it was taken (litdata keeps the dict it loaded,
    updates it as it reads and hands it out again)."""

    def make():
        return wrap(make_inner(kind), prefetch=2)

    (full,), [(_, at, state)] = run_and_save(make(), {0: (2,)})
    kept = pickle.dumps(state)
    loader = make()
    loader.load_state_dict(state)
    states = [(at + i, loader.state_dict()) for i, _ in enumerate(loader, 1)]
    assert pickle.dumps(state) == kept
    for at, state in states[:-1]:
        rest, _ = resume(make, state)
        assert same(full[:at] + rest, full), f"resumed at {at}"


# -- two ranks ---------------------------------------------------------------------------------
RANK_PLAN = {0: (1, 3), 1: (2,)}  # 4 batches per rank and epoch


def _rank(rank: int, folder: str) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(WORLD), LOCAL_RANK=str(rank))
    os.environ.update(LOCAL_WORLD_SIZE=str(WORLD))  # mosaic's shared memory spans the node
    join_gloo(rank, WORLD, f"{folder}/store")
    result = {}
    try:
        for kind in KINDS:

            def make(kind=kind):
                inner = make_inner(kind, root=folder)
                return wrap(inner, scope=2, across_ranks=True, timeout=30)

            full, _ = run_and_save(make(), {0: (), 1: ()})
            epochs, saved = run_and_save(make(), RANK_PLAN)
            resumed = [(epoch, at, state, *resume(make, state)) for epoch, at, state in saved]
            result[kind] = {"full": full, "epochs": epochs, "resumed": resumed}
    finally:
        with open(os.path.join(folder, f"rank-{rank}.pkl"), "wb") as f:
            pickle.dump(result, f)
    dist.destroy_process_group()


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    folder = str(tmp_path_factory.mktemp("stream-ranks"))
    for library in WRITERS:  # written once, before the ranks start
        shards(library, N, folder)
    return spawn_ranks(
        _rank, (folder,), WORLD, lambda r: os.path.join(folder, f"rank-{r}.pkl"), timeout_s=240
    )


@pytest.mark.parametrize("kind", KINDS)
def test_two_ranks_split_every_epoch_and_resume_in_a_fresh_process_group(ranks, kind):
    per_rank = [r[kind] for r in ranks]
    for epoch in range(2):
        parts = [ids_of(r["full"][epoch]) for r in per_rank]
        assert [len(p) for p in parts] == [N // WORLD] * WORLD  # equal shares
        assert sorted(parts[0] + parts[1]) == list(range(N))  # every sample once, split
    for r in per_rank:
        assert all(same(a, b) for a, b in zip(r["epochs"], r["full"]))
        assert len(r["resumed"]) == 3
        for epoch, at, state, rest, after in r["resumed"]:
            assert state["delivered"] == at
            assert same(r["full"][epoch][:at] + rest, r["full"][epoch])
            if epoch + 1 < len(r["full"]):
                assert same(after, r["full"][epoch + 1])
    if kind == "mosaic":  # the state counts the global batch: each rank's samples times 2
        states = [s for r in per_rank for _, at, s, *_ in r["resumed"] if at == 3]
        assert [s["inner_state"]["sample_in_epoch"] for s in states] == [2 * B * WORLD] * WORLD
