"""Each adapter drives a real training loop on matched batches from a MatchedNoiseLoader.

A tiny model is trained for a few dozen seeded steps; its loss must fall. This checks that the
inputs and targets an adapter builds are learnable as the method intends (a sign error or a
swapped convention shows up as a loss that does not fall), not the speed-up of matching.
"""

import itertools

import torch
from diffusers import DDPMScheduler
from noisepair.adapters import DDPM, Consistency, RectifiedFlow, vae_encoder
from test_adapters import tiny_vae
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from noisepair import MatchedNoiseLoader

STEPS = 60


def points(n=512):
    """A mixture of four Gaussians in 2-D, off the origin (something to learn early)."""
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 4, (n,), generator=g)
    centres = torch.tensor([[3.0, 1.0], [1.0, 1.0], [3.0, -1.0], [1.0, -1.0]])
    return TensorDataset(centres[labels] + 0.1 * torch.randn(n, 2, generator=g), labels)


def matched(dataset, batch_size=64, **kw):
    return MatchedNoiseLoader(DataLoader(dataset, batch_size=batch_size), seed=0, **kw)


def steps(loader, n=STEPS):
    """n paired batches, over as many epochs as it takes."""
    return itertools.islice(itertools.chain.from_iterable(loader for _ in itertools.count()), n)


class MLP(nn.Module):
    """(x, t) -> R^2, a few hundred parameters."""

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(3, 16), nn.SiLU(), nn.Linear(16, 16), nn.SiLU(), nn.Linear(16, 2)
        )

    def forward(self, x, t):
        return self.net(torch.cat([x, t[:, None]], dim=1))


def train(loss_fn, model, loader, lr=1e-2):
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    losses = []
    for pb in steps(loader):
        loss = loss_fn(model, pb)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def assert_falls(losses):
    first, last = sum(losses[:10]) / 10, sum(losses[-10:]) / 10
    assert last < 0.75 * first, f"loss did not fall: first 10 {first:.4f}, last 10 {last:.4f}"


def test_rectified_flow_trains():
    torch.manual_seed(0)
    for convention in ("rf", "sd3"):
        rf, g = RectifiedFlow(convention, "logit_normal"), torch.Generator().manual_seed(1)

        def loss_fn(model, pb, rf=rf, g=g):
            inp = rf(pb, generator=g)
            return ((model(inp.x_t, inp.t) - inp.target) ** 2).mean()

        assert_falls(train(loss_fn, MLP(), matched(points())))


def test_ddpm_trains():
    torch.manual_seed(0)
    for prediction_type in ("epsilon", "v_prediction"):
        ddpm = DDPM(DDPMScheduler(prediction_type=prediction_type))
        g = torch.Generator().manual_seed(1)

        def loss_fn(model, pb, ddpm=ddpm, g=g):
            inp = ddpm(pb, generator=g)
            return ((model(inp.x_t, inp.t / 1000) - inp.target) ** 2).mean()

        assert_falls(train(loss_fn, MLP(), matched(points())))


def test_consistency_training_trains():
    torch.manual_seed(0)
    ct, g = Consistency(total_steps=STEPS), torch.Generator().manual_seed(1)

    def f(model, x, sigma):  # the consistency function, f(x, sigma_min) = x
        inner = model(ct.c_in(sigma)[:, None] * x, sigma.log() / 4)
        return ct.c_skip(sigma)[:, None] * x + ct.c_out(sigma)[:, None] * inner

    step = itertools.count()

    def loss_fn(model, pb):
        inp = ct(pb, step=next(step), generator=g)
        with torch.no_grad():
            target = f(model, inp.x_s, inp.s)
        return (inp.weight * ct.pseudo_huber(f(model, inp.x_t, inp.t), target)).mean()

    assert_falls(train(loss_fn, MLP(), matched(points())))


def test_latent_diffusion_trains():
    torch.manual_seed(0)
    vae = tiny_vae()
    g = torch.Generator().manual_seed(0)
    images = torch.rand(4, 3, 16, 16, generator=g)[torch.randint(0, 4, (128,), generator=g)]
    captions = TensorDataset(images * 2 - 1, torch.arange(128))
    loader = matched(captions, batch_size=32, encode=vae_encoder(vae, generator=g))

    class Conv(nn.Module):  # (latent, t) -> latent, a few hundred parameters
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Conv2d(5, 8, 3, padding=1), nn.Conv2d(8, 4, 3, padding=1)

        def forward(self, x, t):
            t = t.view(-1, 1, 1, 1).expand(-1, 1, *x.shape[2:])
            return self.b(nn.functional.silu(self.a(torch.cat([x, t], dim=1))))

    scheduler = DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
    objectives = {"sd12": DDPM(scheduler, noise_offset=0.05), "sd3": RectifiedFlow("sd3")}
    for name, objective in objectives.items():
        gen = torch.Generator().manual_seed(1)

        def loss_fn(model, pb, objective=objective, gen=gen, name=name):
            inp = objective(pb, generator=gen)
            t = inp.t / 1000 if name == "sd12" else inp.t
            return ((model(inp.x_t, t) - inp.target) ** 2).mean()

        assert_falls(train(loss_fn, Conv(), loader, lr=3e-2))
