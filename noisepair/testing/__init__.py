"""Property-based validation of training noise, for your own pipeline's tests.

- assertions (numpy and scipy only): :func:`assert_gaussian`, :func:`assert_same_distribution`,
  :func:`assert_permutation_of_draws`, :func:`assert_independent_of_order`,
  :func:`assert_paths_shorter`;
- :mod:`noisepair.testing.families`: hard data families as plain seeded numpy batches;
- :mod:`noisepair.testing.strategies`: hypothesis strategies over those families, shapes,
  dtypes, frameworks and loaders (needs ``hypothesis``, in the ``test`` extra);
- :mod:`noisepair.testing.plugin`: the pytest plugin (registered by the package's ``pytest11``
  entry point) with the ``noise_monitor`` fixture.
"""

from noisepair.testing.assertions import (
    assert_gaussian,
    assert_independent_of_order,
    assert_paths_shorter,
    assert_permutation_of_draws,
    assert_same_distribution,
    describe,
    vectors,
)

__all__ = [
    "assert_gaussian",
    "assert_independent_of_order",
    "assert_paths_shorter",
    "assert_permutation_of_draws",
    "assert_same_distribution",
    "describe",
    "vectors",
]
