"""Adapters against the libraries they mirror: torchcfm, diffusers' schedulers, VAE and scripts.

Each adapter is fed a batch and its noise, and must produce the tensors the library computes for
the same noise. (Training with them on real matched batches: test_adapters_training.py.)
"""

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import (
    AutoencoderKL,
    CMStochasticIterativeScheduler,
    DDIMScheduler,
    DDPMScheduler,
    FlowMatchEulerDiscreteScheduler,
)
from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution
from diffusers.training_utils import compute_density_for_timestep_sampling
from noisepair.adapters import (
    DDPM,
    Consistency,
    RectifiedFlow,
    precomputed_latents,
    vae_encoder,
)
from scipy.stats import norm
from test_loader import WITHOUT_TORCH
from torch.testing import assert_close
from torchcfm.conditional_flow_matching import ConditionalFlowMatcher

from noisepair import MatchedNoiseLoader, PairedBatch

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def gen(seed=0, device="cpu"):
    return torch.Generator(device=device).manual_seed(seed)


def paired(shape=(16, 3, 8, 8), seed=0, device="cpu"):
    g = gen(seed)
    x = torch.randn(shape, generator=g) * 0.5 + 1.0
    z = torch.randn(shape, generator=g)
    return PairedBatch(sample=x.to(device), noise=z.to(device), batch=None)


def as_numpy(pb):
    return PairedBatch(sample=pb.sample.cpu().numpy(), noise=pb.noise.cpu().numpy(), batch=None)


def tiny_vae(**config):
    torch.manual_seed(0)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",),
        up_block_types=("UpDecoderBlock2D",),
        block_out_channels=(8,),
        latent_channels=4,
        norm_num_groups=8,
        sample_size=16,
        **config,
    ).eval()


# -- rectified flow -----------------------------------------------------------------------------
@pytest.mark.parametrize("device", DEVICES)
def test_rf_equals_torchcfm(device):
    pb = paired(device=device)
    t = torch.rand(16, generator=gen(1)).to(device)
    out = RectifiedFlow("rf")(pb, t=t)
    t_ref, xt_ref, ut_ref = ConditionalFlowMatcher(sigma=0.0).sample_location_and_conditional_flow(
        pb.noise, pb.sample, t
    )
    assert_close(out.x_t, xt_ref, rtol=0, atol=0)
    assert_close(out.target, ut_ref, rtol=0, atol=0)
    assert out.x_t.device == pb.sample.device and out.t.device == pb.sample.device


def test_rf_drawn_t_is_the_one_used():
    pb = paired()
    out = RectifiedFlow("rf")(pb, generator=gen(3))
    _, xt_ref, _ = ConditionalFlowMatcher(sigma=0.0).sample_location_and_conditional_flow(
        pb.noise, pb.sample, out.t
    )
    assert_close(out.x_t, xt_ref)
    assert_close(out.t, RectifiedFlow("rf")(pb, generator=gen(3)).t)  # seeded: reproducible


@pytest.mark.parametrize("shift", [1.0, 3.0])
def test_sd3_equals_scale_noise(shift):
    pb = paired()
    scheduler = FlowMatchEulerDiscreteScheduler(shift=shift)
    idx = torch.randint(0, 1000, (16,), generator=gen(2))
    sigma = scheduler.sigmas[idx]
    out = RectifiedFlow("sd3")(pb, t=sigma)
    assert_close(
        out.x_t,
        scheduler.scale_noise(pb.sample, scheduler.timesteps[idx], pb.noise),
        rtol=0,
        atol=0,
    )
    assert_close(out.target, pb.noise - pb.sample)  # the SD3 training scripts' target


@pytest.mark.parametrize("shift", [1.0, 3.0])
def test_sd3_shift_equals_scheduler_sigmas(shift):
    scheduler = FlowMatchEulerDiscreteScheduler(shift=shift)
    unshifted = torch.linspace(1.0, 0.001, 1000)  # the scheduler's training sigmas before shift
    rf = RectifiedFlow("sd3", t_sampler=lambda n, g: unshifted, shift=shift)
    assert_close(rf.sample_t(torch.zeros(1000, 2)), scheduler.sigmas)
    # in the rf convention the same shift acts on the noise level 1 - t
    rf_t = RectifiedFlow("rf", t_sampler=lambda n, g: 1 - unshifted, shift=shift)
    assert_close(rf_t.sample_t(torch.zeros(1000, 2)), 1 - scheduler.sigmas)


