"""Flow++ blocks: the logistic-mixture CDF transform, its coupling, the attention conditioner."""

from __future__ import annotations

import functools

import pytest
import torch

from glowlab.bijections import Coupling
from glowlab.nets.conditioners import FlowPPConditioner
from glowlab.transforms import LogisticMixture
from glowlab.transforms.mixture import CENTRE_SPREAD, logistic_mixture_transform
from tests.conftest import perturb_parameters

K = 4
P = 3 * K + 2
flowpp_net = functools.partial(FlowPPConditioner, hidden=8, blocks=1, heads=2)


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _random_params(n: int, scale: float, seed: int = 0) -> torch.Tensor:
    return scale * torch.randn(n, P, dtype=torch.float64, generator=_gen(seed))


def _extreme_params() -> torch.Tensor:
    """One row per extreme: a dominant component, tiny/huge scales, a big shift and a, mixed."""
    rows = torch.zeros(6, P, dtype=torch.float64)
    rows[0, :K] = torch.tensor([40.0, -40.0, 0.0, -40.0])  # one component takes all weight
    rows[1, :K] = torch.tensor([40.0, -40.0, -40.0, -40.0])  # the main component as sharp
    rows[1, 2 * K] = -50.0  # as allowed
    rows[2, 2 * K : 3 * K] = 50.0  # every component as flat as allowed
    rows[3, 3 * K :] = torch.tensor([-50.0, 30.0])  # strongest contraction, far shift
    rows[4, 3 * K :] = torch.tensor([50.0, -30.0])  # strongest expansion
    rows[5, K : 2 * K] = torch.tensor([-3.0, -1.0, 1.0, 3.0])  # separated, sharpish components
    rows[5, 2 * K : 3 * K] = -1.0
    return rows


def test_zero_params_give_a_near_identity_map_and_the_identity_for_one_component() -> None:
    x = torch.linspace(-20, 20, 101, dtype=torch.float64)
    y, log_derivative = logistic_mixture_transform(x, torch.zeros(101, P, dtype=torch.float64))
    assert (y - x).abs().max() < CENTRE_SPREAD
    assert log_derivative.abs().max() < 0.05
    y1, log_derivative1 = logistic_mixture_transform(x, torch.zeros(101, 5, dtype=torch.float64))
    assert torch.allclose(y1, x, atol=1e-12) and log_derivative1.abs().max() < 1e-12


@pytest.mark.parametrize("scale", [0.5, 3.0])
def test_inverse_round_trip_on_random_params(scale: float) -> None:
    x = 3 * torch.randn(500, dtype=torch.float64, generator=_gen(1))
    params = _random_params(500, scale)
    y, log_derivative = logistic_mixture_transform(x, params)
    x_back, log_derivative_back = logistic_mixture_transform(y, params, inverse=True)
    # Where the map is nearly flat, x is ill-determined by y in any precision: compare the
    # error with y's rounding error carried back through the slope.
    slope = log_derivative.exp()
    assert ((x_back - x).abs() * slope <= 1e-12 * (1 + y.abs())).all()
    well_conditioned = slope > 1e-3
    assert well_conditioned.float().mean() > 0.9
    assert torch.allclose(x_back[well_conditioned], x[well_conditioned], atol=1e-10, rtol=0)
    assert torch.allclose(log_derivative_back[well_conditioned], log_derivative[well_conditioned])


def test_inverse_round_trip_on_extreme_params() -> None:
    params = _extreme_params().repeat_interleave(41, dim=0)
    x = torch.linspace(-10, 10, 41, dtype=torch.float64).repeat(6)
    y, _ = logistic_mixture_transform(x, params)
    x_back, _ = logistic_mixture_transform(y, params, inverse=True)
    assert torch.allclose(x_back, x, atol=1e-10, rtol=0)


def test_log_derivative_matches_autograd_and_the_map_is_increasing() -> None:
    x = torch.linspace(-8, 8, 400, dtype=torch.float64).requires_grad_(True)
    params = torch.cat([_random_params(400 - 6 * 10, 2.0), _extreme_params().repeat(10, 1)])
    y, log_derivative = logistic_mixture_transform(x, params)
    (dy_dx,) = torch.autograd.grad(y.sum(), x)
    assert torch.allclose(log_derivative, dy_dx.log(), atol=1e-9, rtol=1e-9)
    one_map = params[:1].expand(400, -1)
    y_sorted, _ = logistic_mixture_transform(x.detach(), one_map)
    assert (y_sorted.diff() > 0).all()


