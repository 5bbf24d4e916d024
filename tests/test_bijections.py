"""Every bijection: exact inverse and a logdet equal to the brute-force Jacobian's (the
couplings and autoregressive layers, over every transform, in tests/test_transforms.py)."""

from __future__ import annotations

import functools

import pytest
import torch

from glowlab.bijections import (
    ActNorm,
    ChannelPermutation,
    Coupling,
    Dequantize,
    DiagonalScale,
    InvConv1x1,
    InvConv1x1LU,
    Logit,
    Planar,
    Sequential,
    Shift,
    Squeeze,
)
from glowlab.nets.conditioners import FlowPPConditioner, GlowConditioner, ResNetConditioner
from tests.conftest import perturb_parameters

C, H, W = 4, 4, 4
glow_net = functools.partial(GlowConditioner, hidden=8)
resnet_net = functools.partial(ResNetConditioner, hidden=8, blocks=2)
flowpp_net = functools.partial(FlowPPConditioner, hidden=8, blocks=1, heads=2)

LAYERS = {
    "squeeze": lambda: Squeeze(),
    "actnorm": lambda: ActNorm(C),
    "conv1x1": lambda: InvConv1x1(C, seed=1),
    "conv1x1_lu": lambda: InvConv1x1LU(C, seed=2),
    "reverse": lambda: ChannelPermutation.reverse(C),
    "shuffle": lambda: ChannelPermutation.shuffle(C, seed=3),
    "shift": lambda: Shift(),
    "logit": lambda: Logit(0.05),
    "diagonal_scale": lambda: DiagonalScale((C, H, W)),
    "sequential": lambda: Sequential(
        [ActNorm(C), InvConv1x1LU(C), Coupling(C, glow_net), Squeeze(), ActNorm(4 * C)]
    ),
}


def _prepared(name: str) -> torch.nn.Module:
    """The layer in float64, ActNorms initialised on data, parameters moved off identity."""
    torch.manual_seed(0)
    layer = LAYERS[name]().double()
    layer.train()
    with torch.no_grad():
        layer(torch.rand(16, C, H, W, dtype=torch.float64))  # data-dependent init
    perturb_parameters(layer, 0.1)
    return layer.eval()


