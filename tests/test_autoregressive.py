"""MAF and IAF image layers: triangular Jacobians in raster order, exact inverses and logdets,
and a conditioner that sees only earlier elements."""

from __future__ import annotations

import functools

import pytest
import torch

from glowlab.bijections.autoregressive import MaskedAutoregressive
from glowlab.nets.masked import MaskedConvConditioner
from glowlab.transforms import Affine
from tests.conftest import perturb_parameters

# (direction, reverse, shape (C, H, W), extra options); the 4×7 and 5×5 images are wider than
# the receptive window, so the sequential direction really runs on cropped windows.
CASES = {
    "maf": ("maf", False, (2, 3, 3), {}),
    "maf_reverse": ("maf", True, (2, 3, 3), {}),
    "iaf": ("iaf", False, (2, 3, 3), {}),
    "iaf_reverse": ("iaf", True, (2, 3, 3), {}),
    "maf_wide": ("maf", True, (2, 4, 7), {"hidden_layers": 1}),
    "iaf_wide_no_hidden_layer": ("iaf", False, (3, 5, 5), {"hidden_layers": 0}),
}


def _prepared(name: str, dtype: torch.dtype = torch.float64) -> MaskedAutoregressive:
    direction, reverse, (channels, _, _), options = CASES[name]
    torch.manual_seed(0)
    layer = MaskedAutoregressive(channels, 8, direction, reverse=reverse, **options).to(dtype)
    perturb_parameters(layer, 0.3)
    return layer.eval()


