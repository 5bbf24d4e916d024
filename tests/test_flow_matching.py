"""Flow matching as a glowlab flow: the exact-ODE log-likelihood against the brute-force
Jacobian of the solve, an unbiased Hutchinson estimate, encode/decode, the CFM loss, the
U-Net, the presets and a real training run."""

from __future__ import annotations

import functools
import math
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate

from glowlab.bijections.cnf import ODEFlow, SolverOptions, ode_blocks
from glowlab.models import MultiscaleFlow, glow
from glowlab.models.flow_matching import flow_matching
from glowlab.nets.unet import UNet
from glowlab.objectives import FlowMatching
from glowlab.sampling import configure_sampling, sampling_options
from glowlab.tools.loading import load_flow
from tests.conftest import compose_run, logged, perturb_parameters, train_briefly

SHAPE = (1, 2, 2)  # D = 4
TIGHT = {"rtol": 1e-9, "atol": 1e-9}


FIELD = functools.partial(UNet, width=8, channel_mults=(1, 2), blocks=1)


def _model(
    eval_trace: str = "exact", scale: float = 0.3, tolerance: float = 1e-9, **options
) -> MultiscaleFlow:
    """A float64 model on 1×2×2 images, its U-Net moved off the zero field."""
    torch.manual_seed(0)
    ode = functools.partial(ODEFlow, trace="exact", eval_trace=eval_trace)
    solver = SolverOptions(rtol=tolerance, atol=tolerance)
    model = flow_matching(SHAPE, FIELD, solver, ode=ode, **options).double()
    perturb_parameters(model, scale)
    return model.eval()


def _ode(model: MultiscaleFlow) -> ODEFlow:
    (ode,) = ode_blocks(model)
    return ode


def _images(batch: int = 3) -> torch.Tensor:
    gen = torch.Generator().manual_seed(1)
    return torch.randint(0, 256, (batch, *SHAPE), generator=gen).to(torch.uint8)


def _noise(batch: int = 3) -> torch.Tensor:
    gen = torch.Generator().manual_seed(2)
    return torch.rand(batch, *SHAPE, dtype=torch.float64, generator=gen)


def test_log_prob_matches_brute_force_jacobian_of_the_ode() -> None:
    model, x, u = _model(), _images(2), _noise(2)
    with torch.no_grad():
        log_prob = model.log_prob(x, noise=u)
    v = (x.double() + u) / 256
    h, preprocess_logdet = model.preprocess(v)
    ode = _ode(model)
    ode.eval_trace = "hutchinson"  # z does not depend on the trace; its graph is cheaper

    def flow_map(hi: torch.Tensor) -> torch.Tensor:
        return ode(hi.view(1, *SHAPE))[0].reshape(-1)

    for i in range(x.shape[0]):
        jac = torch.autograd.functional.jacobian(
            flow_map, h[i].detach().reshape(-1), vectorize=True
        )
        sign, logdet = torch.linalg.slogdet(jac)
        assert sign == 1 and logdet.abs() > 0.1  # orientation preserving, not the identity
        z = flow_map(h[i].detach()).detach()
        log_normal = -0.5 * (z.square().sum() + 4 * math.log(2 * math.pi))
        expected = log_normal + logdet + preprocess_logdet[i] - 4 * 8 * math.log(2)
        assert torch.allclose(log_prob[i], expected, atol=1e-7, rtol=0), (log_prob[i], expected)


def test_fresh_model_is_the_identity_flow() -> None:
    model = flow_matching(SHAPE, FIELD).double().eval()
    x, u = _images(), _noise()
    with torch.no_grad():
        out = model(x, noise=u)
    h, preprocess_logdet = model.preprocess((x.double() + u) / 256)
    assert torch.allclose(out.latents[0], h, atol=1e-12)
    assert torch.allclose(out.logdet, preprocess_logdet - 4 * 8 * math.log(2), atol=1e-12)


def test_hutchinson_log_prob_averages_to_the_exact_one() -> None:
    x, u, draws, loose = _images(1), _noise(1), 500, {"tolerance": 1e-7}
    with torch.no_grad():
        exact = _model("exact", **loose).log_prob(x, noise=u)
        estimates = _model("hutchinson", **loose).log_prob(
            x.repeat(draws, 1, 1, 1), noise=u.repeat(draws, 1, 1, 1)
        )  # one probe per row
    standard_error = estimates.std() / draws**0.5
    assert estimates.std() > 0.05  # a noisy estimator: the check is not vacuous
    assert (estimates.mean() - exact).abs() < 4 * standard_error