def _inputs(name: str) -> torch.Tensor:
    x = torch.rand(3, C, H, W, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    return x if name == "logit" else 2 * x - 1


@pytest.mark.parametrize("name", sorted(LAYERS))
def test_inverse_round_trip(name: str) -> None:
    layer, x = _prepared(name), _inputs(name)
    z, logdet = layer(x)
    assert logdet.shape == (x.shape[0],)
    assert torch.allclose(layer.inverse(z), x, atol=1e-10, rtol=0)


@pytest.mark.parametrize("name", sorted(LAYERS))
def test_logdet_matches_brute_force_jacobian(name: str) -> None:
    layer, x = _prepared(name), _inputs(name)
    _, logdet = layer(x)
    for i in range(x.shape[0]):
        jac = torch.autograd.functional.jacobian(
            lambda xi: layer(xi.view(1, C, H, W))[0].reshape(-1), x[i].reshape(-1)
        )
        sign, expected = torch.linalg.slogdet(jac)
        assert sign != 0
        assert torch.allclose(logdet[i], expected, atol=1e-8), (name, logdet[i], expected)


def test_dequantize_logdet_and_inverse() -> None:
    deq = Dequantize(n_bits=5).double()
    x = torch.randint(0, 32, (3, 1, 2, 2)).double()
    v, logdet = deq(x)
    assert v.min() >= 0 and v.max() < 1
    assert torch.equal(deq.inverse(v).double(), x)
    jac = torch.autograd.functional.jacobian(
        lambda t: deq(t.view(1, 1, 2, 2), noise=0.0)[0], x[:1]
    )
    expected = torch.linalg.slogdet(jac.reshape(4, 4))[1]
    assert torch.allclose(logdet, expected.expand(3))


def test_squeeze_layout() -> None:
    x = torch.arange(16.0).view(1, 1, 4, 4)
    z, _ = Squeeze()(x)
    assert z.shape == (1, 4, 2, 2)
    assert z[0, :, 0, 0].tolist() == [0.0, 1.0, 4.0, 5.0]  # the top-left 2×2 patch
    with pytest.raises(ValueError, match="even height and width"):
        Squeeze()(torch.zeros(1, 1, 3, 4))


def test_actnorm_data_dependent_init() -> None:
    torch.manual_seed(0)
    x = 3 + 2 * torch.randn(64, 5, 6, 6)
    layer = ActNorm(5).train()
    z, _ = layer(x)
    assert torch.allclose(z.mean(dim=(0, 2, 3)), torch.zeros(5), atol=1e-5)
    assert torch.allclose(z.std(dim=(0, 2, 3), unbiased=False), torch.ones(5), atol=1e-4)
    assert bool(layer.initialized)
    before = layer.log_scale.detach().clone()
    layer(x * 10)  # already initialised: the parameters stay
    assert torch.equal(layer.log_scale, before)


def test_actnorm_does_not_initialise_in_eval_or_after_loading() -> None:
    fresh = ActNorm(3).eval()
    fresh(torch.randn(8, 3, 2, 2) + 5)
    assert not fresh.initialized
    trained = ActNorm(3).train()
    trained(torch.randn(8, 3, 2, 2) * 4)
    loaded = ActNorm(3).train()
    loaded.load_state_dict(trained.state_dict())
    loaded(torch.randn(8, 3, 2, 2) + 100)
    assert torch.equal(loaded.bias, trained.bias)


def test_channel_mask_needs_even_channels() -> None:
    with pytest.raises(ValueError, match="even number of channels.*checkerboard"):
        Coupling(3, glow_net, mask="channel")


def test_unknown_options_name_the_allowed_values() -> None:
    with pytest.raises(ValueError, match=r"mask='diagonal'.*\['channel', 'checkerboard'"):
        Coupling(4, glow_net, mask="diagonal")
    with pytest.raises(ValueError, match="transform='quadratic'"):
        Coupling(4, glow_net, transform="quadratic")
    with pytest.raises(ValueError, match="n_bits"):
        Dequantize(9)


@pytest.mark.parametrize("name", ["conv1x1", "conv1x1_lu"])
def test_cached_1x1_weight_follows_parameter_updates(name: str) -> None:
    layer = _prepared(name)
    x = _inputs(name)
    with torch.no_grad():
        z_before = layer(x)[0]
        assert torch.equal(layer(x)[0], z_before)  # served from the cache
        perturb_parameters(layer, 0.1, seed=5)  # an in-place update, like an optimizer step
        z_after = layer(x)[0]
        assert not torch.allclose(z_after, z_before)
        assert torch.allclose(layer.inverse(z_after), x, atol=1e-10)
    fresh = LAYERS[name]().double()
    fresh.load_state_dict(layer.state_dict())
    with torch.no_grad():
        assert torch.allclose(fresh(x)[0], z_after, atol=1e-12)


@pytest.mark.parametrize("name", ["conv1x1", "conv1x1_lu"])
@pytest.mark.parametrize("update", ["fused_adam", "data_write"])
def test_cached_1x1_weight_follows_updates_that_skip_version_counters(
    name: str, update: str
) -> None:
    """A fused Adam step and a write through ``.data`` leave ``_version`` unchanged: the cache
    must still see the new values (a stale weight once gave val bpd 1040 after training)."""
    layer = _prepared(name)
    x = _inputs(name)
    with torch.no_grad():
        z_before = layer(x)[0]
    versions = [p._version for p in layer.parameters()]
    if update == "fused_adam":
        for p in layer.parameters():
            p.grad = torch.ones_like(p)
        torch.optim.Adam(layer.parameters(), lr=0.05, fused=True).step()
    else:
        for p in layer.parameters():
            p.data.add_(0.05)
    assert [p._version for p in layer.parameters()] == versions  # the counters did not move
    with torch.no_grad():
        z_after = layer(x)[0]
        assert torch.allclose(z_after, _conv_by_weight(layer, x), atol=1e-12)
        assert not torch.allclose(z_after, z_before)


def _conv_by_weight(layer, x: torch.Tensor) -> torch.Tensor:
    """The layer's map computed from its assembled weight, without the cache."""
    return torch.einsum("ij,bjhw->bihw", layer.weight().detach(), x)


def test_planar_flow_is_invertible_with_exact_logdet_even_when_pushed_to_the_limit() -> None:
    torch.manual_seed(0)
    layer = Planar(2).double()
    with torch.no_grad():
        layer.u.copy_(torch.tensor([-4.0, 3.0]))  # w·u < -1: the constraint must repair it
        layer.w.copy_(torch.tensor([1.5, -0.5]))
        layer.b.fill_(0.3)
    assert layer.w @ layer._u_hat() > -1
    x = torch.randn(6, 2, dtype=torch.float64)
    z, logdet = layer(x)
    assert torch.allclose(layer.inverse(z), x, atol=1e-10)
    for i in range(len(x)):
        jac = torch.autograd.functional.jacobian(lambda xi: layer(xi[None])[0][0], x[i])
        assert torch.allclose(logdet[i], torch.linalg.slogdet(jac)[1], atol=1e-10)
