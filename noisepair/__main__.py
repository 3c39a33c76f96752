"""``python -m noisepair``: the same as the ``noisepair`` command."""

import sys

from noisepair.cli import main

sys.exit(main())
