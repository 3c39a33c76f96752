"""Matchers by name: ``get_matcher("hungarian")``, ``get_matcher("knn", k=8)``, or a callable.

The contract a matcher fulfils is written in :mod:`noisepair.matchers.base`.
"""

from __future__ import annotations

from typing import Any

from noisepair.matchers.auction import Auction
from noisepair.matchers.auto import Auto
from noisepair.matchers.base import (
    FunctionMatcher,
    Matcher,
    Random,
    Selector,
    is_permutation,
)
from noisepair.matchers.exact import EMD, Hungarian
from noisepair.matchers.greedy import Greedy
from noisepair.matchers.knn import KNN
from noisepair.matchers.sinkhorn import Sinkhorn

MATCHERS: dict[str, type[Matcher] | type[Selector]] = {
    "hungarian": Hungarian,
    "emd": EMD,
    "sinkhorn": Sinkhorn,
    "greedy": Greedy,
    "knn": KNN,
    "random": Random,
    "auction": Auction,
    "auto": Auto,
}


def get_matcher(method: Any = "hungarian", **options) -> Matcher | Selector:
    """A :class:`Matcher` or :class:`Selector` from a name (with its options), an instance, or a
    callable solver ``cost -> cols`` / ``cost -> (rows, cols)``."""
    if isinstance(method, (Matcher, Selector)):
        if options:
            raise TypeError(
                "options are for a matcher given by name; configure the instance instead."
            )
        return method
    if isinstance(method, str):
        if method not in MATCHERS:
            raise ValueError(
                f"unknown method {method!r}; choose one of {sorted(MATCHERS)} or pass a callable."
            )
        return MATCHERS[method](**options)
    if callable(method):
        return FunctionMatcher(method)
    raise TypeError(f"method must be a name, a Matcher or a callable, got {type(method).__name__}.")


__all__ = [
    "MATCHERS",
    "Matcher",
    "Selector",
    "get_matcher",
    "is_permutation",
    "Hungarian",
    "EMD",
    "Sinkhorn",
    "Greedy",
    "KNN",
    "Random",
    "FunctionMatcher",
    "Auction",
    "Auto",
]
