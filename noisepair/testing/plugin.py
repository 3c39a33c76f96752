"""pytest plugin: the ``noise_monitor`` fixture, a Gaussianity check around any loader.

Registered through the ``pytest11`` entry point, so installing noisepair makes the fixture
available (``-p no:noisepair`` turns it off). The module imports only pytest: noisepair and
scipy load when a test first asks for the fixture.

    def test_training_noise(noise_monitor):
        for pb in noise_monitor(MatchedNoiseLoader(my_loader)):   # or any iterable of noise
            train_step(pb.sample, pb.noise)

When the test body has passed, the noise every wrapped loader yielded is tested against
N(0, I) (``noisepair.checks.gaussianity_report`` through a ``NoiseMonitor``) and the test
fails with the report's message if it is not, or if a wrapped loader was never iterated.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import pytest

_WATCHED = pytest.StashKey[list]()


class Watched:
    """An iterable that yields what ``loader`` yields and shows its noise to a NoiseMonitor."""

    def __init__(self, loader: Iterable, monitor: Any, noise: Callable[[Any], Any] | None):
        self.loader, self.monitor, self.noise = loader, monitor, noise

    def __iter__(self):
        from noisepair.batch import PairedBatch

        for item in self.loader:
            if self.noise is not None:
                z = self.noise(item)
            else:
                z = getattr(item, "noise", item)
            info = getattr(item, "info", None) or {}
            if "cost" not in info:  # raw noise has no pairing costs; only the Gaussianity is read
                info = {"batch_size": len(z), "cost": 0.0, "cost_random": 0.0}
            self.monitor.update(PairedBatch(sample=None, noise=z, batch=item, info=info))
            yield item

    def __len__(self) -> int:
        return len(self.loader)


@pytest.fixture
def noise_monitor(request):
    """``noise_monitor(loader, alpha=1e-3, max_vectors=20_000, noise=None)`` wraps a loader;
    the test fails at its end when the noise seen is not N(0, I).

    The loader may yield PairedBatches, noise arrays/tensors, or anything ``noise=`` maps to
    its noise (e.g. ``noise=lambda batch: batch["noise"]``).
    """
    from noisepair.checks import NoiseMonitor

    watched: list = request.node.stash.setdefault(_WATCHED, [])

    def wrap(
        loader: Iterable,
        alpha: float = 1e-3,
        max_vectors: int = 20_000,
        noise: Callable[[Any], Any] | None = None,
    ) -> Watched:
        w = Watched(loader, NoiseMonitor(max_vectors=max_vectors, alpha=alpha), noise)
        watched.append(w)
        return w

    return wrap


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item):
    result = yield  # re-raises when the test body failed: its own error is the one to see
    for i, w in enumerate(item.stash.get(_WATCHED, [])):
        name = f"noise_monitor loader {i} ({type(w.loader).__name__})"
        if w.monitor.batches == 0:
            pytest.fail(
                f"{name} was never iterated: loop over the object noise_monitor returns.",
                pytrace=False,
            )
        report, _ = w.monitor.report()
        if not report.passed:
            from noisepair.testing.assertions import describe

            pytest.fail(f"{name}: {describe(report)}", pytrace=False)
    return result
