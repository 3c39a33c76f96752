"""The README's recipes for HF accelerate and Lightning, run for real: train, checkpoint
mid-epoch, resume in a fresh trainer, and get exactly the batches and noise of an uninterrupted run."""

import lightning as L
import pytest
import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState, GradientState
from noisepair.adapters import RectifiedFlow
from torch.utils.data import DataLoader, TensorDataset

from noisepair import MatchedNoiseLoader

STOP = 5  # batches trained before the checkpoint, out of 12 per epoch


def dataset():
    g = torch.Generator().manual_seed(0)
    return TensorDataset(torch.randn(96, 4, generator=g) + 2, torch.arange(96))


def rf_loss(net, pb, step):
    inp = RectifiedFlow()(pb, generator=torch.Generator().manual_seed(step))
    pred = net(torch.cat([inp.x_t, inp.t.reshape(-1, 1)], 1))
    return ((pred - inp.target) ** 2).mean()


def same(a, b):
    return len(a) == len(b) and all(x[0] == y[0] and torch.equal(x[1], y[1]) for x, y in zip(a, b))


@pytest.fixture
def fresh_accelerate_state():
    """accelerate's state is process-wide: leave none behind for the next test."""
    yield
    AcceleratorState._reset_state(True)
    GradientState._reset_state()


def test_accelerate_prepare_then_wrap_checkpoints_and_resumes(tmp_path, fresh_accelerate_state):
    def setup():
        torch.manual_seed(0)
        net = torch.nn.Linear(5, 4)
        acc = Accelerator(cpu=True)
        loader = DataLoader(
            dataset(), batch_size=8, shuffle=True, generator=torch.Generator().manual_seed(1)
        )
        net, opt, loader = acc.prepare(net, torch.optim.Adam(net.parameters(), 1e-2), loader)
        matched = MatchedNoiseLoader(loader, seed=0)
        acc.register_for_checkpointing(matched)
        return acc, net, opt, matched

    acc, net, opt, loader = setup()
    seen = []
    for step, pb in enumerate(loader):
        acc.backward(rf_loss(net, pb, step))
        opt.step()
        opt.zero_grad()
        seen.append((pb.batch[1].tolist(), pb.noise.clone()))
        if step == STOP - 1:
            acc.save_state(str(tmp_path / "ckpt"))
    assert len(seen) == 12 and sorted(sum((s[0] for s in seen), [])) == list(range(96))

    acc, net, opt, loader = setup()
    acc.load_state(str(tmp_path / "ckpt"))
    rest = [(pb.batch[1].tolist(), pb.noise.clone()) for pb in loader]
    assert same(rest, seen[STOP:])


class Model(L.LightningModule):
    def __init__(self, seen):
        super().__init__()
        self.net = torch.nn.Linear(5, 4)
        self.seen = seen

    def training_step(self, pb, step):  # Lightning hands the PairedBatch through unchanged
        self.seen.append((pb.batch[1].tolist(), pb.noise.clone()))
        return rf_loss(self.net, pb, step)

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), 1e-2)


class Data(L.LightningDataModule):
    def train_dataloader(self):
        return MatchedNoiseLoader(DataLoader(dataset(), batch_size=8), seed=0)


def fit(max_steps, root, ckpt_path=None):
    seen = []
    trainer = L.Trainer(
        max_steps=max_steps,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        use_distributed_sampler=False,
        default_root_dir=str(root),
    )
    trainer.fit(Model(seen), Data(), ckpt_path=ckpt_path)
    return trainer, seen


def test_lightning_checkpoints_the_loader_and_resumes_mid_epoch(tmp_path):
    _, uninterrupted = fit(12, tmp_path)
    trainer, first = fit(STOP, tmp_path)
    trainer.save_checkpoint(tmp_path / "mid.ckpt")
    state = torch.load(tmp_path / "mid.ckpt", weights_only=False)["loops"]["fit_loop"]["state_dict"]
    [loader_state] = state["combined_loader"]
    assert (loader_state["epoch"], loader_state["delivered"]) == (0, STOP)
    _, rest = fit(12, tmp_path, ckpt_path=tmp_path / "mid.ckpt")
    assert same(first, uninterrupted[:STOP]) and same(rest, uninterrupted[STOP:])
