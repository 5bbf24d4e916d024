"""Numerical robustness of Glow at paper width (512) with Adam and no learning-rate warm-up.

Adam moves every weight by about ``lr`` per step whatever its gradient, so a step moves the
output ``h = Σ_j w_j x_j`` of a coupling's zero-initialised readout (``9·width`` inputs, made
unit-scale by the conditioner's ActNorms) by up to ``lr · Σ_j |x_j|``: 0.18 per step at width
512 and lr 1e-4, in every coupling at once. Before ``ZeroConv2d.step_scale`` that blew the
bpd up on the second step (8.2 → 13.4 at 3×8×8, L=2, K=32; 8.25 → 50,070 at CIFAR size).
"""

from __future__ import annotations

import torch

import glowlab
from glowlab.nets.conditioners import ZeroConv2d, readout_step_scale


def _adam_trajectory(
    shape: tuple[int, int, int], levels: int, depth: int, batch: int, steps: int
) -> list[float]:
    """peerbench's protocol: seed 0, one fixed batch of uniform integer images, ActNorm init
    by one no-grad training-mode forward, Adam lr 1e-4 without warm-up, fresh dequantisation
    noise each step. Returns the mean bpd before the first update and after each update."""
    torch.manual_seed(0)
    model = glowlab.glow(shape, levels=levels, depth=depth, width=512)
    gen = torch.Generator().manual_seed(1234)
    x = torch.randint(0, 256, (batch, *shape), generator=gen, dtype=torch.uint8)
    model.train()
    with torch.no_grad():
        model.bits_per_dim(x)  # ActNorm's data-dependent initialisation
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    trajectory = []
    for _ in range(steps):
        loss = model.bits_per_dim(x).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        trajectory.append(loss.item())
    return trajectory


def test_glow_at_width_512_trains_without_warm_up_and_without_a_spike() -> None:
    # Before the fix: [8.194, 7.978, 8.826, 7.837, 8.266, 8.072, ...] (a +0.63 bpd spike).
    with torch.random.fork_rng():
        trajectory = _adam_trajectory((3, 8, 8), levels=2, depth=16, batch=16, steps=10)
    start = trajectory[0]
    assert all(torch.isfinite(torch.tensor(trajectory))), trajectory
    assert max(trajectory) <= start + 0.05, f"bpd rose above its start {start:.3f}: {trajectory}"
    assert trajectory[-1] < start - 0.1, f"bpd did not fall: {trajectory}"


def test_readout_step_scale_is_one_up_to_127_channels_then_halves_per_doubling() -> None:
    scales = {c: readout_step_scale(c) for c in (1, 5, 63, 64, 96, 127, 128, 255, 256, 512, 1024)}
    assert scales == {
        1: 1.0, 5: 1.0, 63: 1.0, 64: 1.0, 96: 1.0, 127: 1.0,
        128: 0.5, 255: 0.5, 256: 0.25, 512: 0.125, 1024: 0.0625,
    }  # fmt: skip
    assert float(ZeroConv2d(512, 4).step_scale) == 0.125
    assert float(ZeroConv2d(64, 4).step_scale) == 1.0


def test_zero_conv_applies_step_scale_times_exp_3_logs_times_its_weight() -> None:
    torch.manual_seed(0)
    layer = ZeroConv2d(256, 6).double()
    with torch.no_grad():
        for parameter in layer.parameters():
            parameter.normal_(0, 0.3)
    x = torch.randn(2, 256, 5, 5, dtype=torch.float64)
    scale = torch.exp(3 * layer.logs)
    expected = torch.nn.functional.conv2d(x, 0.25 * layer.conv.weight, padding=1) * scale
    expected = expected + layer.conv.bias.view(1, -1, 1, 1) * scale
    assert torch.allclose(layer(x), expected, atol=1e-12)


def test_adam_step_on_the_zero_conv_output_no_longer_grows_with_the_width() -> None:
    """One Adam step on a fresh readout, with a gradient that pushes every output up (the
    sign-coherent case): the output moves by ``lr · α · Σ|x|``, about the same at width 64
    and width 512 (was 8× larger at 512)."""
    moves = {}
    for width in (64, 512):
        torch.manual_seed(0)
        layer = ZeroConv2d(width, 2)
        x = torch.relu(torch.randn(4, width, 6, 6))  # unit-scale pre-activations, as ActNorm
        optimizer = torch.optim.Adam(layer.parameters(), lr=1e-4)
        (-layer(x).sum()).backward()
        optimizer.step()
        with torch.no_grad():
            moves[width] = layer(x)[:, :, 1:-1, 1:-1].mean().item()  # interior: 9 taps
    assert moves[64] > 0 and moves[512] > 0
    assert 0.5 < moves[512] / moves[64] < 2.0, moves


def test_old_state_dicts_without_step_scale_load_to_the_same_function() -> None:
    """A state dict from before ``step_scale`` (``conv.weight`` = the applied weight) loads,
    strictly and without ``_metadata`` (as ``glowlab.tools.loading`` passes it), to bitwise
    the same outputs; a current one round-trips unchanged."""
    torch.manual_seed(0)
    model = glowlab.glow((3, 8, 8), levels=2, depth=1, width=256)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.01 * torch.randn_like(parameter))
    x = torch.randint(0, 256, (3, 3, 8, 8), dtype=torch.uint8)
    noise = torch.rand(x.shape, generator=torch.Generator().manual_seed(1))
    model.eval()
    expected = model.bits_per_dim(x, noise=noise)
    old = {}
    for key, value in model.state_dict().items():
        if key.endswith("step_scale"):
            continue
        module_key = key.removesuffix(".conv.weight")
        if module_key != key and module_key + ".step_scale" in model.state_dict():
            value = value * model.state_dict()[module_key + ".step_scale"]
        old[key] = value.clone()
    assert any(model.state_dict()[k].ne(1).all() for k in model.state_dict() if "step" in k)
    for state in (old, dict(model.state_dict())):
        torch.manual_seed(1)
        fresh = glowlab.glow((3, 8, 8), levels=2, depth=1, width=256).eval()
        fresh.load_state_dict(state)
        assert torch.equal(fresh.bits_per_dim(x, noise=noise), expected)
        pairs = zip(fresh.state_dict().values(), model.state_dict().values(), strict=True)
        assert all(torch.equal(a, b) for a, b in pairs)