def test_logit_normal_equals_sd3_density_sampling():
    x = torch.zeros(4096, 2)
    ours = RectifiedFlow("sd3", "logit_normal", logit_mean=0.3, logit_std=1.2).sample_t(x, gen(5))
    ref = compute_density_for_timestep_sampling(
        "logit_normal", 4096, logit_mean=0.3, logit_std=1.2, generator=gen(5)
    )
    assert_close(ours, ref)


def test_uniform_and_callable_samplers():
    x = torch.zeros(1000, 2)
    t = RectifiedFlow(t_sampler="uniform").sample_t(x, gen(0))
    assert_close(t, torch.rand(1000, generator=gen(0)))
    fixed = RectifiedFlow(t_sampler=lambda n, g: torch.full((n,), 0.25)).sample_t(x)
    assert_close(fixed, torch.full((1000,), 0.25))


@pytest.mark.parametrize("shape", [(8, 5), (8, 3, 4), (8, 2, 3, 4), (8, 2, 3, 2, 2)])
def test_t_broadcasts_over_any_rank(shape):
    pb = paired(shape)
    t = torch.linspace(0, 1, 8)
    out = RectifiedFlow("rf")(pb, t=t)
    for i in range(8):
        assert_close(out.x_t[i], t[i] * pb.sample[i] + (1 - t[i]) * pb.noise[i])


def test_flow_on_numpy_matches_torch():
    pb = paired()
    t = torch.rand(16, generator=gen(1))
    for convention in ("rf", "sd3"):
        ref = RectifiedFlow(convention)(pb, t=t)
        out = RectifiedFlow(convention, "logit_normal")(as_numpy(pb), t=t.numpy())
        assert isinstance(out.x_t, np.ndarray) and out.x_t.dtype == np.float32
        assert_close(torch.from_numpy(out.x_t), ref.x_t)
        assert_close(torch.from_numpy(out.target), ref.target)
    drawn = RectifiedFlow("rf", "logit_normal")(as_numpy(pb), generator=np.random.default_rng(0))
    assert drawn.t.shape == (16,) and 0 < drawn.t.min() and drawn.t.max() < 1


# -- DDPM ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("scheduler_cls", [DDPMScheduler, DDIMScheduler])
@pytest.mark.parametrize("prediction_type", ["epsilon", "sample", "v_prediction"])
def test_ddpm_equals_add_noise_and_get_velocity(scheduler_cls, prediction_type):
    pb = paired()
    x, z = pb.sample, pb.noise
    scheduler = scheduler_cls(
        beta_schedule="scaled_linear",
        beta_start=0.00085,
        beta_end=0.012,
        prediction_type=prediction_type,
    )
    ddpm = DDPM(scheduler)  # prediction type read from the scheduler
    t = torch.randint(0, 1000, (16,), generator=gen(4))
    out = ddpm(pb, timesteps=t)
    target = {"epsilon": z, "sample": x, "v_prediction": None}[prediction_type]
    if target is None:
        target = scheduler.get_velocity(x, z, t)
    assert_close(out.x_t, scheduler.add_noise(x, z, t), rtol=0, atol=0)
    assert_close(out.target, target, rtol=0, atol=0)
    assert out.t.dtype == torch.int64


