"""Every elementwise transform in every layer that takes one: exact inverse and a logdet equal
to slogdet of the brute-force Jacobian (float64), over the product transform × layer family
(coupling with each mask and parity, MAF, IAF) rather than a hand-picked list."""

from __future__ import annotations

import functools

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from glowlab.bijections import Coupling
from glowlab.bijections.autoregressive import MaskedAutoregressive
from glowlab.nets.conditioners import FlowPPConditioner, GlowConditioner, ResNetConditioner
from glowlab.transforms import (
    Additive,
    Affine,
    LogisticMixture,
    Spline,
    soft_clamp,
    transform_factory,
)
from tests.conftest import CONF, perturb_parameters

TRANSFORMS = {
    "affine_sigmoid": functools.partial(Affine, scale="sigmoid"),
    "affine_exp_tanh": functools.partial(Affine, scale="exp_tanh"),
    "affine_centred": transform_factory("affine_centred"),
    "affine_exp": functools.partial(Affine, scale="exp"),
    "additive": Additive,
    "spline": functools.partial(Spline, bins=4, bound=1.5),
    "mixture": functools.partial(LogisticMixture, components=3),
}
glow_net = functools.partial(GlowConditioner, hidden=8)
resnet_net = functools.partial(ResNetConditioner, hidden=8, blocks=1)
flowpp_net = functools.partial(FlowPPConditioner, hidden=8, blocks=1, heads=2)

# layer family -> (builder(transform) -> layer, input shape (C, H, W))
LAYERS = {
    "coupling_channel": (lambda t: Coupling(4, glow_net, "channel", t), (4, 3, 3)),
    "coupling_channel_parity1": (lambda t: Coupling(4, resnet_net, "channel", t, 1), (4, 3, 3)),
    "coupling_checkerboard": (lambda t: Coupling(2, glow_net, "checkerboard", t, 1), (2, 3, 3)),
    "coupling_stripe_flowpp": (lambda t: Coupling(2, flowpp_net, "stripe", t), (2, 3, 4)),
    "maf": (lambda t: MaskedAutoregressive(2, 8, "maf", transform=t), (2, 3, 3)),
    "maf_reverse": (
        lambda t: MaskedAutoregressive(2, 8, "maf", reverse=True, transform=t),
        (2, 2, 3),
    ),
    "iaf": (lambda t: MaskedAutoregressive(2, 8, "iaf", transform=t), (2, 2, 3)),
}
CASES = [(layer, transform) for layer in sorted(LAYERS) for transform in sorted(TRANSFORMS)]


def _prepared(layer: str, transform: str) -> tuple[torch.nn.Module, torch.Tensor]:
    """The layer in float64 with parameters moved off the identity, and inputs for it."""
    build, shape = LAYERS[layer]
    torch.manual_seed(0)
    module = build(TRANSFORMS[transform]).double()
    perturb_parameters(module, 0.1)
    x = torch.randn(2, *shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    return module.eval(), x


@pytest.mark.parametrize(("layer", "transform"), CASES)
def test_inverse_round_trip(layer: str, transform: str) -> None:
    module, x = _prepared(layer, transform)
    z, logdet = module(x)
    assert logdet.shape == (x.shape[0],)
    assert not torch.allclose(z, x), "the perturbed layer must not be the identity"
    assert torch.allclose(module.inverse(z), x, atol=1e-9, rtol=0)


@pytest.mark.parametrize(("layer", "transform"), CASES)
def test_logdet_matches_brute_force_jacobian(layer: str, transform: str) -> None:
    module, x = _prepared(layer, transform)
    shape = x.shape[1:]
    _, logdet = module(x)
    for i in range(x.shape[0]):
        jac = torch.autograd.functional.jacobian(
            lambda xi: module(xi.view(1, *shape))[0].reshape(-1), x[i].reshape(-1)
        )
        sign, expected = torch.linalg.slogdet(jac)
        assert sign != 0
        assert torch.allclose(logdet[i], expected, atol=1e-8), (layer, transform)


@pytest.mark.parametrize("name", sorted(TRANSFORMS))
def test_transform_inverts_elementwise_and_zero_params_are_near_identity(name: str) -> None:
    torch.manual_seed(0)
    transform = TRANSFORMS[name](channels=3).double()
    x = torch.linspace(-4, 4, 3 * 5, dtype=torch.float64).view(1, 3, 5)
    params = 0.5 * torch.randn(1, 3, 5, transform.n_params, dtype=torch.float64)
    z, log_derivative = transform(x, params)
    assert torch.allclose(transform.inverse(z, params), x, atol=1e-9)
    derivative = torch.autograd.functional.jacobian(
        lambda v: transform(v, params)[0].sum(), x
    )  # elementwise map: the gradient of the sum is the derivative
    expected = torch.zeros_like(x) if log_derivative is None else log_derivative
    assert torch.allclose(derivative.log(), expected, atol=1e-8)


def test_split_params_layouts() -> None:
    """Affine reads all shifts then all scales (Glow's channel layout); the others read each
    element's parameters contiguously."""
    h = torch.arange(2 * 3).view(1, 6, 1)
    assert Affine().split_params(h)[0, :, 0].tolist() == [[0, 3], [1, 4], [2, 5]]
    assert Spline(bins=2).split_params(torch.arange(10).view(1, 10, 1))[0, :, 0].tolist() == [
        [0, 1, 2, 3, 4],
        [5, 6, 7, 8, 9],
    ]


def test_bad_transform_options_name_the_option() -> None:
    with pytest.raises(ValueError, match="scale='cubic'"):
        Affine(scale="cubic")
    with pytest.raises(ValueError, match="exp_tanh.*pass channels"):
        Affine(scale="exp_tanh")
    with pytest.raises(ValueError, match="bins=1 must be an integer >= 2"):
        Spline(bins=1)
    with pytest.raises(ValueError, match="components=0 must be an integer >= 1"):
        LogisticMixture(components=0)


def test_the_centred_affine_has_one_name_in_config_and_python() -> None:
    """``affine_centred`` is the same transform as a config node and as a Python shortcut."""
    node = OmegaConf.load(CONF / "model" / "transform" / "affine_centred.yaml")
    node = OmegaConf.merge(OmegaConf.load(CONF / "model" / "transform" / "affine.yaml"), node)
    node.pop("defaults", None)
    built = [instantiate(node)(channels=2), transform_factory("affine_centred")(channels=2)]
    for transform in built:
        assert (transform.scale, transform.centred, transform.bound) == ("soft_clamp", True, 3.0)
    h = torch.linspace(-20, 20, 41)
    assert torch.equal(built[0].log_scale(h), soft_clamp(h, 3.0))
