"""RNODE's regularisers (Finlay et al. 2020) on the CNF block and the FFJORD model: zero for
zero dynamics, the closed forms of a linear field, an unbiased Hutchinson Jacobian norm, the
training loss changed and the bpd not, and a real training run."""

from __future__ import annotations

import functools
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from glowlab.bijections.cnf import CNF, ODEFlow, SolverOptions, recording_regularizers
from glowlab.models.families import ffjord
from glowlab.models.recipes import glow
from glowlab.nets.dynamics import ConcatConvDynamics
from glowlab.objectives import RNODE, Likelihood
from tests.conftest import perturb_parameters, train_briefly

SHAPE = (1, 2, 2)  # D = 4
D = 4
TIGHT = {"rtol": 1e-10, "atol": 1e-10}
HIDDEN_8 = functools.partial(ConcatConvDynamics, hidden=8)


class LinearField(nn.Module):
    """``f(t, x) = A x`` on the flattened image: ``(B, 1, 2, 2) -> (B, 1, 2, 2)``."""

    def __init__(self, a: torch.Tensor) -> None:
        super().__init__()
        self.a = nn.Parameter(a.clone())

    def forward(self, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return (x.reshape(x.shape[0], -1) @ self.a.T).reshape(x.shape)


def _matrix(symmetric: bool) -> torch.Tensor:
    gen = torch.Generator().manual_seed(7)
    a = 0.6 * torch.randn(D, D, dtype=torch.float64, generator=gen)
    return (a + a.T) / 2 if symmetric else a


def _inputs(batch: int = 3) -> torch.Tensor:
    gen = torch.Generator().manual_seed(1)
    return torch.randn(batch, *SHAPE, dtype=torch.float64, generator=gen)


def _kinetic_by_quadrature(a: torch.Tensor, x0: torch.Tensor, t0: float, t1: float):
    """``∫ ½‖A e^{(t−t0)A} x0‖² dt`` over ``[min, max]`` of the exact solution started at
    ``t0``, by 30-point Gauss–Legendre (exact to round-off for this entire integrand)."""
    nodes, weights = np.polynomial.legendre.leggauss(30)
    lo, hi = min(t0, t1), max(t0, t1)
    total = torch.zeros(x0.shape[0], dtype=torch.float64)
    for node, weight in zip(nodes, weights, strict=True):
        t = lo + (hi - lo) * (node + 1) / 2
        xt = x0 @ torch.linalg.matrix_exp((t - t0) * a).T
        total += (hi - lo) / 2 * weight * 0.5 * (xt @ a.T).square().sum(1)
    return total


def test_zero_dynamics_have_zero_regularizers() -> None:
    for trace in ("exact", "hutchinson"):
        block = CNF(1, HIDDEN_8, trace=trace).double()
        with recording_regularizers(block):
            z, logdet = block.train()(_inputs())  # a fresh block is f ≡ 0
        reg = block.last_regularizers
        assert torch.equal(reg["kinetic"], torch.zeros(3, dtype=torch.float64))
        assert torch.equal(reg["jacobian"], torch.zeros(3, dtype=torch.float64))
        assert torch.equal(logdet, torch.zeros(3, dtype=torch.float64))


def test_symmetric_linear_field_matches_the_closed_form() -> None:
    a, x0, T = _matrix(symmetric=True), _inputs(), 0.7
    block = CNF(1, lambda c: LinearField(a), SolverOptions(**TIGHT), time_length=T, trace="exact")
    with recording_regularizers(block):
        z, logdet = block.train()(x0)
    # A = Q diag(λ) Qᵀ, c = Qᵀ x0: ½‖A x(t)‖² = ½ Σ λ² c² e^{2λt}
    lam, q = torch.linalg.eigh(a)
    c = x0.reshape(3, D) @ q
    kinetic = 0.5 * (lam**2 * c**2 * torch.expm1(2 * lam * T) / (2 * lam)).sum(1)
    reg = block.last_regularizers
    assert torch.allclose(reg["kinetic"], kinetic, rtol=1e-8, atol=0)
    assert torch.allclose(reg["jacobian"], T * a.square().sum().expand(3), rtol=1e-8)
    assert torch.allclose(logdet, T * torch.trace(a).expand(3), rtol=1e-8)
    expected_z = x0.reshape(3, D) @ torch.linalg.matrix_exp(T * a).T
    assert torch.allclose(z.reshape(3, D), expected_z, rtol=0, atol=1e-8)
    assert kinetic.min() > 0.05  # not a vacuous comparison


@pytest.mark.parametrize(("t_data", "t_latent"), [(0.0, 1.0), (1.0, 0.0)])
def test_general_linear_field_either_direction(t_data: float, t_latent: float) -> None:
    a, x0 = _matrix(symmetric=False), _inputs()
    block = ODEFlow(
        LinearField(a),
        t_data,
        t_latent,
        SolverOptions("dopri5", **TIGHT),
        trace="exact",
    )
    with recording_regularizers(block):
        _, logdet = block.train()(x0)
    reg = block.last_regularizers
    kinetic = _kinetic_by_quadrature(a, x0.reshape(3, D), t_data, t_latent)
    span = abs(t_latent - t_data)
    assert (reg["kinetic"] > 0).all() and (reg["jacobian"] > 0).all()  # positive either way
    assert torch.allclose(reg["kinetic"], kinetic, rtol=1e-8, atol=0)
    assert torch.allclose(reg["jacobian"], span * a.square().sum().expand(3), rtol=1e-8)
    assert torch.allclose(logdet, (t_latent - t_data) * torch.trace(a).expand(3), rtol=1e-8)


def test_hutchinson_jacobian_norm_is_unbiased() -> None:
    a, draws = _matrix(symmetric=False), 4000
    block = CNF(1, lambda c: LinearField(a), SolverOptions(**TIGHT)).double()
    torch.manual_seed(0)
    with recording_regularizers(block):
        block.train()(_inputs(1).repeat(draws, 1, 1, 1))  # one probe per row
    estimates = block.last_regularizers["jacobian"].detach()
    standard_error = estimates.std() / draws**0.5
    assert estimates.std() > 0.1  # noisy: the check below is not vacuous
    assert (estimates.mean() - a.square().sum()).abs() < 4 * standard_error


def test_regularizers_only_in_training_and_only_when_asked() -> None:
    block = CNF(1, HIDDEN_8).double()
    perturb_parameters(block, 0.2)
    with torch.no_grad(), recording_regularizers(block) as blocks:
        block.eval()(_inputs())
    assert blocks == [block] and block.last_regularizers is None
    block.train()(_inputs())
    assert block.last_regularizers is None and not block.record_regularizers


def _tiny_ffjord(adjoint: bool = False, tolerance: float = 1e-6):
    torch.manual_seed(0)
    solver = SolverOptions(rtol=tolerance, atol=tolerance)
    block = functools.partial(CNF, adjoint=adjoint)
    model = ffjord((1, 4, 4), levels=1, depth=2, field=HIDDEN_8, solver=solver, block=block)
    model = model.double()
    perturb_parameters(model, 0.2)
    return model


def test_regularizers_change_the_loss_but_not_the_bpd() -> None:
    model = _tiny_ffjord()
    x = torch.randint(0, 256, (4, 1, 4, 4), dtype=torch.uint8)
    blocks = [m for m in model.modules() if isinstance(m, CNF)]
    assert len(blocks) == 2
    torch.manual_seed(5)
    plain = Likelihood()(model.train(), x)
    torch.manual_seed(5)  # the same dequantisation noise and Hutchinson probes
    regularized = RNODE(kinetic_weight=0.3, jacobian_weight=0.2)(model, x)
    assert set(plain.logs) == {"bpd", "prior_bpd", "logdet_bpd", "dequant_bpd", "nfe"}
    assert {"kinetic", "jacobian", "loss", "nfe"} <= set(regularized.logs)
    # the true bpd, and the solve itself (the regularisers do not steer the step size)
    for name in ("bpd", "prior_bpd", "logdet_bpd", "nfe"):
        assert torch.allclose(regularized.logs[name], plain.logs[name], rtol=1e-12), name
    assert torch.equal(plain.loss, plain.logs["bpd"])
    logs = regularized.logs
    expected = logs["bpd"] + 0.3 * logs["kinetic"] + 0.2 * logs["jacobian"]
    assert torch.allclose(regularized.loss, expected, rtol=1e-12)
    assert regularized.loss > plain.loss + 1e-3
    assert logs["nfe"] == sum(b.last_nfe for b in blocks) > 0
    # the penalty has gradients
    regularized.loss.backward()
    assert all(p.grad is not None for p in model.parameters())


def test_adjoint_gradients_of_the_regularized_loss_match_direct_backprop() -> None:
    grads = []
    for adjoint in (False, True):
        model = _tiny_ffjord(adjoint=adjoint, tolerance=1e-9)
        x = torch.randint(0, 256, (2, 1, 4, 4), generator=torch.Generator().manual_seed(2))
        torch.manual_seed(3)
        RNODE(0.1, 0.1)(model.train(), x.to(torch.uint8)).loss.backward()
        grads.append([p.grad for p in model.parameters()])
    for direct, adjoint in zip(*grads, strict=True):
        assert torch.allclose(direct, adjoint, atol=1e-7, rtol=1e-5)


@pytest.mark.parametrize("option", ["kinetic_weight", "jacobian_weight"])
def test_negative_weights_are_refused(option: str) -> None:
    with pytest.raises(ValueError, match=rf"objective\.{option}=-0.1 must be >= 0"):
        RNODE(**{option: -0.1})


def test_rnode_refuses_a_model_without_ode_blocks() -> None:
    with pytest.raises(ValueError, match=r"objective=rnode .* has none; use objective=likeli"):
        RNODE().check(glow((1, 8, 8), levels=1, depth=1, width=8))
    RNODE().check(_tiny_ffjord())


@pytest.mark.slow
def test_ffjord_rnode_trains_and_logs_its_regularizers(tmp_path: Path) -> None:
    overrides = [
        "model=ffjord_rnode",
        "model.depth=1",
        "model.field.hidden=8",
        "data.train_subset=256",
        "module.optimizer.lr=5e-3",
        "module.scheduler.warmup_steps=2",
    ]
    metrics, rows = train_briefly(tmp_path, overrides, steps=8)
    train_rows = [r for r in rows if r.get("train/loss")]
    assert len(train_rows) >= 6
    for row in train_rows[1:]:  # (step 0: fresh blocks are f ≡ 0, so K = J = 0)
        bpd, loss = float(row["train/bpd"]), float(row["train/loss"])
        kinetic, jacobian = float(row["train/kinetic"]), float(row["train/jacobian"])
        assert kinetic > 0 and jacobian > 0 and float(row["train/nfe"]) > 0
        assert math.isclose(loss, bpd + 0.01 * kinetic + 0.01 * jacobian, rel_tol=1e-5)
    val = [float(r["val/bpd"]) for r in rows if r.get("val/bpd")]
    assert val and 0 < val[-1] < 16 and 0 < metrics["test/bpd"] < 16
