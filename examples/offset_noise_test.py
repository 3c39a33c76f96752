"""Validating offset noise in a DDPM pipeline with noisepair.testing.

    python -m pytest examples/offset_noise_test.py

Offset noise (crosslabs; diffusers' ``--noise_offset``) adds one N(0, s^2) value per sample and
channel, constant over the pixels: ``noise = z + s * n_bc``. noisepair adds it after matching,
so the matched draws stay N(0, I) and the offset is fresh noise on top. The epsilon target a
trainer regresses on is therefore deliberately *not* N(0, I): the first test shows the N(0, I)
assertion catching it; the next two validate it against the distribution it is documented to
have, once by its known covariance, once against a reference sampler (a two-sample test).
"""

import numpy as np
import pytest
import torch
from noisepair.adapters import DDPM

from noisepair import MatchedNoiseLoader
from noisepair.testing import assert_gaussian, assert_same_distribution

SHAPE = (3, 32, 32)
OFFSET = 0.1


def training_noise(batches=16, batch_size=64, seed=0):
    """The epsilon targets a DDPM trainer with offset noise regresses on, from matched batches."""
    g = torch.Generator().manual_seed(seed)
    images = [torch.rand(batch_size, *SHAPE, generator=g) * 2 - 1 for _ in range(batches)]
    ddpm = DDPM(noise_offset=OFFSET)
    return [ddpm(pb, generator=g).target for pb in MatchedNoiseLoader(images, seed=seed)]


def offset_covariance(shape, offset):
    """I, plus offset^2 between any two coordinates of the same channel."""
    channels, pixels = shape[0], int(np.prod(shape[1:]))
    return np.eye(channels * pixels) + offset**2 * np.kron(
        np.eye(channels), np.ones((pixels, pixels))
    )


def offset_reference(n):
    """The documented offset noise, drawn independently of the pipeline under test."""
    rng = np.random.default_rng(1)
    return rng.standard_normal((n, *SHAPE)) + OFFSET * rng.standard_normal((n, SHAPE[0], 1, 1))


def test_offset_noise_is_not_standard_normal():
    with pytest.raises(AssertionError, match=r"is not N\(0, I\)"):
        assert_gaussian(training_noise())


def test_offset_noise_has_its_documented_covariance():
    assert_gaussian(training_noise(), cov=offset_covariance(SHAPE, OFFSET))


def test_offset_noise_matches_a_reference_sampler():
    noise = training_noise()
    assert_same_distribution(noise, offset_reference)
    with pytest.raises(AssertionError, match="coordinate mean: REJECTED"):
        assert_same_distribution(
            noise, lambda n: np.random.default_rng(2).standard_normal((n, *SHAPE))
        )