@pytest.mark.parametrize("inverse", [False, True])
def test_float32_stays_finite_for_large_inputs_and_extreme_params(inverse: bool) -> None:
    n = 6 * 101
    x = torch.linspace(-50, 50, 101).repeat(6)
    params = (40 * torch.randn(n, P, generator=_gen(2))).float()
    params[: 6 * 6] = _extreme_params().float().repeat(6, 1)
    params.requires_grad_(True)
    y, log_derivative = logistic_mixture_transform(x, params, inverse=inverse)
    assert torch.isfinite(y).all() and torch.isfinite(log_derivative).all()
    (grad,) = torch.autograd.grad(y.sum() + log_derivative.sum(), params)
    assert torch.isfinite(grad).all()


def test_bad_parameter_count_raises() -> None:
    with pytest.raises(ValueError, match="needs 3K \\+ 2"):
        logistic_mixture_transform(torch.zeros(3), torch.zeros(3, 6))


no_attention_net = functools.partial(flowpp_net, attention=False)
MIXTURE_COUPLINGS = {  # name: (channels, factory)
    "channel_no_attention": (4, lambda: Coupling(4, no_attention_net, "channel", "mixture")),
    "channel_attention": (4, lambda: Coupling(4, flowpp_net, "channel", "mixture", parity=1)),
    "checkerboard_attention": (
        4,
        lambda: Coupling(
            4, flowpp_net, "checkerboard", functools.partial(LogisticMixture, components=2)
        ),
    ),
    "checkerboard_no_attention": (
        3,
        lambda: Coupling(3, no_attention_net, "checkerboard", "mixture", parity=1),
    ),
}


def _perturbed(name: str) -> Coupling:
    torch.manual_seed(0)
    layer = MIXTURE_COUPLINGS[name][1]().double().eval()
    perturb_parameters(layer, 0.2)
    return layer


def _image(channels: int) -> torch.Tensor:
    return 2 * torch.rand(2, channels, 4, 4, dtype=torch.float64, generator=_gen(3)) - 1


def test_fresh_mixture_coupling_is_near_identity() -> None:
    layer = MIXTURE_COUPLINGS["checkerboard_attention"][1]().double()
    x = _image(4)
    z, logdet = layer(x)
    assert (z - x).abs().max() < CENTRE_SPREAD
    assert logdet.abs().max() < 0.05 * x[0].numel()
    assert not layer.exact_inverse


@pytest.mark.parametrize("name", sorted(MIXTURE_COUPLINGS))
def test_mixture_coupling_inverts_and_its_logdet_is_the_jacobians(name: str) -> None:
    layer, x = _perturbed(name), _image(MIXTURE_COUPLINGS[name][0])
    shape = x.shape[1:]
    z, logdet = layer(x)
    assert (z - x).abs().max() > 1e-2  # really transforms: the Jacobian test is not vacuous
    assert torch.allclose(layer.inverse(z), x, atol=1e-10, rtol=0)
    for i in range(x.shape[0]):
        jac = torch.autograd.functional.jacobian(
            lambda xi: layer(xi.view(1, *shape))[0].reshape(-1), x[i].reshape(-1)
        )
        sign, expected = torch.linalg.slogdet(jac)
        assert sign != 0
        assert torch.allclose(logdet[i], expected, atol=1e-8)


def test_flowpp_conditioner_shape_and_zero_output_at_init() -> None:
    net = FlowPPConditioner(3, 10, hidden=8, blocks=2, heads=4).double()
    out = net(torch.randn(2, 3, 5, 6, dtype=torch.float64, generator=_gen(4)))
    assert out.shape == (2, 10, 5, 6)
    assert out.abs().max() == 0


@pytest.mark.parametrize("attention", [True, False])
def test_attention_mixes_positions_beyond_the_conv_receptive_field(attention: bool) -> None:
    """One block's convolutions reach 3 pixels; attention reaches every pixel."""
    torch.manual_seed(0)
    net = FlowPPConditioner(2, 2, hidden=8, blocks=1, heads=2, attention=attention).double()
    perturb_parameters(net, 0.3)
    x = torch.randn(1, 2, 8, 8, dtype=torch.float64, generator=_gen(5))
    far = x.clone()
    far[0, :, 7, 7] += 1.0
    change = (net(far) - net(x))[0, :, 0, 0].abs().max()
    assert (change > 1e-6) if attention else (change == 0)


def test_bad_options_raise() -> None:
    with pytest.raises(ValueError, match="components=0 must be an integer >= 1"):
        Coupling(4, flowpp_net, transform=functools.partial(LogisticMixture, components=0))
    with pytest.raises(ValueError, match="heads=3 must be >= 1 and divide hidden=8"):
        FlowPPConditioner(2, 4, hidden=8, heads=3)
    with pytest.raises(ValueError, match="blocks=0"):
        FlowPPConditioner(2, 4, hidden=8, blocks=0, heads=2)
    with pytest.raises(ValueError, match="dropout=1.0"):
        FlowPPConditioner(2, 4, hidden=8, heads=2, dropout=1.0)
    FlowPPConditioner(2, 4, hidden=6, heads=4, attention=False)  # heads unused without attention
