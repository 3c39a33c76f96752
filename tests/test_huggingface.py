"""MatchedNoiseLoader around a real Hugging Face ``datasets.Dataset``, in the ways people load one."""

import numpy as np
import pytest
from datasets import Dataset
from torch.utils.data import DataLoader

from noisepair import MatchedNoiseLoader

N, B = 40, 8


@pytest.fixture(scope="module")
def dataset():
    rng = np.random.default_rng(0)
    images = rng.standard_normal((N, 3, 4, 4)).astype(np.float32) + 1
    return Dataset.from_dict({"image": images, "label": np.arange(N)}), images


LOADERS = {
    "torch format, DataLoader": lambda ds: DataLoader(ds.with_format("torch"), batch_size=B),
    "numpy format, Dataset.iter": lambda ds: ds.with_format("numpy").iter(batch_size=B),
    "python lists, Dataset.iter": lambda ds: ds.iter(batch_size=B),
    "IterableDataset, 2 DataLoader workers": lambda ds: DataLoader(
        ds.to_iterable_dataset(num_shards=2).with_format("torch"), batch_size=B, num_workers=2
    ),
}


@pytest.mark.parametrize("form", list(LOADERS))
def test_every_item_once_with_its_own_image_and_matched_noise(dataset, form):
    ds, images = dataset
    seen = []
    for pb in MatchedNoiseLoader(LOADERS[form](ds), key="image"):
        labels = np.asarray(pb.batch["label"]).tolist()
        np.testing.assert_allclose(np.asarray(pb.sample), images[labels], rtol=1e-6)
        assert pb.noise.shape == pb.sample.shape and pb.noise.dtype == pb.sample.dtype
        assert type(pb.noise) is type(pb.sample)
        assert pb.info["exact_permutation"] and pb.info["cost"] <= pb.info["cost_random"]
        seen.extend(labels)
    assert sorted(seen) == list(range(N))  # nothing dropped or duplicated


def test_matched_noise_is_a_permutation_of_the_same_draws(dataset):
    ds, _ = dataset
    make = LOADERS["numpy format, Dataset.iter"]
    drawn = [pb.noise for pb in MatchedNoiseLoader(make(ds), key="image", method="random", seed=3)]
    matched = [pb.noise for pb in MatchedNoiseLoader(make(ds), key="image", seed=3)]
    for z, m in zip(drawn, matched, strict=True):
        assert not np.array_equal(z, m)
        assert sorted(row.tobytes() for row in z) == sorted(row.tobytes() for row in m)
