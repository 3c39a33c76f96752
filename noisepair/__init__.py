"""noisepair: pair Gaussian noise with data by optimal assignment, inside any data loader."""

import os as _os

from noisepair.batch import PairedBatch
from noisepair.checks import NoiseMonitor, check_loader, gaussianity_report, path_gain
from noisepair.cost import cost_matrix
from noisepair.loader import MatchedNoiseLoader
from noisepair.matchers import MATCHERS, Matcher, Selector, get_matcher
from noisepair.pairing import match
from noisepair.semidiscrete import SemiDiscrete

# adapters/ sits at the top of the repository and installs as noisepair.adapters; from a plain
# source checkout (on PYTHONPATH, not installed) the repository root serves as a second home.
_root = _os.path.dirname(_os.path.dirname(_os.path.abspath(__file__)))
if not _os.path.isdir(_os.path.join(__path__[0], "adapters")) and _os.path.isfile(
    _os.path.join(_root, "adapters", "__init__.py")
):
    __path__.append(_root)

__version__ = "0.1.0"
__all__ = [
    "MatchedNoiseLoader",
    "PairedBatch",
    "match",
    "cost_matrix",
    "get_matcher",
    "Matcher",
    "Selector",
    "MATCHERS",
    "NoiseMonitor",
    "gaussianity_report",
    "path_gain",
    "check_loader",
    "SemiDiscrete",
]