def test_encode_decode_round_trip_within_solver_tolerance() -> None:
    model, x = _model(), _images()
    with torch.no_grad():
        zs = model.encode(x)
        assert torch.equal(model.decode(zs), x)
        v = (x.double() + 0.5) / 256
        assert torch.allclose(model.invert(model.flow(v).latents), v, atol=1e-7, rtol=0)
        assert (zs[0] - model.preprocess(v)[0]).abs().max() > 0.1  # the ODE moved them


def test_sampling_uses_the_sample_solver() -> None:
    model = _model(sample_solver=SolverOptions("rk4", step_size=0.125))
    torch.manual_seed(0)
    samples = model.sample(5, temperature=0.7)
    assert samples.shape == (5, *SHAPE) and samples.dtype == torch.uint8
    assert _ode(model).last_nfe == 4 * 8  # rk4: 4 evaluations per step, 1 / 0.125 steps
    eps = model.latent_noise(5, seed=3)
    with torch.no_grad():
        z0 = model.sample(5, temperature=1.0, eps=eps)
        assert torch.equal(z0, model.sample(5, temperature=1.0, eps=eps))  # deterministic ODE


def test_the_sample_solver_is_a_sampling_option() -> None:
    model = _model()
    assert sampling_options(model) == {
        "sample_solver": "dopri5",
        "sample_rtol": 1e-9,
        "sample_atol": 1e-9,
        "sample_step_size": None,
    }
    configure_sampling(model, sample_solver="euler", sample_step_size=0.25)
    model.sample(2)
    assert _ode(model).last_nfe == 4  # euler: 1 / 0.25 steps
    assert _ode(model).solver.solver == "dopri5"  # the likelihood's solve is unchanged
    configure_sampling(model, sample_solver="bosh3")  # adaptive: the fixed step is dropped
    assert sampling_options(model)["sample_step_size"] is None
    with pytest.raises(ValueError, match=r"no sampling option 'inversion'; its options are: s"):
        configure_sampling(model, inversion="jacobi")
    with pytest.raises(ValueError, match=r"sample_solver='rk4' takes fixed steps: pass sample_"):
        configure_sampling(model, sample_solver="rk4")


def test_cfm_loss_equals_a_direct_computation() -> None:
    model, objective = _model(), FlowMatching(sigma_min=0.01)
    gen = torch.Generator().manual_seed(4)
    x1 = torch.randn(3, *SHAPE, dtype=torch.float64, generator=gen)
    x0 = torch.randn(3, *SHAPE, dtype=torch.float64, generator=gen)
    t = torch.tensor([0.1, 0.5, 0.9], dtype=torch.float64)
    velocity = _ode(model).dynamics
    loss = objective.loss(velocity, x1, x0, t)
    expected = 0.0
    for i in range(3):
        xt = (1 - 0.99 * t[i]) * x0[i] + t[i] * x1[i]
        target = x1[i] - 0.99 * x0[i]
        v = velocity(t[i : i + 1], xt[None])[0]
        expected += (v - target).square().sum() / (3 * 4)
    assert torch.allclose(loss, expected, rtol=1e-12) and loss > 0.1


def test_objective_is_the_cfm_loss_of_its_draws() -> None:
    model, x, flow_matching_objective = _model().train(), _images(), FlowMatching()
    torch.manual_seed(6)
    objective = flow_matching_objective(model, x)
    torch.manual_seed(6)  # the same draws, in the documented order: u, x0, t
    u = torch.rand(x.shape, dtype=torch.float64)
    x1, _ = model.preprocess((x.double() + u) / 256)
    x0 = torch.randn_like(x1)
    t = torch.rand(3, dtype=torch.float64)
    assert set(objective.logs) == {"fm_loss"}
    velocity = _ode(model).dynamics
    assert torch.equal(objective.loss, flow_matching_objective.loss(velocity, x1, x0, t))
    assert _ode(model).last_nfe == 0  # no ODE solve in training
    objective.loss.backward()
    assert all(p.grad is not None for p in velocity.parameters())


