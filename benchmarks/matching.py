"""Full matching grid (B 64..4096 x D 2, 64, 3072, 16384): writes benchmarks/results/matching.md.

The logic lives in noisepair.bench (also behind ``noisepair bench``); ``--quick`` runs a small grid.
"""
import sys
from pathlib import Path

from noisepair.bench import run

if __name__ == "__main__":
    quick = "--quick" in sys.argv[1:]
    out = Path(__file__).parent / "results" / ("matching_quick.md" if quick else "matching.md")
    print(run(quick=quick, out=out))
