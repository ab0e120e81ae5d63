"""ResShift: training loss + grads, sampler shapes and determinism, the schedule, the forward marginal,
the posterior algebra (sampled and with an oracle x0), a tiny overfit, bf16 autocast, option errors."""

import json

import pytest
import torch
import torch.nn.functional as F

from medsr.errors import MedsrError
from medsr.models.resshift import ResShift, resshift_schedule

torch.set_num_threads(2)

TINY = dict(channels=8, channel_mult=[1, 2], steps=2)


def tiny(scale=2, **kw) -> ResShift:
    torch.manual_seed(0)
    return ResShift(scale=scale, **{**TINY, **kw})


def randomise_tail(model: ResShift) -> None:
    """The tail starts at zero (output = bicubic whatever the noise); give it weights so noise matters."""
    with torch.no_grad():
        model.unet.tail.weight.normal_(0, 0.1)


def pair(scale: int, h: int = 13, w: int = 9, batch: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    hr = torch.rand(batch, 1, h * scale, w * scale) * 2 - 1
    return F.avg_pool2d(hr, scale), hr


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_training_loss_forward_backward(scale):
    model = tiny(scale)
    randomise_tail(model)
    lr, hr = pair(scale)
    loss, x0_hat = model.training_loss(lr, hr)
    assert loss.ndim == 0 and torch.isfinite(loss)
    assert x0_hat.shape == hr.shape
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    with pytest.raises(MedsrError, match="hr shape"):
        model.training_loss(lr, hr[..., :-1])


def test_training_loss_is_seedable():
    model = tiny(3)
    lr, hr = pair(3)
    torch.manual_seed(5)
    a = model.training_loss(lr, hr)[0]
    torch.manual_seed(5)
    assert torch.equal(a, model.training_loss(lr, hr)[0])


@pytest.mark.parametrize("h,w", [(13, 9), (1, 1), (5, 7)])
def test_forward_shape_determinism_and_global_rng(h, w):
    model = tiny(3, channel_mult=[1, 2, 2])  # 3 levels: pads to multiples of 4
    randomise_tail(model)
    lr = torch.rand(2, 1, h, w) * 2 - 1
    state = torch.get_rng_state()
    with torch.no_grad():
        a, b = model(lr), model(lr)
    assert torch.equal(torch.get_rng_state(), state), "the sampler must not draw from the global RNG"
    assert a.shape == (2, 1, 3 * h, 3 * w)
    assert torch.equal(a, b)
    assert a.min() >= -1 and a.max() <= 1
    other = ResShift(**{**model.config, "seed": 1})
    other.load_state_dict(model.state_dict())
    with torch.no_grad():
        assert not torch.equal(other(lr), a), "the seed (so the noise) must reach the output"


def test_config_round_trip_and_untrained_model_is_bicubic():
    model = ResShift()
    assert model.scale == 3 and model.steps == 4 and ResShift.SUPPORTED_SCALES == (2, 3, 4)
    config = json.loads(json.dumps(model.config))
    assert config["channel_mult"] == [1, 2, 2]
    rebuilt = ResShift(**config)
    assert rebuilt.config == model.config and rebuilt.etas == model.etas
    lr = torch.rand(1, 1, 6, 5) * 2 - 1
    with torch.no_grad():
        bicubic = F.interpolate(lr, scale_factor=3, mode="bicubic", align_corners=False).clamp(-1, 1)
        assert torch.equal(tiny(3)(lr), bicubic)


def test_schedule():
    etas = resshift_schedule(15, 0.04, 0.99, 0.3)
    assert len(etas) == 15
    assert all(a < b for a, b in zip(etas[:-1], etas[1:]))
    assert etas[0] == pytest.approx(0.04**2, rel=1e-9)
    assert etas[-1] == pytest.approx(0.99, rel=1e-9)
    # sqrt(eta_t) is geometric in ((t-1)/(T-1))^p (T-1): log sqrt(eta) is linear in that exponent
    t = torch.arange(15, dtype=torch.float64)
    beta = (t / 14) ** 0.3 * 14
    log_sqrt = torch.tensor(etas, dtype=torch.float64).sqrt().log()
    slope = (log_sqrt[-1] - log_sqrt[0]) / 14
    assert torch.allclose(log_sqrt, log_sqrt[0] + slope * beta, atol=1e-12)
    model = ResShift(steps=4, min_noise_level=0.05, eta_max=0.9, power=0.5)
    assert model.etas == resshift_schedule(4, 0.05, 0.9, 0.5)
    assert model.etas[0] == pytest.approx(0.0025) and model.etas[-1] == pytest.approx(0.9)
    assert resshift_schedule(1, 0.04, 0.99, 0.3) == [0.99]


def _moments(model, x0, y0, t, n):
    """Empirical mean and variance of n draws of x_t ~ q(x_t | x0, y0), per pixel."""
    gen = torch.Generator().manual_seed(0)
    x0, y0 = x0.expand(n, -1, -1, -1), y0.expand(n, -1, -1, -1)
    noise = torch.randn(x0.shape, generator=gen)
    x_t = model.q_sample(x0, y0, torch.full((n,), t, dtype=torch.long), noise)
    return x_t, x0, y0


def test_forward_marginal_matches_theory():
    model = tiny(2, steps=4, kappa=2.0)
    x0 = torch.tensor([-0.8, -0.2, 0.3, 0.9]).view(1, 1, 2, 2)
    y0 = torch.tensor([0.5, -0.6, 0.3, -0.1]).view(1, 1, 2, 2)
    n = 40000
    for t in range(4):
        eta = model.etas[t]
        x_t, _, _ = _moments(model, x0, y0, t, n)
        mean, var = x_t.mean(0, keepdim=True), x_t.var(0, keepdim=True)
        expected_var = 4.0 * eta
        assert torch.allclose(mean, x0 + eta * (y0 - x0), atol=5 * (expected_var / n) ** 0.5)
        assert torch.allclose(var, torch.full_like(var, expected_var), rtol=0.05)


def test_posterior_step_keeps_the_marginal():
    """x_t ~ q(x_t | x0, y0), then x_{t-1} ~ q(x_{t-1} | x_t, x0) must be distributed as q(x_{t-1} | x0, y0)."""
    model = tiny(2, steps=4, kappa=2.0)
    x0 = torch.tensor([-0.8, -0.2, 0.3, 0.9]).view(1, 1, 2, 2)
    y0 = torch.tensor([0.5, -0.6, 0.3, -0.1]).view(1, 1, 2, 2)
    n = 40000
    gen = torch.Generator().manual_seed(1)
    for t in range(1, 4):
        x_t, x0n, _ = _moments(model, x0, y0, t, n)
        mean, var = model.posterior(x_t, x0n, torch.full((n,), t, dtype=torch.long))
        x_prev = mean + var.sqrt() * torch.randn(x_t.shape, generator=gen)
        eta_prev = model.etas[t - 1]
        expected_var = 4.0 * eta_prev
        assert torch.allclose(x_prev.mean(0, keepdim=True), x0 + eta_prev * (y0 - x0), atol=5 * (expected_var / n) ** 0.5)
        assert torch.allclose(x_prev.var(0, keepdim=True), torch.full((1, 1, 2, 2), expected_var), rtol=0.05)
    # the last step (t index 0) has no variance and returns x0 exactly
    mean, var = model.posterior(torch.randn(3, 1, 2, 2), x0.expand(3, -1, -1, -1), torch.zeros(3, dtype=torch.long))
    assert torch.equal(var, torch.zeros_like(var)) and torch.equal(mean, x0.expand(3, -1, -1, -1))


@pytest.mark.parametrize("steps", [1, 2, 4, 15])
def test_oracle_network_makes_the_sampler_return_x0(steps):
    model = tiny(2, steps=steps)
    lr, hr = pair(2, 6, 5)
    seen = []

    def oracle(x_t, y0, t):
        seen.append(int(t[0]))
        return hr

    model.predict_x0 = oracle
    with torch.no_grad():
        assert torch.equal(model(lr), hr)
    assert seen == list(reversed(range(steps)))


def test_tiny_overfit():
    model = tiny(2, steps=2)
    torch.manual_seed(0)
    lr, hr = pair(2, 6, 6, batch=1)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)

    def fixed_loss():
        with torch.no_grad(), torch.random.fork_rng():
            torch.manual_seed(123)
            return sum(model.training_loss(lr, hr)[0].item() for _ in range(4))

    before = fixed_loss()
    for _ in range(40):
        opt.zero_grad()
        model.training_loss(lr, hr)[0].backward()
        opt.step()
    after = fixed_loss()
    assert after < 0.5 * before, (before, after)


def test_bf16_autocast_and_channels_last():
    model = tiny(3).to(memory_format=torch.channels_last)
    randomise_tail(model)
    lr, hr = pair(3)
    lr, hr = lr.to(memory_format=torch.channels_last), hr.to(memory_format=torch.channels_last)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss, x0_hat = model.training_loss(lr, hr)
        with torch.no_grad():
            out = model(lr)
    assert torch.isfinite(loss) and x0_hat.shape == hr.shape
    loss.backward()
    assert out.shape == hr.shape and torch.isfinite(out).all()
    assert out.min() >= -1 and out.max() <= 1


@pytest.mark.parametrize("option", [dict(scale=8), dict(scale=True), dict(steps=0), dict(steps=51), dict(steps=2.0),
                                    dict(kappa=0), dict(power=-1), dict(eta_max=1.5), dict(min_noise_level=1.0),
                                    dict(channel_mult=[]), dict(channel_mult=[1, 0]), dict(channels=0),
                                    dict(num_res_blocks=0), dict(seed=None)])
def test_bad_options_raise_medsr_error(option):
    with pytest.raises(MedsrError):
        ResShift(**option)
