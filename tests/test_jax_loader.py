"""JAX batches through MatchedNoiseLoader: jax.Array in, jax.Array out (same shape, dtype and
sharding), noise that depends only on (seed, rank, epoch, batch index), and the rank of a
multi-process JAX run."""

import json
import socket
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from noisepair import MatchedNoiseLoader  # noqa: E402


def batches(n=4, b=16):
    return [
        jnp.asarray(np.random.default_rng(i).normal(size=(b, 2, 4)).astype(np.float32) + 1)
        for i in range(n)
    ]


@pytest.mark.parametrize("form", ["bare", "tuple", "dict"])
def test_jax_batches_get_jax_noise_like_the_sample(form):
    data = batches()
    wrap = {
        "bare": lambda x: x,
        "tuple": lambda x: (x, jnp.arange(len(x))),
        "dict": lambda x: {"image": x, "label": jnp.arange(len(x)) % 2},
    }[form]
    loader = MatchedNoiseLoader(
        [wrap(x) for x in data], seed=0, group_by="label" if form == "dict" else None
    )
    out = list(loader)
    assert len(out) == len(data)
    for pb, x in zip(out, data, strict=True):
        assert isinstance(pb.noise, jax.Array) and pb.sample is x
        assert pb.noise.shape == x.shape and pb.noise.dtype == x.dtype
        assert pb.noise.sharding == x.sharding
        assert pb.info["cost"] < pb.info["cost_random"]


def test_jax_noise_is_a_permutation_of_the_draws_whatever_the_prefetch():
    data = batches()
    drawn = [np.asarray(pb.noise) for pb in MatchedNoiseLoader(data, seed=3, method="random")]
    for prefetch in (0, 3):
        got = [np.asarray(pb.noise) for pb in MatchedNoiseLoader(data, seed=3, prefetch=prefetch)]
        for g, d in zip(got, drawn, strict=True):
            np.testing.assert_array_equal(
                np.sort(g.reshape(len(g), -1), 0), np.sort(d.reshape(len(d), -1), 0)
            )


WORKER = textwrap.dedent("""
    import json, sys
    import jax
    jax.distributed.initialize(coordinator_address=f"127.0.0.1:{sys.argv[2]}", num_processes=2,
                               process_id=int(sys.argv[1]))
    import jax.numpy as jnp
    from noisepair import MatchedNoiseLoader
    pb = next(iter(MatchedNoiseLoader([jnp.ones((4, 3)) + jnp.arange(3.0)], seed=0, prefetch=0)))
    print(json.dumps({"rank": pb.info["rank"], "noise": pb.noise.tolist()}))
""")


def test_a_multi_process_jax_run_draws_each_process_its_own_noise():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = str(s.getsockname()[1])
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WORKER, str(i), port],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    out = [json.loads(p.communicate(timeout=120)[0].strip().splitlines()[-1]) for p in procs]
    assert [o["rank"] for o in out] == [0, 1]  # from jax.process_index(), not RANK
    assert out[0]["noise"] != out[1]["noise"]


def test_the_jax_rectified_flow_example_trains_both_arms():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "examples" / "jax_rf.py"
    spec = importlib.util.spec_from_file_location("jax_rf", path)
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    report = example.main(["--quick"])
    assert report["hungarian"]["squared_path"] < 0.95 * report["random"]["squared_path"]
    assert all(np.isfinite(v) for arm in report.values() for v in arm.values())
