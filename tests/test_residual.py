"""Invertible residual block: contraction, exact inverse, exact and unbiased logdets."""

from __future__ import annotations

import pytest
import torch

from glowlab.bijections.base import Sequential
from glowlab.bijections.residual import ResidualBlock, log_det_power_series
from glowlab.nets.lipschitz import SpectralNormConv2d
from tests.conftest import perturb_parameters

C, H, W, HIDDEN = 2, 4, 4, 8
D = C * H * W


def _block(scale: float = 0.3, **options) -> ResidualBlock:
    """A float64 block in eval mode with random parameters far from the identity init."""
    torch.manual_seed(0)
    block = ResidualBlock(C, HIDDEN, **options).double()
    perturb_parameters(block, scale)
    return block.eval()


def _aligned_block(**options) -> ResidualBlock:
    """A float64 block in eval mode whose ``g`` is close to ``0.6·x`` on inputs around 2.

    Random weights give ``‖J_g‖ ≈ 0.05–0.2``, where two series terms are already exact. Here
    each hidden channel copies an input channel (center taps, then summed back) and ``β ≈ 3``
    makes LipSwish nearly linear, so ``‖J_g‖ ≈ 0.6``: the inverse needs many iterations and
    the higher series terms matter. Every convolution is clipped by the normalisation.
    """
    torch.manual_seed(0)
    block = ResidualBlock(C, HIDDEN, **options).double()
    with torch.no_grad():
        first, middle, last = block.branch.convs
        for conv in (first, middle, last):
            conv.weight.zero_()
        for i in range(HIDDEN):
            first.weight[i, i % C, 1, 1] = 1
            middle.weight[i, i, 0, 0] = 1
            last.weight[i % C, i, 1, 1] = 1
        for activation in block.branch.activations:
            activation.raw_beta.fill_(3.0)
    perturb_parameters(block, 0.05)
    return block.eval()


def _inputs(batch: int = 3) -> torch.Tensor:
    gen = torch.Generator().manual_seed(1)
    return 2 + torch.randn(batch, C, H, W, dtype=torch.float64, generator=gen)


def _series_with_exact_traces(block: ResidualBlock, x: torch.Tensor, terms: int) -> torch.Tensor:
    """``Σ_{k≤terms} (−1)^{k+1} tr(J_g^k) / k`` for one sample ``x: (1, C, H, W)``: the power
    series with every basis vector as a probe, ``Σ_i e_iᵀ J^k e_i = tr(J^k)``."""
    copies = x.expand(D, -1, -1, -1).clone().requires_grad_(True)
    gx = block.branch(copies, block.branch.weights(H, W, update=False))

    def vjp(w: torch.Tensor) -> torch.Tensor:
        return torch.autograd.grad(gx, copies, w, retain_graph=True)[0]

    basis = torch.eye(D, dtype=torch.float64).view(D, C, H, W)
    return log_det_power_series(vjp, basis, [1.0] * terms).sum().detach()


def _block_jacobian(block: ResidualBlock, x: torch.Tensor) -> torch.Tensor:
    """The ``(D, D)`` Jacobian of ``z = block(x)`` for one sample ``x: (C, H, W)``."""
    return torch.autograd.functional.jacobian(
        lambda xi: block(xi.view(1, C, H, W))[0].reshape(-1), x.reshape(-1)
    )


def _conv_matrix(conv: SpectralNormConv2d, weight: torch.Tensor) -> torch.Tensor:
    """The convolution (without bias) on ``(C_in, H, W)`` inputs as a matrix."""
    shape = (1, conv.in_channels, H, W)
    return torch.autograd.functional.jacobian(
        lambda v: torch.nn.functional.conv2d(v.view(shape), weight, padding=conv.padding).reshape(
            -1
        ),
        torch.zeros(shape, dtype=weight.dtype).reshape(-1),
    )


