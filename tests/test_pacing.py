"""How far ahead the thread pairs: a fixed depth, or "auto" (measured on the loop itself)."""

import itertools
import time

import numpy as np
import pytest

from noisepair import MatchedNoiseLoader
from noisepair.pacing import AHEAD, Fixed, Trial, pacing
from noisepair.prefetch import Prefetcher


def run_trial(period_ahead: float, period_on_demand: float, passes: int = 1) -> Trial:
    """A trial fed the loop's clock: each period as long as its mode's, until it chooses."""
    trial, now = Trial(), 0.0
    for _ in range(passes):
        trial.start()
        for _ in range(100):
            if trial.chosen is not None:
                return trial
            now += period_on_demand if trial.depth == 0 else period_ahead
            trial.delivered(now)
    return trial


@pytest.mark.parametrize(
    "ahead, on_demand, chosen",
    [(1.0, 0.9, 0), (0.9, 1.0, AHEAD), (1.0, 0.99, 0), (0.99, 1.0, 0)],
)
def test_the_trial_keeps_the_faster_mode(ahead, on_demand, chosen):
    """Pairing ahead works beside the step: it is kept only when clearly faster."""
    trial = run_trial(ahead, on_demand)
    assert trial.chosen == chosen and trial.depth == chosen
    measured = Trial.rounds * Trial.window
    assert len(trial.periods[0]) == len(trial.periods[AHEAD]) == measured
    assert trial.periods[AHEAD] == [pytest.approx(ahead)] * measured
    assert trial.periods[0] == [pytest.approx(on_demand)] * measured
    settled = trial.depth
    trial.delivered(1e6)  # after the choice nothing moves it
    assert trial.depth == settled and trial.chosen == chosen


def test_a_stall_does_not_decide_the_trial():
    """One long stall (another process, a checkpoint) in the faster mode's windows: the
    median period still shows which mode is faster."""
    trial, now, on_demand = Trial(), 0.0, 0
    trial.start()
    trial.delivered(now)
    while trial.chosen is None:
        on_demand += trial.depth == 0
        period = 500.0 if on_demand == 6 else 1.0 if trial.depth == 0 else 1.2
        now += period
        trial.delivered(now)
    assert 500.0 in trial.periods[0] and trial.chosen == 0


def test_the_trial_skips_warmup_and_the_batches_paired_before_a_switch():
    """Warm-up periods and the periods right after a switch (batches already paired ahead
    drain first) are not measured: a slow warm-up or a fast drain cannot decide it."""
    trial, now, depths = Trial(), 0.0, []
    trial.start()
    trial.delivered(now)
    while trial.chosen is None:
        depths.append(trial.depth)
        now += 100.0 if len(depths) <= Trial.warmup else 1.0  # a slow warm-up
        trial.delivered(now)
    measured = Trial.window * Trial.rounds * 2
    switches = Trial.rounds * 2 - 1
    assert len(depths) == Trial.warmup + measured + switches * Trial.settle
    assert all(p == 1.0 for ps in trial.periods.values() for p in ps)
    assert depths[: Trial.warmup + Trial.window] == [AHEAD] * (Trial.warmup + Trial.window)


def test_a_new_pass_is_not_a_period():
    """The gap between one pass's last batch and the next pass's first (an evaluation, the end
    of an epoch) is not a step: it is not measured."""
    trial, now = Trial(), 0.0
    trial.start()
    for _ in range(Trial.warmup + 3):
        now += 1.0
        trial.delivered(now)
    trial.start()
    now += 1000.0
    trial.delivered(now)
    while trial.chosen is None:
        now += 1.0
        trial.delivered(now)
    assert max(p for ps in trial.periods.values() for p in ps) == 1.0


@pytest.mark.parametrize("batches_per_pass", [2, 3, Trial.window])
def test_epochs_shorter_than_a_window_still_decide(batches_per_pass):
    """Each pass gives one period fewer than its batches; windows go on across passes."""
    trial, now = Trial(), 0.0
    for _ in range(200):
        trial.start()
        now += 1000.0  # between passes: never a period
        for _ in range(batches_per_pass):
            now += 0.9 if trial.depth == 0 else 1.0
            trial.delivered(now)
        if trial.chosen is not None:
            break
    assert trial.chosen == 0
    measured = Trial.rounds * Trial.window
    assert trial.periods[0] == [pytest.approx(0.9)] * measured
    assert trial.periods[AHEAD] == [pytest.approx(1.0)] * measured


def test_pacing_follows_the_option():
    assert isinstance(pacing("auto"), Trial) and pacing("auto").depth == AHEAD
    assert isinstance(pacing(0), Fixed) and pacing(0).depth == 0
    assert pacing(5).depth == 5


class Counted:
    """A generator that counts the items the thread made."""

    def __init__(self):
        self.made = 0

    def __iter__(self):
        for i in itertools.count():
            self.made += 1
            yield i


def wait_for(condition, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.01)
    return condition()


def test_the_prefetcher_follows_a_depth_that_changes_between_items():
    source, depth = Counted(), Fixed(2)
    producer = Prefetcher(iter(source), depth)
    try:
        assert next(producer) == 0
        assert wait_for(lambda: source.made == 3)  # the item taken and 2 ahead
        depth.depth = 0
        assert [next(producer), next(producer)] == [1, 2]  # made ahead: delivered first
        time.sleep(0.2)
        assert source.made == 3  # nothing more until asked
        assert next(producer) == 3 and source.made == 4
        time.sleep(0.2)
        assert source.made == 4
        depth.depth = 1
        assert next(producer) == 4
        assert wait_for(lambda: source.made == 6)
        time.sleep(0.2)
        assert source.made == 6
    finally:
        producer.close()


@pytest.mark.parametrize("prefetch", ["auto", 0, 1, 3])
def test_the_depth_changes_no_batch_and_no_noise(prefetch):
    """Batches and noise are the same whatever the pacing, a trial's switches included."""
    rng = np.random.default_rng(0)
    batches = [rng.standard_normal((8, 4)).astype(np.float32) for _ in range(60)]

    def run(option):
        loader = MatchedNoiseLoader(batches, prefetch=option, seed=1)
        return [(pb.sample.copy(), pb.noise.copy()) for pb in loader], loader

    reference, _ = run(2)
    got, loader = run(prefetch)
    for (x, z), (x_ref, z_ref) in zip(got, reference, strict=True):
        np.testing.assert_array_equal(x, x_ref)
        np.testing.assert_array_equal(z, z_ref)
    if prefetch == "auto":  # 60 batches are enough to decide, and the choice is kept
        assert loader._pacing.chosen in (0, AHEAD)


def test_prefetch_must_be_a_depth_or_auto():
    with pytest.raises(TypeError, match=r'prefetch must be an integer .*or "auto"'):
        MatchedNoiseLoader([np.zeros((2, 3))], prefetch="fast")
    with pytest.raises(ValueError, match="prefetch must be >= 0"):
        MatchedNoiseLoader([np.zeros((2, 3))], prefetch=-1)
