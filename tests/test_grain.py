"""grain pipelines as they are: dataset iterators and grain.DataLoader with worker processes,
resumed from grain's own iterator state (get_state/set_state), not by replaying the epoch."""

import grain
import numpy as np
import pytest
from absl import flags

from noisepair import MatchedNoiseLoader

# grain's worker processes read absl flags; a script that does not start through absl.app must
# mark them parsed (grain's own examples run under absl.app)
if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()

N, BATCH = 96, 8


class Source:
    """A random-access source that counts the items it is asked for."""

    def __init__(self):
        self.reads = 0

    def __len__(self):
        return N

    def __repr__(self):  # grain checks a restored state against repr(data_source)
        return f"Source({N})"

    def __getitem__(self, i):
        self.reads += 1
        rng = np.random.default_rng(int(i))
        return {"image": (rng.normal(size=6) + 1).astype(np.float32), "id": np.int64(i)}


def iter_dataset(source):
    no_read_ahead = grain.ReadOptions(num_threads=0, prefetch_buffer_size=0)  # exact read counts
    return (
        grain.MapDataset.source(source).shuffle(seed=3).batch(BATCH).to_iter_dataset(no_read_ahead)
    )


def grain_loader(source, workers):
    return grain.DataLoader(
        data_source=source,
        sampler=grain.samplers.IndexSampler(N, shuffle=True, seed=3, num_epochs=1),
        operations=[grain.transforms.Batch(BATCH, drop_remainder=True)],
        worker_count=workers,
    )


def record(loader, limit=None):
    out = []
    for pb in loader:
        out.append((pb.batch["id"].tolist(), pb.noise.copy()))
        if limit is not None and len(out) == limit:
            break
    return out


def same(a, b):
    return len(a) == len(b) and all(
        x[0] == y[0] and np.array_equal(x[1], y[1]) for x, y in zip(a, b)
    )


@pytest.mark.parametrize("scope", [1, 2])
def test_a_grain_dataset_resumes_from_its_iterator_state(scope):
    def make(source):
        return MatchedNoiseLoader(
            iter_dataset(source), key="image", seed=0, scope=scope, prefetch=0
        )

    full = record(make(Source()))
    assert sorted(sum((ids for ids, _ in full), [])) == list(range(N))
    loader = make(Source())
    record(loader, limit=7)
    state = loader.state_dict()
    assert state["inner_state"] is not None
    source = Source()
    resumed = make(source)
    resumed.load_state_dict(state)
    it = iter(resumed)
    first = next(it)
    assert source.reads == BATCH * (1 + 7 % scope)  # one match group, not 7 batches
    rest = [(first.batch["id"].tolist(), first.noise.copy())] + record(it)
    assert same(rest, full[7:])


def test_a_grain_dataloader_with_worker_processes_resumes_exactly():
    def make():
        return MatchedNoiseLoader(grain_loader(Source(), workers=2), key="image", seed=0)

    full = record(make())
    assert len(full) == N // BATCH
    loader = make()
    record(loader, limit=5)
    state = loader.state_dict()
    loader.close()
    resumed = make()
    resumed.load_state_dict(state)
    assert same(record(resumed), full[5:])