@pytest.mark.parametrize(
    "schedule,start,end",
    [
        ("linear", 0.0001, 0.02),
        ("scaled_linear", 0.00085, 0.012),
        ("squaredcos_cap_v2", 0.0001, 0.02),
    ],
)
def test_own_schedules_equal_diffusers(schedule, start, end):
    scheduler = DDPMScheduler(beta_schedule=schedule, beta_start=start, beta_end=end)
    ddpm = DDPM(
        beta_schedule=schedule, beta_start=start, beta_end=end, prediction_type="v_prediction"
    )
    assert_close(
        torch.from_numpy(ddpm.alphas_cumprod).float(),
        scheduler.alphas_cumprod,
        rtol=1e-5,
        atol=1e-6,
    )
    pb = paired()
    t = torch.randint(0, 1000, (16,), generator=gen(4))
    out = ddpm(pb, timesteps=t)
    assert_close(out.x_t, scheduler.add_noise(pb.sample, pb.noise, t))
    assert_close(out.target, scheduler.get_velocity(pb.sample, pb.noise, t))


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_offset_noise_and_input_perturbation_follow_train_text_to_image(prediction_type):
    pb = paired()
    latents, noise = pb.sample, pb.noise
    scheduler = DDPMScheduler(prediction_type=prediction_type)
    ddpm = DDPM(scheduler, noise_offset=0.1, input_perturbation=0.05)
    t = torch.randint(0, 1000, (16,), generator=gen(4))
    out = ddpm(pb, timesteps=t, generator=gen(7))
    # the script's lines, with the matched noise in place of torch.randn_like(latents)
    g = gen(7)
    noise = noise + 0.1 * torch.randn((16, 3, 1, 1), generator=g)
    new_noise = noise + 0.05 * torch.randn(noise.shape, generator=g)
    target = noise if prediction_type == "epsilon" else scheduler.get_velocity(latents, noise, t)
    assert_close(out.x_t, scheduler.add_noise(latents, new_noise, t))
    assert_close(out.target, target)


def test_ddpm_draws_timesteps_uniformly_and_reproducibly():
    ddpm = DDPM()
    pb = paired((4000, 2))
    t = ddpm(pb, generator=gen(0)).t
    assert_close(t, ddpm(pb, generator=gen(0)).t)
    assert t.min() >= 0 and t.max() <= 999 and abs(t.float().mean().item() - 499.5) < 15


def test_ddpm_on_numpy_matches_torch():
    pb = paired()
    t = torch.randint(0, 1000, (16,), generator=gen(4))
    ref = DDPM(prediction_type="v_prediction")(pb, timesteps=t)
    out = DDPM(prediction_type="v_prediction")(as_numpy(pb), timesteps=t.numpy())
    assert isinstance(out.x_t, np.ndarray) and out.x_t.dtype == np.float32
    assert_close(torch.from_numpy(out.x_t), ref.x_t)
    assert_close(torch.from_numpy(out.target), ref.target)
    offset = DDPM(noise_offset=0.1)(as_numpy(pb), generator=np.random.default_rng(0))
    assert offset.x_t.shape == (16, 3, 8, 8) and offset.t.dtype == np.int64


# -- consistency training -----------------------------------------------------------------------
@pytest.mark.parametrize("n", [11, 41, 1281])
def test_karras_sigmas_equal_diffusers(n):
    scheduler = CMStochasticIterativeScheduler(num_train_timesteps=n)
    ct = Consistency(s0=n - 1, s1=n - 1)
    np.testing.assert_allclose(ct.sigmas(), scheduler.sigmas.numpy()[::-1], rtol=1e-12)


def test_boundary_scalings_equal_diffusers():
    scheduler = CMStochasticIterativeScheduler()
    ct = Consistency()
    sigma = torch.from_numpy(ct.sigmas()).float()
    c_skip, c_out = scheduler.get_scalings_for_boundary_condition(sigma)
    assert_close(ct.c_skip(sigma), c_skip, rtol=0, atol=0)
    assert_close(ct.c_out(sigma), c_out, rtol=0, atol=0)
    assert ct.c_skip(0.002) == 1.0 and ct.c_out(0.002) == 0.0  # f(x, sigma_min) = x
    assert_close(ct.c_in(sigma), 1 / (sigma**2 + 0.25).sqrt())


def test_discretisation_curriculum_doubles_from_s0_to_s1():
    ct = Consistency(total_steps=400_000)  # iCT's CIFAR-10 run: K' = 50,000 steps per stage
    assert [ct.num_scales(k) for k in (0, 49_999, 50_000, 100_000, 349_999, 350_000, 399_999)] == [
        11,
        11,
        21,
        41,
        641,
        1281,
        1281,
    ]
    assert Consistency().num_scales() == 1281