def test_spectral_norm_is_the_norm_of_the_convolution_operator() -> None:
    torch.manual_seed(0)
    conv = SpectralNormConv2d(C, HIDDEN, 3, coeff=0.9, n_power_iterations=5).double()
    with torch.no_grad():
        conv.weight.mul_(10)
    true_sigma = torch.linalg.matrix_norm(_conv_matrix(conv, conv.weight.detach()), 2)
    reshaped_sigma = torch.linalg.matrix_norm(conv.weight.detach().reshape(HIDDEN, -1), 2)
    assert not torch.isclose(true_sigma, reshaped_sigma, rtol=0.05)  # a different quantity
    conv.normalized_weight(H, W, update=True)
    assert 0.99 * true_sigma < conv.sigma <= true_sigma * (1 + 1e-12)  # power iteration: below
    for _ in range(200):  # training steps keep iterating
        weight = conv.normalized_weight(H, W, update=True)
    assert torch.isclose(conv.sigma, true_sigma, rtol=1e-9)
    normalized = torch.linalg.matrix_norm(_conv_matrix(conv, weight.detach()), 2)
    assert torch.isclose(normalized, torch.tensor(0.9, dtype=torch.float64), rtol=1e-9)


@pytest.mark.parametrize("make_block", [lambda: _block(scale=1.0), _aligned_block])
def test_residual_branch_is_a_contraction(make_block) -> None:
    block = make_block()
    x = _inputs(1)
    block(x)  # a fresh module estimates σ once, even in eval mode
    assert all(conv.sigma > conv.coeff for conv in block.branch.convs)  # normalisation is active
    weights = block.branch.weights(H, W, update=False)
    jacobian = torch.autograd.functional.jacobian(
        lambda xi: block.branch(xi.view(1, C, H, W), weights).reshape(-1), x.reshape(-1)
    )
    lipschitz = torch.linalg.matrix_norm(jacobian, 2)
    assert 0.05 < lipschitz < 0.97**3 + 1e-6


@pytest.mark.parametrize("training", [False, True])
@pytest.mark.parametrize("make_block", [_block, _aligned_block])
def test_inverse_round_trip(make_block, training: bool) -> None:
    block = make_block().train(training)
    x = _inputs()
    z, logdet = block(x)
    assert z.shape == x.shape and logdet.shape == (x.shape[0],)
    assert not torch.allclose(z, x, atol=1e-2)
    assert torch.allclose(block.inverse(z), x, atol=1e-9, rtol=0)


@pytest.mark.parametrize("make_block", [_block, _aligned_block])
def test_exact_logdet_matches_brute_force_jacobian(make_block) -> None:
    block = make_block(logdet="exact")
    x = _inputs()
    z, logdet = block(x)
    assert logdet.abs().min() > 1e-2  # not the identity: the test is not vacuous
    for i in range(x.shape[0]):
        sign, expected = torch.linalg.slogdet(_block_jacobian(block, x[i]))
        assert sign > 0
        assert torch.allclose(logdet[i], expected, atol=1e-10), (logdet[i], expected)


def test_power_series_with_exact_traces_converges_to_the_logdet() -> None:
    block = _aligned_block(logdet="exact")
    x = _inputs(1)
    exact = block(x)[1][0].detach()
    errors = [(_series_with_exact_traces(block, x, n) - exact).abs() for n in (1, 2, 5, 80)]
    assert errors[0] > 1.0  # the higher terms matter for this block
    assert errors[0] > errors[1] > errors[2] > errors[3]
    assert errors[3] < 1e-10


def test_roulette_estimate_is_unbiased() -> None:
    block = _aligned_block(logdet="exact", eval_exact_terms=1, roulette_p=0.5)
    x = _inputs(1)
    exact = block(x)[1][0].detach()
    first_term_only = _series_with_exact_traces(block, x, 1)
    block.logdet = "roulette"
    copies = x.expand(20, -1, -1, -1)  # 20 Hutchinson probes share one roulette draw per call
    torch.manual_seed(0)
    with torch.no_grad():
        batch_means = torch.stack([block(copies)[1].mean() for _ in range(200)])
    mean, stderr = batch_means.mean(), batch_means.std() / 200**0.5
    assert 0 < stderr < 0.2 * (first_term_only - exact).abs()  # would see the higher terms
    assert (mean - exact).abs() < 4 * stderr, (mean, exact, stderr)


def test_series_estimate_is_close_and_a_fresh_block_is_the_identity() -> None:
    x = _inputs()
    fresh = ResidualBlock(C, HIDDEN).double().eval()
    z, logdet = fresh(x)
    assert torch.equal(z, x) and torch.equal(logdet, torch.zeros(3, dtype=torch.float64))
    expected = _aligned_block(logdet="exact")(x)[1].detach()
    series = _aligned_block(logdet="series", series_terms=40)
    torch.manual_seed(0)
    with torch.no_grad():
        estimates = torch.stack([series(x)[1] for _ in range(50)]).mean(dim=0)
    assert torch.allclose(estimates, expected, rtol=0.05)