def _inputs(name: str, batch: int = 3, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    shape = CASES[name][2]
    return torch.randn(batch, *shape, dtype=dtype, generator=torch.Generator().manual_seed(1))


def _element_order(channels: int, height: int, width: int, reverse: bool) -> torch.Tensor:
    """Flat ``(C, H, W)`` indices listed in autoregressive order (pixels, then channels)."""
    order = torch.arange(channels * height * width).view(channels, height, width)
    order = order.permute(1, 2, 0).reshape(-1)
    return order.flip(0) if reverse else order


@pytest.mark.parametrize("name", sorted(CASES))
def test_inverse_round_trip(name: str) -> None:
    layer, x = _prepared(name), _inputs(name)
    z, logdet = layer(x)
    assert logdet.shape == (x.shape[0],)
    assert torch.allclose(layer.inverse(z), x, atol=1e-10, rtol=0)


@pytest.mark.parametrize("name", sorted(CASES))
def test_jacobian_is_triangular_in_order_and_matches_logdet(name: str) -> None:
    layer, x = _prepared(name), _inputs(name, batch=2)
    shape, reverse = x.shape[1:], CASES[name][1]
    order = _element_order(*shape, reverse)
    _, logdet = layer(x)
    for i in range(x.shape[0]):
        jac = torch.autograd.functional.jacobian(
            lambda xi: layer(xi.view(1, *shape))[0].reshape(-1), x[i].reshape(-1)
        )
        ordered = jac[order][:, order]
        assert torch.all(ordered.triu(1) == 0), "output i depends on a later input"
        assert ordered.tril(-1).abs().max() > 1e-3, "no autoregressive dependence at all"
        assert torch.all(ordered.diagonal() > 0)
        sign, expected = torch.linalg.slogdet(jac)
        assert sign == 1
        assert torch.allclose(logdet[i], expected, atol=1e-8), (name, logdet[i], expected)


@pytest.mark.parametrize("name", ["maf", "iaf_reverse"])
def test_perturbed_layer_is_not_identity_and_fresh_layer_is(name: str) -> None:
    x = _inputs(name)
    z, logdet = _prepared(name)(x)
    assert (z - x).abs().max() > 1e-2
    assert logdet.abs().min() > 1e-3
    fresh = MaskedAutoregressive(2, hidden=8, direction=CASES[name][0]).double()
    z, logdet = fresh(x)
    assert torch.equal(z, x) and torch.equal(logdet, torch.zeros(3, dtype=torch.float64))
    assert torch.equal(fresh.inverse(x), x)


@pytest.mark.parametrize(
    ("channels", "height", "width", "kernel_size", "hidden_layers"),
    [(3, 3, 3, 3, 1), (2, 3, 4, 5, 2), (1, 3, 3, 3, 0)],
)
def test_conditioner_output_sees_only_earlier_elements(
    channels: int, height: int, width: int, kernel_size: int, hidden_layers: int
) -> None:
    """d(shift_i, log-scale_i)/dx_j is zero for every j ≥ i, checked over all pairs."""
    torch.manual_seed(0)
    net = MaskedConvConditioner(channels, 6, kernel_size, hidden_layers).double()
    perturb_parameters(net, 0.3)
    x = torch.randn(1, channels, height, width, dtype=torch.float64)
    jac = torch.autograd.functional.jacobian(net, x)  # (1, 2C, H, W, 1, C, H, W)
    jac = jac.reshape(2, channels * height * width, channels * height * width)
    order = _element_order(channels, height, width, reverse=False)
    for ordered in jac[:, order][:, :, order]:  # shift, then log-scale
        assert torch.all(ordered.triu(0) == 0), "output i depends on input j >= i"
        assert ordered.tril(-1).abs().max() > 1e-3


def test_float32_round_trip() -> None:
    for name in ("maf_wide", "iaf"):
        layer, x = _prepared(name, torch.float32), _inputs(name, dtype=torch.float32)
        z, logdet = layer(x)
        assert z.dtype == logdet.dtype == torch.float32
        assert torch.allclose(layer.inverse(z), x, atol=1e-4)


@pytest.mark.parametrize("direction", ["maf", "iaf"])
def test_gradients_flow_and_an_optimizer_step_changes_the_layer(direction: str) -> None:
    torch.manual_seed(0)
    layer = MaskedAutoregressive(2, hidden=8, direction=direction).double()
    x = torch.randn(4, 2, 3, 3, dtype=torch.float64)
    optimizer = torch.optim.Adam(layer.parameters(), lr=1e-2)
    before = {name: p.detach().clone() for name, p in layer.named_parameters()}
    z, logdet = layer(x)
    loss = (0.5 * z.pow(2).sum(dim=(1, 2, 3)) - logdet).mean()
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in layer.parameters())
    optimizer.step()
    changed = [name for name, p in layer.named_parameters() if not torch.equal(p, before[name])]
    assert "conditioner.output.weight" in changed  # the zero-initialised last layer learns
    z_after, _ = layer(x)
    assert torch.isfinite(z_after).all() and not torch.allclose(z_after, z)

    perturb_parameters(layer, 0.3)  # off the identity, every parameter gets a gradient
    layer.zero_grad()
    layer(x)[1].sum().backward()
    for name, p in layer.named_parameters():
        assert torch.isfinite(p.grad).all() and p.grad.abs().max() > 0, name


def test_bad_options_raise() -> None:
    with pytest.raises(ValueError, match=r"direction='glow'.*\['maf', 'iaf'\]"):
        MaskedAutoregressive(2, direction="glow")
    with pytest.raises(ValueError, match="kernel_size=4 must be a positive odd number"):
        MaskedAutoregressive(2, kernel_size=4)
    with pytest.raises(ValueError, match="hidden=0 must be > 0"):
        MaskedAutoregressive(2, hidden=0)
    with pytest.raises(ValueError, match="hidden_layers=-1 must be >= 0"):
        MaskedAutoregressive(2, hidden_layers=-1)
    with pytest.raises(ValueError, match="bound=0.0 must be > 0"):
        MaskedAutoregressive(2, transform=functools.partial(Affine, scale="soft_clamp", bound=0.0))
    with pytest.raises(ValueError, match="channels=0"):
        MaskedAutoregressive(0)