def test_lognormal_index_probabilities():
    ct = Consistency(total_steps=1000)
    sigmas = ct.sigmas(step=0)
    cdf = norm.cdf(np.log(sigmas), loc=-1.1, scale=2.0)
    np.testing.assert_allclose(
        ct.index_probs(step=0), np.diff(cdf) / np.diff(cdf).sum(), rtol=1e-10
    )
    drawn = ct(paired((20000, 2)), step=0, generator=gen(0))
    index = np.searchsorted(sigmas.astype(np.float32), drawn.s.numpy())
    counts = np.bincount(index, minlength=10)
    np.testing.assert_allclose(counts / 20000, ct.index_probs(step=0), atol=0.015)


@pytest.mark.parametrize("device", DEVICES)
def test_consistency_pair_shares_one_noise_at_adjacent_sigmas(device):
    pb = paired(device=device)
    ct = Consistency(total_steps=100)
    out = ct(pb, step=30, generator=gen(1, device))
    sigmas = torch.from_numpy(ct.sigmas(step=30)).float()
    i = torch.searchsorted(sigmas, out.s.cpu())
    assert_close(sigmas[i], out.s.cpu())
    assert_close(sigmas[i + 1], out.t.cpu())
    assert_close(out.x_t, pb.sample + out.t.view(-1, 1, 1, 1) * pb.noise)
    assert_close(out.x_s, pb.sample + out.s.view(-1, 1, 1, 1) * pb.noise)
    assert_close(out.weight, 1 / (out.t - out.s))
    assert out.x_t.device == out.t.device == pb.sample.device


def test_pseudo_huber():
    ct = Consistency()
    a, b = torch.zeros(2, 3, 4, 4), torch.ones(2, 3, 4, 4)
    c = 0.00054 * 48**0.5
    assert_close(ct.pseudo_huber(a, b), torch.full((2,), (48 + c * c) ** 0.5 - c))
    assert_close(ct.pseudo_huber(a, a), torch.zeros(2))


def test_consistency_on_numpy():
    pb = as_numpy(paired())
    out = Consistency()(pb, generator=np.random.default_rng(0))
    assert isinstance(out.x_t, np.ndarray) and out.x_t.dtype == np.float32
    np.testing.assert_allclose(
        out.x_s, pb.sample + out.s[:, None, None, None] * pb.noise, rtol=1e-6
    )
    assert (out.t > out.s).all()


# -- latent Stable Diffusion --------------------------------------------------------------------
@pytest.mark.parametrize("config", [{}, {"scaling_factor": 1.5305, "shift_factor": 0.0609}])
def test_vae_encoder_equals_diffusers(config):
    vae = tiny_vae(**config)
    pixels = torch.rand(4, 3, 16, 16, generator=gen(0)) * 2 - 1
    ours = vae_encoder(vae, generator=gen(9))(pixels)
    with torch.no_grad():
        raw = vae.encode(pixels).latent_dist.sample(generator=gen(9))
    shift = config.get("shift_factor", 0.0)
    assert_close(ours, (raw - shift) * vae.config.scaling_factor, rtol=0, atol=0)
    assert ours.shape == (4, 4, 16, 16) and not ours.requires_grad
    assert_close(
        vae_encoder(vae, scaling_factor=2.0, shift_factor=0.5, generator=gen(9))(pixels),
        (raw - 0.5) * 2.0,
    )


def test_loader_matches_in_latent_space_and_keeps_fields_aligned():
    vae = tiny_vae()
    g = gen(0)
    batches = [
        {
            "pixel_values": torch.rand(8, 3, 16, 16, generator=g) * 2 - 1,
            "caption": [f"image {8 * b + i}" for i in range(8)],
            "embedding": torch.arange(8 * b, 8 * b + 8).float()[:, None].expand(8, 5),
        }
        for b in range(3)
    ]
    loader = MatchedNoiseLoader(
        batches, key="pixel_values", seed=1, encode=vae_encoder(vae, generator=gen(2))
    )
    reference = vae_encoder(vae, generator=gen(2))  # same seed, same batch order
    for b, pb in enumerate(loader):
        assert pb.sample.shape == pb.noise.shape == (8, 4, 16, 16)
        assert_close(pb.sample, reference(batches[b]["pixel_values"]))
        assert pb.batch["caption"] == [f"image {8 * b + i}" for i in range(8)]
        assert_close(pb.batch["embedding"][:, 0], torch.arange(8 * b, 8 * b + 8).float())
        assert pb.info["cost"] <= pb.info["cost_random"]
        ddpm_in = DDPM(
            DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
        )(pb, generator=gen(b))
        assert ddpm_in.x_t.shape == pb.sample.shape


