"""The FFJORD block: exact inverse, logdet against the brute-force Jacobian of the solve,
an unbiased Hutchinson trace, fixed-step and adjoint solves, and gradients."""

from __future__ import annotations

import functools

import pytest
import torch

from glowlab.bijections.cnf import (
    CNF,
    SolverOptions,
    exact_jacobian_terms,
    hutchinson_jacobian_terms,
)
from glowlab.bijections.hutchinson import hutchinson_noise
from glowlab.nets.dynamics import ConcatConvDynamics
from tests.conftest import perturb_parameters

SHAPE = (2, 4, 4)  # (C, H, W): D = 32
TIGHT = {"rtol": 1e-9, "atol": 1e-9}
SOLVER_OPTIONS = ("solver", "rtol", "atol", "step_size")


def cnf(channels: int, hidden: int = 8, **options) -> CNF:
    """A CNF block with a ``hidden``-channel field; the solver's options given flat."""
    solve = {key: options.pop(key) for key in SOLVER_OPTIONS if key in options}
    field = functools.partial(ConcatConvDynamics, hidden=hidden)
    return CNF(channels, field, SolverOptions(**solve), **options)


def _block(scale: float = 0.2, **options) -> CNF:
    """A float64 block with hidden 8, parameters moved off the identity."""
    torch.manual_seed(0)
    block = cnf(SHAPE[0], **{**TIGHT, **options}).double()
    perturb_parameters(block, scale)
    return block


def _inputs(batch: int = 2) -> torch.Tensor:
    gen = torch.Generator().manual_seed(1)
    return torch.randn(batch, *SHAPE, dtype=torch.float64, generator=gen)


def test_fresh_block_is_the_identity() -> None:
    block = cnf(SHAPE[0]).double()
    x = _inputs()
    z, logdet = block(x)
    assert torch.equal(logdet, torch.zeros(2, dtype=torch.float64))
    assert torch.allclose(z, x, atol=1e-12, rtol=0)  # f ≡ 0; dense output adds round-off


def test_perturbed_block_transforms_and_inverts() -> None:
    block, x = _block().eval(), _inputs()
    with torch.no_grad():
        z, logdet = block(x)
        assert block.last_nfe > 0
        assert (z - x).abs().max() > 0.5 and logdet.abs().min() > 1.0  # not the identity
        assert torch.allclose(block.inverse(z), x, atol=1e-6, rtol=0)


def test_exact_logdet_matches_brute_force_jacobian_of_the_solve() -> None:
    block, x = _block(trace="hutchinson", eval_trace="exact"), _inputs()
    with torch.no_grad():
        _, logdet = block.eval()(x)
    block.train()  # z does not depend on the trace mode; the Hutchinson graph is cheaper
    for i in range(x.shape[0]):
        jac = torch.autograd.functional.jacobian(
            lambda xi: block(xi.view(1, *SHAPE))[0].reshape(-1), x[i].reshape(-1), vectorize=True
        )
        sign, expected = torch.linalg.slogdet(jac)
        assert sign == 1  # a flow map is orientation preserving
        assert torch.allclose(logdet[i], expected, atol=1e-5, rtol=0), (logdet[i], expected)


@pytest.mark.parametrize("kind", ["rademacher", "gaussian"])
def test_hutchinson_trace_is_unbiased_at_a_fixed_point(kind: str) -> None:
    torch.manual_seed(0)
    dynamics = ConcatConvDynamics(SHAPE[0], hidden=8).double()
    perturb_parameters(dynamics, 0.3)
    draws = 4000
    t, point = torch.tensor(0.4), _inputs(1).requires_grad_(True)
    exact, _ = exact_jacobian_terms(dynamics(t, point), point, create_graph=False)
    x = point.detach().repeat(draws, 1, 1, 1).requires_grad_(True)  # one v per row
    f = dynamics(t, x)
    estimates, _ = hutchinson_jacobian_terms(f, x, hutchinson_noise(x, kind), create_graph=False)
    standard_error = estimates.std() / draws**0.5
    assert estimates.std() > 0.1  # a genuinely noisy estimator, so the check is not vacuous
    assert (estimates.mean() - exact).abs() < 4 * standard_error


