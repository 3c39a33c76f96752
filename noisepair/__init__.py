"""noisepair: pair Gaussian noise with data by optimal assignment, inside any data loader."""
from noisepair.batch import PairedBatch
from noisepair.checks import NoiseMonitor, check_loader, gaussianity_report, path_gain
from noisepair.cost import cost_matrix
from noisepair.loader import MatchedNoiseLoader
from noisepair.matchers import MATCHERS, Matcher, Selector, get_matcher
from noisepair.pairing import match

__version__ = "0.1.0"
__all__ = ["MatchedNoiseLoader", "PairedBatch", "match", "cost_matrix", "get_matcher", "Matcher",
           "Selector", "MATCHERS", "NoiseMonitor", "gaussianity_report", "path_gain",
           "check_loader"]