def test_precomputed_latents():
    params = torch.randn(4, 8, 16, 16, generator=gen(0))
    ours = precomputed_latents(0.18215, moments=True, generator=gen(3))(params)
    raw = DiagonalGaussianDistribution(params).sample(generator=gen(3))
    assert_close(ours, raw * 0.18215)
    cached = torch.randn(4, 4, 16, 16, generator=gen(1))
    assert_close(precomputed_latents(1.5305, 0.0609)(cached), (cached - 0.0609) * 1.5305)
    out = precomputed_latents(0.5, moments=True, generator=np.random.default_rng(0))(params.numpy())
    assert isinstance(out, np.ndarray) and out.shape == (4, 4, 16, 16)


# -- bad input ----------------------------------------------------------------------------------
def test_clear_errors():
    pb = paired()
    with pytest.raises(ValueError, match="unknown convention"):
        RectifiedFlow("edm")
    with pytest.raises(ValueError, match="unknown t_sampler"):
        RectifiedFlow(t_sampler="cosine")
    with pytest.raises(ValueError, match="unknown prediction_type"):
        DDPM(prediction_type="eps")
    with pytest.raises(ValueError, match="unknown beta_schedule"):
        DDPM(beta_schedule="cosine")
    with pytest.raises(TypeError, match="alphas_cumprod"):
        DDPM(FlowMatchEulerDiscreteScheduler())
    with pytest.raises(ValueError, match="noise shape"):
        RectifiedFlow()(PairedBatch(pb.sample, pb.noise[:, :2], None))
    with pytest.raises(ValueError, match="one value per sample"):
        RectifiedFlow()(pb, t=torch.rand(3))
    with pytest.raises(TypeError, match="PairedBatch"):
        DDPM()(pb.sample)
    with pytest.raises(ValueError, match=r"\[0, 1000\)"):
        DDPM()(pb, timesteps=1000)
    with pytest.raises(ValueError, match="channels"):
        DDPM(noise_offset=0.1)(paired((16, 5)))
    with pytest.raises(ValueError, match="total_steps"):
        Consistency()(pb, step=10)
    with pytest.raises(TypeError, match="numpy.random.Generator"):
        RectifiedFlow()(as_numpy(pb), generator=gen(0))
    with pytest.raises(TypeError, match="torch.Generator"):
        DDPM()(pb, generator=np.random.default_rng(0))
    with pytest.raises(ValueError, match="2C"):
        precomputed_latents(1.0, moments=True)(torch.zeros(2, 3, 4, 4))


def test_every_numpy_path_runs_without_torch():
    """The backend imports torch only when a tensor is in play: every method, grouping and the
    adapters run on numpy with torch unimportable (the auction then needs numba)."""
    script = WITHOUT_TORCH + textwrap.dedent("""
        import numpy as np
        import noisepair
        from noisepair.adapters import DDPM, Consistency, RectifiedFlow
        rng = np.random.default_rng(0)
        x = rng.normal(size=(64, 3, 4, 4)).astype(np.float32)
        z = rng.normal(size=(64, 3, 4, 4)).astype(np.float32)
        for method in ("hungarian", "emd", "sinkhorn", "greedy", "random", "auto", "auction"):
            assert isinstance(noisepair.match(x, z, method, groups=np.arange(64) % 3), np.ndarray)
        assert noisepair.match(x, np.concatenate([z, z]), "knn", k=2).shape == (64,)
        pb = next(iter(noisepair.MatchedNoiseLoader([x], method="auto")))
        g = np.random.default_rng(1)
        for adapter in (RectifiedFlow(), RectifiedFlow("sd3", "logit_normal"), DDPM(), Consistency()):
            adapter(pb, generator=g)
        assert "torch" not in sys.modules
        print("ok")
    """)
    result = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=Path(__file__).resolve().parents[1],
    )
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr
