"""What a resume costs: items read and seconds to the first batch after ``load_state_dict``.

Three inner loaders over the same data (EPOCH batches of BATCH items; every item is "decoded":
a float32 array of D values built from its index, a stand-in for reading an image), each resumed
at 10%, 50% and 90% of an epoch in a fresh MatchedNoiseLoader:

- ``DataLoader`` (stateless): the epoch is replayed up to the match group of the resume point
  and the delivered batches are skipped before matching: reads grow with the position;
- ``StatefulDataLoader`` (torchdata): its own state, saved with each delivered batch, is
  restored: reads are one match group plus the prefetch depth, whatever the position;
- ``WebDataset`` (tar shards, no iterator state): replayed like the DataLoader, decoding
  included;
- a grain dataset: its iterator's own state (``get_state``/``set_state``) is restored;
- three streaming loaders over shards in their own format, each restored from its own state:
  litdata's ``StreamingDataLoader``, MosaicML streaming's ``StreamingDataset`` under a torch
  ``DataLoader`` (its state computed from the samples seen), and a Hugging Face
  ``IterableDataset`` streamed from parquet files, batched by itself and through torchdata's
  ``StatefulDataLoader``.

The shards hold each item's index; reading an item decodes it, as for the others.

``python benchmarks/resume.py [--quick]`` -> benchmarks/results/resume.md
"""

from __future__ import annotations

import argparse
import io
import multiprocessing
import sys
import tarfile
import tempfile
import time
from importlib.metadata import version
from pathlib import Path

import grain
import litdata
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
import webdataset as wds
from datasets import load_dataset
from harness import machine_info, machine_line, table, write_results
from torch.utils.data import DataLoader, Dataset
from torchdata.stateful_dataloader import StatefulDataLoader

from noisepair import MatchedNoiseLoader

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from test_stream_kinds import import_mosaic  # noqa: E402  (mosaic without its dataset zoo)

MosaicDataset, MDSWriter, _ = import_mosaic()

BATCH, D, PREFETCH, SCOPE = 16, 3072, 0, 1  # prefetch 0: no read-ahead in the counts
POSITIONS = (0.1, 0.5, 0.9)
STREAMING = ("litdata", "mosaicml-streaming", "datasets")


def decode(i: int) -> np.ndarray:
    """An item's "image": a function of its index that takes some work to build."""
    x = np.random.default_rng(i).standard_normal(D, dtype=np.float32)
    return np.tanh(x * 0.5)


class Items(Dataset):
    """Random access to the items, counting reads (torch tensors, or numpy for grain)."""

    def __init__(self, n: int, reads, numpy: bool = False):
        self.n, self.reads, self.numpy = n, reads, numpy

    def __len__(self):
        return self.n

    def __repr__(self):  # grain checks a restored state against repr(data_source)
        return f"Items({self.n})"

    def __getitem__(self, i):
        with self.reads.get_lock():
            self.reads.value += 1
        return decode(int(i)) if self.numpy else torch.from_numpy(decode(int(i)))


def write_shards(folder: Path, n: int, per_shard: int) -> list[str]:
    urls = []
    for s in range(0, n, per_shard):
        path = folder / f"shard-{s // per_shard:04d}.tar"
        with tarfile.open(path, "w") as tar:
            for i in range(s, min(s + per_shard, n)):
                payload = io.BytesIO()
                np.save(payload, np.int64(i))
                info = tarfile.TarInfo(f"{i:08d}.idx.npy")
                info.size = payload.tell()
                payload.seek(0)
                tar.addfile(info, payload)
        urls.append(str(path))
    return urls


def write_streams(folder: Path, n: int, per_shard: int) -> dict[str, str]:
    """The indices 0..n-1 as litdata chunks, MosaicML MDS shards and parquet files."""
    paths = {name: str(folder / name) for name in ("litdata", "mds", "parquet")}
    cache = litdata.streaming.Cache(input_dir=paths["litdata"], chunk_size=per_shard)
    for i in range(n):
        cache[i] = {"idx": np.int64(i)}
    cache.done()
    cache.merge()
    with MDSWriter(out=paths["mds"], columns={"idx": "int64"}, size_limit=per_shard * 8) as out:
        for i in range(n):
            out.write({"idx": np.int64(i)})
    Path(paths["parquet"]).mkdir()
    for s in range(0, n, per_shard):
        indices = pa.array(range(s, min(s + per_shard, n)), type=pa.int64())
        pq.write_table(
            pa.table({"idx": indices}), f"{paths['parquet']}/{s // per_shard:04d}.parquet"
        )
    return paths


def decoding(dataset_class, method: str, reads):
    """``dataset_class`` whose ``method`` (the one that reads an item) decodes the item."""

    def read(self, *args):
        return count_and_decode(getattr(dataset_class, method)(self, *args), reads)

    return type(f"Decoding{dataset_class.__name__}", (dataset_class,), {method: read})


def count_and_decode(sample: dict, reads) -> torch.Tensor:
    with reads.get_lock():
        reads.value += 1
    return torch.from_numpy(decode(int(sample["idx"])))


def make_loaders(n: int, urls: list[str], streams: dict[str, str], reads):
    def counted_decode(sample):
        with reads.get_lock():
            reads.value += 1
        return (torch.from_numpy(decode(int(sample["idx.npy"]))),)

    def webdataset_loader():
        ds = (
            wds.WebDataset(urls, shardshuffle=False, empty_check=False)
            .decode()
            .map(counted_decode)
            .batched(BATCH, partial=False)
        )
        return wds.WebLoader(ds, batch_size=None, num_workers=0)

    def litdata_loader():
        dataset = decoding(litdata.StreamingDataset, "__getitem__", reads)(streams["litdata"])
        return litdata.StreamingDataLoader(dataset, batch_size=BATCH, num_workers=0)

    def mosaic_loader():
        dataset = decoding(MosaicDataset, "get_item", reads)
        return DataLoader(dataset(local=streams["mds"], batch_size=BATCH), batch_size=BATCH)

    def hugging_face_stream():
        files = sorted(str(p) for p in Path(streams["parquet"]).glob("*.parquet"))
        stream = load_dataset("parquet", data_files=files, split="train", streaming=True)
        return stream.map(lambda sample: {"x": count_and_decode(sample, reads).numpy()})

    return {
        "DataLoader (replay)": lambda: DataLoader(Items(n, reads), batch_size=BATCH),
        "StatefulDataLoader (native state)": lambda: StatefulDataLoader(
            Items(n, reads), batch_size=BATCH
        ),
        "WebDataset (replay)": webdataset_loader,
        "grain dataset (iterator state)": lambda: (
            grain.MapDataset.source(Items(n, reads, numpy=True))
            .batch(BATCH)
            .to_iter_dataset(grain.ReadOptions(num_threads=0, prefetch_buffer_size=0))
        ),
        "litdata StreamingDataLoader (native state)": litdata_loader,
        "mosaic StreamingDataset (samples seen)": mosaic_loader,
        "HF IterableDataset, batched (native state)": lambda: (
            hugging_face_stream().with_format("torch").batch(BATCH)
        ),
        "HF IterableDataset + StatefulDataLoader": lambda: StatefulDataLoader(
            hugging_face_stream().with_format("torch"), batch_size=BATCH
        ),
    }


def wrap(inner):
    # a Hugging Face batch is a dict of columns; the others' batch is the sample
    key = "x" if "datasets" in type(getattr(inner, "dataset", inner)).__module__ else None
    return MatchedNoiseLoader(inner, key=key, seed=0, prefetch=PREFETCH, scope=SCOPE)


def measure(make, at: int, reads) -> dict:
    loader = wrap(make())
    it = iter(loader)
    for _ in range(at):
        next(it)
    state = loader.state_dict()
    it.close()
    reads.value = 0
    resumed = wrap(make())
    resumed.load_state_dict(state)
    start = time.perf_counter()
    it = iter(resumed)
    first = next(it)
    seconds = time.perf_counter() - start
    read = reads.value
    it.close()
    assert first.info["batch_index"] == at
    return {"reads": read, "seconds": seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a short epoch (smoke test)")
    args = parser.parse_args()
    batches = 40 if args.quick else 256
    n = batches * BATCH
    info = machine_info()
    reads = multiprocessing.Value("q", 0)
    started = time.perf_counter()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        urls = write_shards(Path(tmp), n, per_shard=8 * BATCH)
        streams = write_streams(Path(tmp), n, per_shard=8 * BATCH)
        tempfile.tempdir = tmp  # mosaic's lock files, which it leaves behind
        for name, make in make_loaders(n, urls, streams, reads).items():
            for position in POSITIONS:
                at = int(position * batches)
                m = measure(make, at, reads)
                rows.append(
                    [
                        name,
                        f"{position:.0%} ({at} of {batches})",
                        str(m["reads"]),
                        f"{m['reads'] / BATCH:.1f}",
                        f"{m['seconds'] * 1000:.0f}",
                    ]
                )
    lines = [
        "# Resume cost: items read and time to the first batch after load_state_dict",
        "",
        machine_line(info),
        f"Command: `python benchmarks/resume.py{' --quick' if args.quick else ''}`; epoch of "
        f"{batches} batches of {BATCH} items, D={D}, prefetch={PREFETCH}, scope={SCOPE}; "
        f"took {time.perf_counter() - started:.0f} s.",
        "",
        f"Streaming packages: {', '.join(f'{p} {version(p)}' for p in STREAMING)}.",
        "",
        "Items read counts every item decoded from the `load_state_dict` to the first batch; it "
        "is exact (with prefetch p the thread would read p batches more meanwhile), the time is "
        "not (shared machine). A Hugging Face `.batch()` pipeline reads one batch more: it "
        "restores the state from before the batch it built last and reads that batch again.",
        "",
        *table(
            ["inner loader", "resumed at", "items read", "batches read", "ms to first batch"], rows
        ),
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    print(write_results("resume", text, quick=args.quick))


if __name__ == "__main__":
    main()
