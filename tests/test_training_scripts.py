"""What real training scripts do, with the real accelerate: gradient accumulation, resume by the
loader's state or by the script's own skip, and wrapping before `prepare`."""

import time
import warnings

import pytest
import torch
from accelerate import Accelerator, DataLoaderConfiguration
from accelerate.state import AcceleratorState, GradientState
from torch.utils.data import DataLoader, TensorDataset

from noisepair import MatchedNoiseLoader


@pytest.fixture(autouse=True)
def fresh_accelerate_state():
    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    yield
    AcceleratorState._reset_state(True)
    GradientState._reset_state()


def accumulation_pattern(n, prefetch, epochs=2, matched=True):
    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    acc = Accelerator(gradient_accumulation_steps=3, cpu=True)
    model, dl = acc.prepare(torch.nn.Linear(4, 4), DataLoader(torch.randn(n, 4), batch_size=16))
    loader = MatchedNoiseLoader(dl, prefetch=prefetch, seed=0) if matched else dl
    pattern = []
    for _ in range(epochs):
        epoch = []
        for _ in loader:
            time.sleep(0.002)  # a step, so that the prefetch thread runs ahead
            with acc.accumulate(model):
                epoch.append((acc.sync_gradients, acc.gradient_state.end_of_dataloader))
        pattern.append(epoch)
    return pattern


@pytest.mark.parametrize("n", [64, 70])  # 4 batches; 5 with an uneven last one
@pytest.mark.parametrize("prefetch", [0, 2, 8])
def test_gradient_accumulation_syncs_as_with_the_plain_loader(n, prefetch):
    plain = accumulation_pattern(n, prefetch, matched=False)
    assert [s for s, _ in plain[0]] == (
        [False, False, True, True] if n == 64 else [False, False, True, False, True]
    )
    assert accumulation_pattern(n, prefetch) == plain


def test_wrapping_before_prepare_warns():
    acc = Accelerator(cpu=True)
    inner = DataLoader(torch.randn(32, 4), batch_size=8)
    with pytest.warns(UserWarning, match="wrap after prepare"):
        iter(acc.prepare(MatchedNoiseLoader(inner, seed=0))).close()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        iter(MatchedNoiseLoader(acc.prepare(inner), seed=0)).close()


# -- resume in a diffusers-style script: `for epoch in range(first_epoch, E): for step, batch in
# enumerate(loader): if epoch == first_epoch and step < resume_step: continue` ----------------

BATCHES, EPOCHS, STOP = 6, 2, 8  # the checkpoint is taken after 8 of 12 batches (epoch 1, step 2)


def script(tmp_path, *, register, skip, set_epoch, resume, step_s=0.05):
    torch.manual_seed(0)
    # a seedable sampler makes each epoch's order a function of the epoch, as a resume needs
    acc = Accelerator(
        cpu=True, dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True)
    )
    data = TensorDataset(torch.randn(48, 4) + 1, torch.arange(48))
    net = torch.nn.Linear(4, 4)
    net, opt, dl = acc.prepare(
        net, torch.optim.SGD(net.parameters(), 0.1), DataLoader(data, batch_size=8, shuffle=True)
    )
    loader = MatchedNoiseLoader(dl, seed=0)
    if register:
        acc.register_for_checkpointing(loader)
    global_step, trained = 0, []
    if resume:
        acc.load_state(str(tmp_path / "ckpt"))
        global_step = STOP
    first_epoch, resume_step = divmod(global_step, BATCHES)
    for epoch in range(first_epoch, EPOCHS):
        if set_epoch:
            loader.set_epoch(epoch)
        for step, pb in enumerate(loader):
            if skip and resume and epoch == first_epoch and step < resume_step:
                continue
            time.sleep(step_s)  # the training step
            loss = ((net(pb.sample) - pb.noise) ** 2).mean()
            acc.backward(loss)
            opt.step()
            opt.zero_grad()
            trained.append((epoch, pb.batch[1].tolist(), pb.noise.clone()))
            global_step += 1
            if global_step == STOP and not resume:
                acc.save_state(str(tmp_path / "ckpt"))
    return trained


@pytest.mark.parametrize(
    "recipe", ["register the loader, delete the skip", "keep the skip, call set_epoch"]
)
def test_both_resume_recipes_train_on_what_the_uninterrupted_run_saw(tmp_path, recipe):
    register = recipe.startswith("register")
    kw = dict(register=register, skip=not register, set_epoch=not register)
    full = script(tmp_path, resume=False, **kw)
    assert len(full) == BATCHES * EPOCHS
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        rest = script(tmp_path, resume=True, **kw)
    assert len(rest) == len(full) - STOP
    for (e1, ids1, z1), (e2, ids2, z2) in zip(rest, full[STOP:], strict=True):
        assert e1 == e2 and ids1 == ids2 and torch.equal(z1, z2)


def test_restoring_the_loader_and_skipping_in_the_script_is_detected(tmp_path):
    script(tmp_path, resume=False, register=True, skip=False, set_epoch=False)
    with pytest.warns(UserWarning, match="skips the batches trained before the checkpoint"):
        rest = script(tmp_path, resume=True, register=True, skip=True, set_epoch=False)
    assert len(rest) == BATCHES * EPOCHS - STOP - (STOP - BATCHES)  # what the warning is about
