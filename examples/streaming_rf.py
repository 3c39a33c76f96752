"""Stream tar shards into a matched-noise rectified-flow training run on several ranks.

    torchrun --standalone --nproc-per-node=2 examples/streaming_rf.py --out /tmp/np-stream
    torchrun --standalone --nproc-per-node=2 examples/streaming_rf.py --out /tmp/np-stream --across-ranks
    python examples/streaming_rf.py --out /tmp/np-stream          # one process works too

Rank 0 writes the shards once (wds.ShardWriter, from arrays); every rank then streams its share
(split_by_node, then split_by_worker inside the WebLoader), pairs noise to samples with
MatchedNoiseLoader, and trains a tiny MLP velocity field with DDP on gloo (CPU). A checkpoint
with the model, the optimizer and the loader's state is written mid-epoch; ``--resume`` picks up
from it with the same remaining batches and noise.
"""

from __future__ import annotations

import argparse
import glob
import os
import time

import numpy as np
import torch
import torch.distributed as dist
import webdataset as wds
from torch.nn.parallel import DistributedDataParallel as DDP

from noisepair import MatchedNoiseLoader
from noisepair.streaming import SkipCounter

try:  # the library's adapter, when installed (adapters/ ships as noisepair.adapters)
    from noisepair.adapters import RectifiedFlow
except ImportError:  # the same formulas inline: t=0 noise, t=1 data
    RectifiedFlow = None

SHAPE = (1, 8, 8)


def write_shards(out: str, n_samples: int, n_shards: int) -> str:
    """Samples from a mixture of 4 blob images, as .npy members of tar shards."""
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((4, *SHAPE)).astype(np.float32) * 1.5
    per_shard = n_samples // n_shards
    with wds.ShardWriter(
        os.path.join(out, "train-%04d.tar"), maxcount=per_shard, verbose=0
    ) as sink:
        for i in range(per_shard * n_shards):
            c = i % 4
            x = centres[c] + 0.3 * rng.standard_normal(SHAPE).astype(np.float32)
            sink.write({"__key__": f"{i:08d}", "x.npy": x, "cls": c})
    return os.path.join(out, f"train-{{0000..{n_shards - 1:04d}}}.tar")


def make_loader(
    urls: str, n_samples: int, args, world: int, faults: SkipCounter
) -> MatchedNoiseLoader:
    """The streaming recipe: every rank gets the same number of full batches."""
    dataset = (
        wds.WebDataset(
            urls,
            nodesplitter=wds.split_by_node,
            shardshuffle=100,
            detshuffle=True,
            seed=args.seed,
            handler=faults,
        )
        .compose(wds.detshuffle(1000, seed=args.seed))  # sample shuffle, reproducible per epoch
        .decode(handler=faults)
        .to_tuple("x.npy", "cls", handler=faults)
        .batched(args.batch_size, partial=False)  # batched in the workers
    )
    batches_per_rank = n_samples // (args.batch_size * world)
    inner = wds.WebLoader(dataset, batch_size=None, num_workers=args.workers).with_epoch(
        batches_per_rank
    )
    return MatchedNoiseLoader(
        inner,
        seed=args.seed,
        across_ranks=args.across_ranks,
        method=args.method,
        skip_counter=faults,
        timeout=120,
    )


def velocity_model() -> torch.nn.Module:
    d = int(np.prod(SHAPE))
    return torch.nn.Sequential(
        torch.nn.Linear(d + 1, 256),
        torch.nn.SiLU(),
        torch.nn.Linear(256, 256),
        torch.nn.SiLU(),
        torch.nn.Linear(256, d),
    )


def flow_inputs(pb, rf):
    x, z = pb.sample, pb.noise
    if rf is not None:
        f = rf(pb)
        return f.x_t, f.t, f.target
    t = torch.rand(x.shape[0])
    tb = t.view(-1, *([1] * (x.dim() - 1)))
    return tb * x + (1 - tb) * z, t, x - z


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="/tmp/noisepair-streaming")
    p.add_argument("--samples", type=int, default=8192)
    p.add_argument("--shards", type=int, default=8)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--method", default="hungarian")
    p.add_argument(
        "--across-ranks", action="store_true", help="one assignment for the global batch"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--checkpoint-at", type=int, default=20, help="save a checkpoint after this step"
    )
    p.add_argument("--resume", action="store_true")
    args = p.parse_args()

    distributed = int(os.environ.get("WORLD_SIZE", 1)) > 1
    if distributed:
        dist.init_process_group("gloo")  # torchrun's env:// rendezvous; nccl on GPUs
    rank = dist.get_rank() if distributed else 0
    world = dist.get_world_size() if distributed else 1
    os.makedirs(args.out, exist_ok=True)
    if rank == 0 and not glob.glob(os.path.join(args.out, "train-*.tar")):
        write_shards(args.out, args.samples, args.shards)
    if distributed:
        dist.barrier()
    urls = os.path.join(args.out, f"train-{{0000..{args.shards - 1:04d}}}.tar")

    torch.manual_seed(args.seed)
    model = velocity_model()
    ddp = DDP(model) if distributed else model
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    faults = SkipCounter("warn")
    loader = make_loader(urls, args.samples, args, world, faults)
    rf = RectifiedFlow() if RectifiedFlow is not None else None
    ckpt_path = os.path.join(args.out, f"ckpt-rank{rank}.pt")
    if args.resume:
        ckpt = torch.load(ckpt_path, weights_only=False)
        model.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["opt"])
        loader.load_state_dict(ckpt["loader"])  # every rank restores its own position
        step = ckpt["step"]
    else:
        step = 0

    start, samples_seen, first_epoch = time.perf_counter(), 0, loader.state_dict()["epoch"]
    for epoch in range(first_epoch, args.epochs):
        losses, ratios = [], []
        for pb in loader:
            x_t, t, target = flow_inputs(pb, rf)
            inp = torch.cat([x_t.flatten(1), t.view(-1, 1).to(x_t.dtype)], 1)
            loss = torch.nn.functional.mse_loss(ddp(inp), target.flatten(1))
            opt.zero_grad()
            loss.backward()
            opt.step()
            step += 1
            samples_seen += len(pb)
            losses.append(loss.item())
            ratios.append(pb.info["cost_ratio"])
            if step == args.checkpoint_at and not args.resume:
                torch.save(
                    {
                        "model": model.state_dict(),
                        "opt": opt.state_dict(),
                        "loader": loader.state_dict(),
                        "step": step,
                    },
                    ckpt_path,
                )
        print(
            f"[rank {rank}/{world}] epoch {epoch}: {len(losses)} batches, loss {np.mean(losses):.4f}, "
            f"matched/random cost {np.mean(ratios):.3f}, skipped {loader.skipped}",
            flush=True,
        )
    took = time.perf_counter() - start
    print(
        f"[rank {rank}] {samples_seen} samples in {took:.1f} s "
        f"({'across ranks' if args.across_ranks else 'per rank'} matching)",
        flush=True,
    )
    loader.close()
    if distributed:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