def test_unet_is_per_sample_class_conditional_and_any_size() -> None:
    torch.manual_seed(0)
    net = UNet(
        1, width=8, channel_mults=(1, 2, 2), blocks=1, attention_levels=(1,), num_classes=3
    ).double()
    perturb_parameters(net, 0.2)
    x = torch.randn(2, 1, 7, 5, dtype=torch.float64)  # odd sizes: 7×5 → 4×3 → 2×2 and back
    t, y = torch.tensor([0.2, 0.8], dtype=torch.float64), torch.tensor([0, 2])
    out = net(t, x, y)
    assert out.shape == x.shape
    assert torch.allclose(net(t[:1], x[:1], y[:1]), out[:1], atol=1e-12)  # per sample
    assert (net(t, x, torch.tensor([1, 1])) - out).abs().max() > 1e-3  # the label matters
    assert (net(t.flip(0), x, y) - out).abs().max() > 1e-3  # the time matters
    fresh = UNet(1, width=8, channel_mults=(1, 2), blocks=1)
    assert torch.equal(fresh(torch.tensor(0.5), x.float()), torch.zeros_like(x.float()))


def test_class_conditional_model_needs_labels() -> None:
    model = flow_matching(SHAPE, FIELD, num_classes=3)
    y = torch.tensor([0, 1, 2])
    assert FlowMatching()(model, _images(), y).loss > 0
    with pytest.raises(ValueError, match="labels|y"):
        FlowMatching()(model, _images())


def _unet(**options):
    return functools.partial(UNet, **{"width": 8, **options})


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: SolverOptions("euler"), r"solver='euler' takes fixed steps: pass step_size"),
        (lambda: SolverOptions(step_size=0.1), r"step_size=0.1 is only for the fixed-step"),
        (lambda: SolverOptions(rtol=0.0), r"rtol=0.0 must be > 0"),
        (lambda: flow_matching(SHAPE, ode=functools.partial(ODEFlow, eval_trace="none")), "eval"),
        (lambda: flow_matching(SHAPE, label_dropout=0.1, num_classes=3), r"no null class"),
        (lambda: FlowMatching(sigma_min=1.0), r"sigma_min=1.0 must be in \[0, 1\)"),
        (lambda: flow_matching(SHAPE, _unet(channel_mults=[])), r"channel_mults=\[\] needs one"),
        (lambda: flow_matching(SHAPE, _unet(attention_levels=[3])), r"\[3\] must be level i"),
        (
            lambda: flow_matching(SHAPE, _unet(width=12, heads=5, attention_levels=[0])),
            r"heads=5 must divide the 12",
        ),
        (lambda: flow_matching(SHAPE, _unet(dropout=1.0)), r"dropout=1.0 must be in \[0, 1\)"),
        (lambda: flow_matching(SHAPE, levels=2), r"flow_matching\(\) has no option 'levels'"),
    ],
)
def test_bad_options_name_the_option(build, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        build()


@pytest.mark.parametrize(
    ("model", "message"),
    [
        (lambda: glow((1, 4, 4), levels=1, depth=1, width=8), r"this model is not one: use mod"),
        (lambda: flow_matching(SHAPE, FIELD, prior="learned"), r"this model is not one"),
        (lambda: flow_matching(SHAPE, FIELD, dequantization="variational"), r"uniformly deq"),
    ],
)
def test_the_objective_refuses_a_model_it_cannot_train(model, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        FlowMatching().check(model())


def test_paper_preset_has_the_papers_size() -> None:
    cfg = compose_run(Path("/tmp"), ["model=fm_paper"])
    model = instantiate(cfg.model, image_shape=[3, 32, 32], n_bits=8)
    FlowMatching().check(model)
    params = sum(p.numel() for p in model.parameters())
    assert abs(params - 35.7e6) < 0.1e6, params  # Lipman et al. 2023: 35.7M
    assert _ode(model).solver.rtol == _ode(model).solver.atol == 1e-5
    assert _ode(model).sample_solver is _ode(model).solver


@pytest.mark.slow
def test_fm_logs_its_regression_loss_and_validates_by_true_bpd(tmp_path: Path) -> None:
    """One epoch (16 steps): train/fm_loss is logged and no train/bpd (no likelihood in
    training), val and test report the true bpd (its training curve and the tools on its
    checkpoint: tests/test_families.py)."""
    overrides = ["model=fm", "model.field.width=8", "model.solver.rtol=1e-3"]
    overrides += ["model.solver.atol=1e-3"]
    overrides += ["data.eval_batch_size=16", "module.scheduler.warmup_steps=2"]
    metrics, rows = train_briefly(tmp_path, overrides, steps=16)
    assert len(logged(rows, "train/fm_loss")) >= 15
    assert not logged(rows, "train/bpd")  # no likelihood is computed in training
    val = logged(rows, "val/bpd")
    assert val and 0 < val[-1] < 16 and 0 < metrics["test/bpd"] < 16
    FlowMatching().check(load_flow(metrics["best_checkpoint"])[0])
