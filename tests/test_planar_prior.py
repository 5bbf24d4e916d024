"""The planar-flow top prior, and planar flows fitted to a 2-D toy density."""

from __future__ import annotations

import math

import torch

from glowlab.bijections import Planar, Sequential
from glowlab.models import glow
from glowlab.models.parts import PriorChoice
from glowlab.priors import PlanarPrior, gaussian_log_prob
from tests.conftest import perturb_parameters


def _prior() -> PlanarPrior:
    torch.manual_seed(0)
    prior = PlanarPrior((2, 2, 2), layers=3).double()
    perturb_parameters(prior, 0.5)
    return prior


def test_planar_prior_density_is_the_change_of_variables() -> None:
    prior = _prior()
    z = torch.randn(4, 2, 2, 2, dtype=torch.float64)
    flow = prior.flow
    for i in range(len(z)):
        jac = torch.autograd.functional.jacobian(lambda v: flow(v[None])[0][0], z[i].reshape(-1))
        base = flow(z[i].reshape(1, -1))[0]
        zero = base.new_zeros(())
        expected = gaussian_log_prob(base, zero, zero) + torch.linalg.slogdet(jac)[1]
        assert torch.allclose(prior.log_prob(z[i : i + 1]), expected, atol=1e-10)
    assert not torch.allclose(flow(z.reshape(4, -1))[0], z.reshape(4, -1))  # not the identity


def test_planar_prior_samples_invert_the_density_map() -> None:
    prior = _prior()
    eps = torch.randn(5, 2, 2, 2, dtype=torch.float64)
    z = prior.sample(5, (2, 2, 2), eps=eps)
    assert z.shape == (5, 2, 2, 2)
    base = prior.flow(z.reshape(5, -1))[0]
    assert torch.allclose(base, eps.reshape(5, -1), atol=1e-10)
    mode = prior.sample(5, (2, 2, 2), temperature=0.0)
    assert torch.allclose(mode, mode[:1].expand_as(mode))


def test_glow_with_planar_top_prior_round_trips_and_samples() -> None:
    torch.manual_seed(0)
    model = glow((1, 8, 8), levels=2, depth=1, width=8, prior=PriorChoice("planar", layers=2))
    assert isinstance(model.levels[-1].prior, PlanarPrior)
    x = torch.randint(0, 256, (3, 1, 8, 8), dtype=torch.uint8)
    model.train()
    with torch.no_grad():
        model(x)  # ActNorm init
    perturb_parameters(model.levels[-1].prior, 0.3)
    model.eval()
    assert torch.equal(model.decode(model.encode(x)), x)
    assert model.sample(4, temperature=0.7).shape == (4, 1, 8, 8)
    model.train()
    model.bits_per_dim(x).mean().backward()
    assert all(p.grad is not None for p in model.levels[-1].prior.parameters())


def test_planar_flows_fit_a_two_dimensional_toy_density() -> None:
    """Maximum likelihood on a bent 2-D density: the flow beats the best Gaussian fit."""
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(2048, generator=gen)
    data = torch.stack([a, 0.5 * a**2 - 1 + 0.2 * torch.randn(2048, generator=gen)], dim=1)
    centred = data - data.mean(0)
    cov = centred.T @ centred / len(data)
    gaussian_nll = 0.5 * (torch.logdet(cov) + 2 * (1 + math.log(2 * math.pi)))

    torch.manual_seed(0)
    flow = Sequential([Planar(2) for _ in range(8)])
    optimizer = torch.optim.Adam(flow.parameters(), lr=2e-2)

    def nll() -> torch.Tensor:
        z, logdet = flow(data)
        zero = z.new_zeros(())
        return -(gaussian_log_prob(z, zero, zero) + logdet).mean()

    start = nll().item()
    for _ in range(150):
        optimizer.zero_grad()
        loss = nll()
        loss.backward()
        optimizer.step()
    assert nll().item() < min(start, gaussian_nll.item()) - 0.5, (start, gaussian_nll, nll())