def test_hutchinson_logdet_averages_to_the_exact_logdet() -> None:
    block, x = _block(eval_trace="exact"), _inputs(1)
    with torch.no_grad():
        _, exact = block.eval()(x)
        draws = 400
        _, estimates = block.train()(x.repeat(draws, 1, 1, 1))  # one v per row
    standard_error = estimates.std() / draws**0.5
    assert estimates.std() > 0.1
    assert (estimates.mean() - exact).abs() < 4 * standard_error


def test_fixed_step_rk4_agrees_with_dopri5() -> None:
    x = _inputs()
    with torch.no_grad():
        z_adaptive, logdet_adaptive = _block(eval_trace="exact").eval()(x)
        rk4 = _block(solver="rk4", step_size=0.05, eval_trace="exact").eval()
        z, logdet = rk4(x)
        assert rk4.last_nfe == 4 * 20  # four evaluations per step, T / h = 20 steps
        assert torch.allclose(z, z_adaptive, atol=1e-5, rtol=0)
        assert torch.allclose(logdet, logdet_adaptive, atol=1e-5, rtol=0)
        assert torch.allclose(rk4.inverse(z), x, atol=1e-5, rtol=0)


def test_adjoint_gradients_match_direct_backprop() -> None:
    grads = []
    for adjoint in (False, True):
        block = _block(scale=0.1, adjoint=adjoint)
        x = _inputs().requires_grad_(True)
        torch.manual_seed(3)  # the same Hutchinson probe for both solves
        z, logdet = block(x)
        (z.square().sum() - logdet.sum()).backward()
        grads.append([x.grad, *(p.grad for p in block.parameters())])
    for direct, adjoint in zip(*grads, strict=True):
        assert torch.allclose(direct, adjoint, atol=1e-6, rtol=1e-5)


def test_no_grad_evaluation_gives_the_same_values() -> None:
    block, x = _block(scale=0.1).eval(), _inputs()
    torch.manual_seed(4)
    z, logdet = block(x)
    torch.manual_seed(4)
    with torch.no_grad():
        z_eval, logdet_eval = block(x)
    assert not z_eval.requires_grad and not logdet_eval.requires_grad
    assert torch.allclose(z, z_eval) and torch.allclose(logdet, logdet_eval)


def test_float32_training_step_moves_every_parameter() -> None:
    torch.manual_seed(0)
    block = cnf(SHAPE[0], rtol=1e-3, atol=1e-3)
    perturb_parameters(block, 0.1)
    x = _inputs().float()
    before = [p.detach().clone() for p in block.parameters()]
    optimizer = torch.optim.SGD(block.parameters(), lr=0.1)
    z, logdet = block(x)
    assert z.dtype == logdet.dtype == torch.float32
    (0.5 * z.square().sum() - logdet.sum()).backward()  # −log p(x) up to a constant
    optimizer.step()
    for old, new in zip(before, block.parameters(), strict=True):
        assert not torch.equal(old, new)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"solver": "lsoda"}, r"solver='lsoda'.*\['dopri5'"),
        ({"trace": "skilling"}, r"trace='skilling'.*\['exact', 'hutchinson'\]"),
        ({"eval_trace": "none"}, r"eval_trace='none'"),
        ({"noise": "uniform"}, r"noise='uniform'.*\['rademacher', 'gaussian'\]"),
        ({"solver": "rk4"}, r"solver='rk4' takes fixed steps: pass step_size"),
        ({"step_size": 0.1}, r"step_size=0.1 is only for the fixed-step solvers"),
        ({"solver": "euler", "step_size": 0.0}, r"step_size=0.0 must be > 0"),
        ({"time_length": -1.0}, r"time_length=-1.0 must be > 0"),
        ({"rtol": 0.0}, r"rtol=0.0 must be > 0"),
        ({"hidden": 0}, r"hidden=0 must be"),
    ],
)
def test_bad_options_name_the_value(options: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        cnf(SHAPE[0], **options)
