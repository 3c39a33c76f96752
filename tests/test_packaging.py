"""Where noisepair is found and what it needs: a plain source checkout, the core without extras."""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
#: what the extras bring (demo, pot, fast, torch, the baselines): the core must not need them.
EXTRAS = ("torch", "ot", "sklearn", "matplotlib", "tqdm", "numba", "torchcfm")


def _python(code: str, *, plain_checkout: bool = False) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh interpreter.

    ``plain_checkout``: without site (so without the editable install's finder), the checkout
    and the installed third-party packages on PYTHONPATH, as a user who only clones sees it.
    """
    argv, env = [sys.executable], dict(os.environ)
    if plain_checkout:
        argv.append("-S")
        env["PYTHONPATH"] = os.pathsep.join([str(ROOT), sysconfig.get_paths()["purelib"]])
    argv += ["-c", textwrap.dedent(code)]
    return subprocess.run(argv, capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)


def test_adapters_import_from_a_plain_source_checkout():
    proc = _python(
        """
        import sys
        assert not any("editable" in type(f).__name__.lower() for f in sys.meta_path)
        import noisepair.adapters
        from noisepair.adapters import RectifiedFlow
        print(noisepair.adapters.__file__)
        """,
        plain_checkout=True,
    )
    assert proc.returncode == 0, proc.stderr
    assert Path(proc.stdout.strip()) == ROOT / "adapters" / "__init__.py"


def test_the_core_pairs_numpy_batches_without_any_extra():
    proc = _python(
        f"""
        import sys

        class NotInstalled:  # the extras' packages, as in a plain `pip install noisepair`
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in {EXTRAS!r}:
                    raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)

        sys.meta_path.insert(0, NotInstalled())
        import numpy as np
        import noisepair
        from noisepair.adapters import RectifiedFlow

        rng = np.random.default_rng(0)
        x, z = rng.standard_normal((2, 64, 8))
        perm = noisepair.match(x, z)
        assert sorted(perm.tolist()) == list(range(64))
        assert ((x - z[perm]) ** 2).sum() < ((x - z) ** 2).sum()
        batches = [rng.standard_normal((32, 3, 4, 4)).astype(np.float32) for _ in range(3)]
        for pb in noisepair.MatchedNoiseLoader(batches, seed=0):
            assert isinstance(pb.noise, np.ndarray) and pb.noise.shape == (32, 3, 4, 4)
            assert pb.info["cost_ratio"] < 1
        """
    )
    assert proc.returncode == 0, proc.stderr
