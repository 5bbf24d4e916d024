"""Fast paths: memory-saving backprop, bf16 conditioners, channels_last — same results."""

from __future__ import annotations

import pytest
import torch

from glowlab.bijections import Sequential, Shift, Squeeze
from glowlab.compilation import compile_levels
from glowlab.models import glow, nice, realnvp
from glowlab.nets.conditioners import ActNormConv2d, ZeroConv2d
from glowlab.profiling import saved_activation_bytes
from tests.conftest import perturb_parameters

BUILDERS = {
    "glow": lambda **kw: glow((1, 8, 8), levels=2, depth=3, width=8, **kw),
    "realnvp": lambda **kw: realnvp((1, 8, 8), levels=2, depth=1, width=8, blocks=1, **kw),
    "nice": lambda **kw: nice((1, 8, 8), levels=2, depth=2, width=8, **kw),
}


def _pair(name: str, memory_saving: str = "reversible"):
    """The same float64 model twice, ordinary and memory-saving, ActNorm initialised."""
    torch.manual_seed(0)
    plain = BUILDERS[name]().double().train()
    x = torch.randint(0, 256, (8, 1, 8, 8))
    with torch.no_grad():
        plain(x)
    perturb_parameters(plain, 0.05)
    saving = BUILDERS[name](memory_saving=memory_saving).double().train()
    saving.load_state_dict(plain.state_dict())
    return plain, saving, x


@pytest.mark.parametrize("mode", ["reversible", "checkpoint"])
@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_memory_saving_gradients_equal_ordinary_backprop(name: str, mode: str) -> None:
    plain, saving, x = _pair(name, mode)
    noise = torch.rand(x.shape, dtype=torch.float64)
    losses = []
    for model in (plain, saving):
        loss = model.bits_per_dim(x, noise=noise).mean()
        loss.backward()
        losses.append(loss.detach())
    assert torch.allclose(losses[0], losses[1], atol=1e-12)
    for (n, p), q in zip(plain.named_parameters(), saving.parameters(), strict=True):
        assert p.grad is not None and q.grad is not None, n
        assert torch.allclose(p.grad, q.grad, atol=1e-5, rtol=1e-5), n
        assert torch.allclose(p.grad, q.grad, atol=1e-9), n  # float64: far tighter in fact


def test_memory_saving_keeps_activation_memory_flat_in_depth() -> None:
    x = torch.randint(0, 256, (16, 1, 16, 16))

    def saved(depth: int, memory_saving: str) -> int:
        torch.manual_seed(0)
        model = glow((1, 16, 16), levels=2, depth=depth, width=32, memory_saving=memory_saving)
        return saved_activation_bytes(lambda: model.bits_per_dim(x).mean())

    plain_growth = saved(8, "none") - saved(2, "none")
    assert plain_growth > 0
    for mode in ("reversible", "checkpoint"):  # checkpoint keeps each level's input only
        assert saved(8, mode) - saved(2, mode) < 0.05 * plain_growth, mode
        assert saved(8, mode) < 0.2 * saved(8, "none"), mode


def test_reversible_mode_refuses_layers_without_an_exact_inverse() -> None:
    class Numerical(Shift):
        exact_inverse = False

    with pytest.raises(ValueError, match=r"\['Numerical'\] invert numerically.*'checkpoint'"):
        Sequential([Squeeze(), Numerical()], memory_saving="reversible")
    assert not Sequential([Numerical()], memory_saving="checkpoint").exact_inverse
    with pytest.raises(ValueError, match="memory_saving=True is not supported"):
        Sequential([Squeeze()], memory_saving=True)


def test_bf16_conditioners_match_fp32_bpd_and_stay_invertible() -> None:
    torch.manual_seed(0)
    fp32 = glow((1, 16, 16), levels=2, depth=2, width=32).train()
    x = torch.randint(0, 256, (16, 1, 16, 16))
    with torch.no_grad():
        fp32(x)
    perturb_parameters(fp32, 0.02)
    bf16 = glow((1, 16, 16), levels=2, depth=2, width=32, bf16_conditioner=True)
    bf16.load_state_dict(fp32.state_dict())
    fp32.eval(), bf16.eval()
    with torch.no_grad():
        gap = (fp32.bits_per_dim(x, noise=0.5) - bf16.bits_per_dim(x, noise=0.5)).abs().max()
        assert gap < 0.01
        assert torch.equal(bf16.decode(bf16.encode(x)), x.to(torch.uint8))
    bf16.train()
    bf16.bits_per_dim(x).mean().backward()
    assert all(p.grad is not None for p in bf16.parameters())


def test_channels_last_gives_the_same_bpd_and_round_trip() -> None:
    plain, _, x = _pair("glow")
    nhwc = BUILDERS["glow"]().double()
    nhwc.load_state_dict(plain.state_dict())
    nhwc.to(memory_format=torch.channels_last)
    plain.eval(), nhwc.eval()
    with torch.no_grad():
        assert torch.allclose(plain.log_prob(x, noise=0.5), nhwc.log_prob(x, noise=0.5))
        assert torch.equal(nhwc.decode(nhwc.encode(x)), x.to(torch.uint8))


def test_compiled_levels_give_the_same_bpd_and_gradients() -> None:
    """Dynamo + AOT autograd trace the flow steps (``aot_eager``: no C++ build in the test)."""
    plain, _, x = _pair("glow")
    compiled = BUILDERS["glow"]().double().train()
    compiled.load_state_dict(plain.state_dict())
    assert compile_levels(compiled, backend="aot_eager")
    noise = torch.rand(x.shape, dtype=torch.float64)
    for model in (plain, compiled):
        model.bits_per_dim(x, noise=noise).mean().backward()
    assert torch.allclose(
        plain.bits_per_dim(x, noise=noise), compiled.bits_per_dim(x, noise=noise)
    )
    for p, q in zip(plain.parameters(), compiled.parameters(), strict=True):
        assert torch.allclose(p.grad, q.grad, atol=1e-10)
    assert list(compiled.state_dict()) == list(plain.state_dict())  # checkpoints unchanged


def test_compile_falls_back_to_eager_where_unsupported(monkeypatch) -> None:
    monkeypatch.setattr(torch._dynamo, "is_dynamo_supported", lambda: False)
    model = BUILDERS["nice"]()
    with pytest.warns(UserWarning, match="running eagerly"):
        assert not compile_levels(model)
    with pytest.raises(ValueError, match="compile mode='fast'"):
        compile_levels(model, mode="fast")


def test_folded_actnorm_convolutions_equal_the_unfolded_layers() -> None:
    """``ActNormConv2d``/``ZeroConv2d`` scale the weights, not the outputs: same numbers."""
    torch.manual_seed(0)
    x = torch.randn(8, 3, 6, 6, dtype=torch.float64)
    layer = ActNormConv2d(3, 5, 3).double().train()
    y = layer(x)  # data-dependent init: zero mean, unit variance per channel
    assert torch.allclose(y.mean(dim=(0, 2, 3)), torch.zeros(5, dtype=y.dtype), atol=1e-12)
    assert torch.allclose(y.std(dim=(0, 2, 3), unbiased=False), torch.ones(5, dtype=y.dtype))
    zero = ZeroConv2d(5, 4).double()
    perturb_parameters(layer, 0.3)
    perturb_parameters(zero, 0.3)
    unfolded = (layer.conv(x) + layer.norm.bias) * torch.exp(layer.norm.log_scale)
    assert torch.allclose(layer(x), unfolded, atol=1e-12)
    assert torch.allclose(zero(y), zero.conv(y) * torch.exp(3 * zero.logs), atol=1e-12)
