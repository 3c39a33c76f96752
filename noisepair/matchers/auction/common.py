"""What both auctions share: the report of their certified bound, and whether numba is there."""

from __future__ import annotations

import functools


@functools.cache
def has_numba() -> bool:
    """Whether the compiled CPU auction can run (numba, the ``fast`` extra, is installed)."""
    try:
        import numba  # noqa: F401
    except ImportError:
        return False
    return True


def auction_info(
    gap: float,
    primal: float,
    dual: float,
    trace: float,
    rounds: int,
    phases: int,
    eps: float,
    **extra,
) -> dict:
    """What both auctions report: the certified gap, absolute and relative to the total cost and
    to the gain over the pairing as drawn (``trace``), and how the bidding went."""
    gain = trace - dual
    return {
        "gap": gap,
        "gap_bound": gap / abs(primal) if primal else 0.0,
        "gap_bound_gain": gap / gain if gain > 0 else 0.0,
        "auction_rounds": rounds,
        "auction_phases": phases,
        "auction_eps": eps,
        **extra,
    }