def test_state_dict_round_trip_keeps_the_spectral_norm_estimates() -> None:
    block = _block(logdet="exact").train()
    x = _inputs()
    block(x)  # training forward: power iterations update the buffers
    block.eval()
    keys = block.state_dict().keys()
    assert "branch.convs.0.power_vector" in keys and "branch.convs.0.sigma" in keys
    loaded = ResidualBlock(C, HIDDEN, logdet="exact").double().eval()
    loaded.load_state_dict(block.state_dict())
    for mine, theirs in zip(block.buffers(), loaded.buffers(), strict=True):
        assert torch.equal(mine, theirs)
    z, logdet = block(x)
    z_loaded, logdet_loaded = loaded(x)
    assert torch.equal(z, z_loaded) and torch.equal(logdet, logdet_loaded)
    assert torch.allclose(loaded.inverse(z_loaded), x, atol=1e-9, rtol=0)


def test_eval_forward_does_not_update_the_estimates() -> None:
    block = _block()
    x = _inputs()
    block(x)
    before = [b.clone() for b in block.buffers()]
    block(x)
    assert all(torch.equal(a, b) for a, b in zip(before, block.buffers(), strict=True))
    block.train()(x)
    assert not all(torch.equal(a, b) for a, b in zip(before, block.buffers(), strict=True))


def test_a_new_input_size_restarts_the_estimates() -> None:
    block = _aligned_block()
    block(_inputs())
    x = 2 + torch.randn(2, C, 6, 6, dtype=torch.float64)
    z, _ = block(x)
    assert all(conv.power_vector.shape[2:] == (6, 6) for conv in block.branch.convs)
    assert torch.allclose(block.inverse(z), x, atol=1e-9, rtol=0)


def test_one_optimizer_step_on_the_roulette_loss() -> None:
    block = _block().train()
    x = _inputs()
    optimizer = torch.optim.SGD(block.parameters(), lr=1e-2)
    z, logdet = block(x)
    loss = (0.5 * z.pow(2).sum(dim=(1, 2, 3)) - logdet).mean()
    loss.backward()
    before = {name: p.detach().clone() for name, p in block.named_parameters()}
    for name, p in block.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().max() > 0, name
    optimizer.step()
    for name, p in block.named_parameters():
        assert not torch.equal(p, before[name]), name
    z, logdet = block(x)
    assert torch.isfinite(z).all() and torch.isfinite(logdet).all()


def test_inverse_warns_when_it_does_not_converge() -> None:
    block = _block(scale=1.0, max_inverse_iterations=1)
    z = block(_inputs())[0]
    with pytest.warns(RuntimeWarning, match="did not converge.*max_inverse_iterations=1"):
        block.inverse(z)


def test_bad_options_name_the_value() -> None:
    with pytest.raises(ValueError, match=r"logdet='trace'.*\['exact', 'roulette', 'series'\]"):
        ResidualBlock(C, HIDDEN, logdet="trace")
    with pytest.raises(ValueError, match=r"coeff=1\.0 must be in \(0, 1\)"):
        ResidualBlock(C, HIDDEN, coeff=1.0)
    with pytest.raises(ValueError, match="roulette_p=0 must be in"):
        ResidualBlock(C, HIDDEN, roulette_p=0)
    with pytest.raises(ValueError, match="exact_terms=0 must be > 0"):
        ResidualBlock(C, HIDDEN, exact_terms=0)
    with pytest.raises(ValueError, match="kernel_size=2 must be odd"):
        SpectralNormConv2d(C, C, 2, coeff=0.9, n_power_iterations=1)


def test_checkpointed_chain_gives_the_same_gradients() -> None:
    """The block inverts numerically: reversible backprop refuses it, checkpointing works."""
    with pytest.raises(ValueError, match="ResidualBlock"):
        Sequential([_block()], memory_saving="reversible")
    x = _inputs()
    grads = []
    for memory_saving in ("none", "checkpoint"):
        blocks = [_aligned_block(logdet="series", series_terms=3), _block(logdet="series")]
        chain = Sequential(blocks, memory_saving=memory_saving)
        torch.manual_seed(0)  # the same Hutchinson probes
        z, logdet = chain(x)
        (z.square().sum() - logdet.sum()).backward()
        grads.append([p.grad for p in chain.parameters()])
    for plain, saved in zip(*grads, strict=True):
        assert torch.allclose(plain, saved, atol=1e-12)
