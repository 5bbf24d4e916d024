"""TarFlow blocks, Jet's ViT couplings and their recipes: exact inverses and logdets (float64,
brute-force Jacobians), causality, Jacobi inversion, guidance, presets, and a short training."""

from __future__ import annotations

import functools

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.utils import instantiate

from glowlab.bijections import Coupling, Patchify, Sequential, TarFlowBlock
from glowlab.models import MultiscaleFlow, jet, tarflow
from glowlab.nets.transformer import ViTConditioner, patchify, unpatchify
from glowlab.sampling import configure_sampling, sampling_options, sampling_report
from glowlab.transforms import transform_factory
from tests.conftest import CONF, perturb_parameters

SHAPE = (2, 4, 4)  # patch 2: T = 4 tokens of D = 8 values
TOKENS = 4

BLOCKS = {
    "affine": {},
    "affine_reversed": {"reverse": True},
    "affine_exp_scale": {"transform": transform_factory("affine", scale="exp", centred=True)},
    "class_conditional": {"num_classes": 3, "label_dropout": 0.1},
    "class_conditional_reversed": {"num_classes": 3, "reverse": True},
    "spline": {"transform": transform_factory("spline", bins=4)},
    "spline_reversed": {"transform": "spline", "reverse": True},
}
vit = functools.partial(ViTConditioner, width=16, depth=1, heads=2)
COUPLINGS = {
    "vit_channel": lambda: Coupling(2, vit, "channel", tarflow_affine_plain(), parity=0),
    "vit_channel_parity1_patch2": lambda: Coupling(
        2, functools.partial(vit, patch_size=2), "channel", tarflow_affine_plain(), parity=1
    ),
    "vit_checkerboard": lambda: Coupling(2, vit, "checkerboard", tarflow_affine_plain()),
    "vit_stripe_spline": lambda: Coupling(
        2, vit, "stripe", transform_factory("spline", bins=4), parity=1
    ),
    "patchify_then_vit_channel": lambda: Sequential(
        [Patchify(2), Coupling(8, vit, "channel", tarflow_affine_plain())]
    ),
}


def tarflow_affine_plain():
    return transform_factory("affine", scale="soft_clamp")


def tarflow_blocks(model: torch.nn.Module) -> list[TarFlowBlock]:
    return [m for m in model.modules() if isinstance(m, TarFlowBlock)]


def _block_factory(**options):
    return functools.partial(TarFlowBlock, **{"patch_size": 2, "heads": 2, **options})


def _labels(layer: torch.nn.Module, n: int) -> torch.Tensor | None:
    return torch.arange(n) % 3 if getattr(layer, "num_classes", None) else None


def _block(name: str, **kwargs) -> TarFlowBlock:
    torch.manual_seed(0)
    options = {**BLOCKS[name], **kwargs}
    block = TarFlowBlock(SHAPE, patch_size=2, width=16, layers=2, heads=2, **options).double()
    perturb_parameters(block, 0.1)
    return block.eval()


def _coupling(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    layer = COUPLINGS[name]().double()
    perturb_parameters(layer, 0.1)
    return layer.eval()


def _check_exact(layer: torch.nn.Module, y: torch.Tensor | None) -> None:
    """Round trip to 1e-10, logdet = slogdet of the brute-force Jacobian, not the identity."""
    x = torch.randn(3, *SHAPE, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    z, logdet = layer(x, y)
    assert z.numel() == x.numel() and logdet.shape == (3,)
    assert (z.reshape(-1) - x.reshape(-1)).abs().max() > 1e-2, "should not be the identity"
    assert torch.allclose(layer.inverse(z, y), x, atol=1e-10, rtol=0)
    for i in range(3):
        yi = None if y is None else y[i : i + 1]

        def f(flat: torch.Tensor, yi=yi) -> torch.Tensor:
            return layer(flat.view(1, *SHAPE), yi)[0].reshape(-1)

        jac = torch.autograd.functional.jacobian(f, x[i].reshape(-1))
        expected = torch.linalg.slogdet(jac)[1]
        assert torch.allclose(logdet[i], expected, atol=1e-9), (logdet[i], expected)


@pytest.mark.parametrize("name", sorted(BLOCKS))
def test_tarflow_block_is_exact(name: str) -> None:
    block = _block(name)
    _check_exact(block, _labels(block, 3))


@pytest.mark.parametrize("name", sorted(COUPLINGS))
def test_jet_coupling_with_vit_conditioner_is_exact(name: str) -> None:
    _check_exact(_coupling(name), None)


def test_fresh_layers_start_as_the_identity() -> None:
    x = torch.randn(2, *SHAPE, dtype=torch.float64)
    for layer in (
        TarFlowBlock(SHAPE, 2, 16, 1, 2, num_classes=3).double(),
        Coupling(2, vit, "stripe", tarflow_affine_plain()).double(),
    ):
        z, logdet = layer(x, torch.tensor([0, 2]))
        assert torch.equal(z, x) and torch.equal(logdet, torch.zeros(2, dtype=torch.float64))


def test_patchify_round_trip_and_layout() -> None:
    x = torch.arange(2 * 8 * 12, dtype=torch.float64).view(1, 2, 8, 12)
    tokens = patchify(x, 4)  # (1, 6, 32)
    assert tokens.shape == (1, 6, 32)
    assert torch.equal(tokens[0, 1, :16], x[0, 0, 0:4, 4:8].reshape(-1))  # token (0, 1), c = 0
    assert torch.equal(unpatchify(tokens, 4, (2, 8, 12)), x)
    z, logdet = Patchify(4)(x)
    assert z.shape == (1, 32, 2, 3) and torch.equal(logdet, torch.zeros(1, dtype=x.dtype))
    assert torch.equal(Patchify(4).inverse(z), x)


@pytest.mark.parametrize("reverse", [False, True])
def test_jacobian_is_block_triangular_in_token_order(reverse: bool) -> None:
    """dz_t/dx_s = 0 for s after t (in the block's order), each diagonal block is diagonal
    (elementwise), the first token passes unchanged, and later tokens do see earlier ones."""
    block = _block("affine", reverse=reverse)
    d = block.dim
    x_tokens = block._tokens(torch.randn(1, *SHAPE, dtype=torch.float64))  # (1, T, D)

    def f(flat: torch.Tensor) -> torch.Tensor:
        z = block(block._image(flat.view(1, TOKENS, d)))[0]
        return block._tokens(z).reshape(-1)

    jac = torch.autograd.functional.jacobian(f, x_tokens.reshape(-1)).view(TOKENS, d, TOKENS, d)
    for t in range(TOKENS):
        for s in range(TOKENS):
            part = jac[t, :, s, :]
            if s > t:
                assert torch.equal(part, torch.zeros_like(part)), (t, s)
            elif s == t:
                assert torch.equal(part, torch.diag(torch.diagonal(part))), t
            else:
                assert part.abs().max() > 1e-4, (t, s)
    assert torch.equal(jac[0, :, 0, :], torch.eye(d, dtype=torch.float64))


@pytest.mark.parametrize("name", ["affine", "class_conditional_reversed", "spline"])
def test_jacobi_inverse_matches_the_sequential_one(name: str) -> None:
    block = _block(name)
    y = _labels(block, 3)
    x = torch.randn(3, *SHAPE, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    z, _ = block(x, y)
    sequential = block.inverse(z, y)
    block.inversion, block.jacobi_tolerance = "jacobi", 1e-9
    jacobi = block.inverse(z, y)
    assert torch.allclose(jacobi, sequential, atol=1e-6, rtol=0)
    assert 1 <= block.last_jacobi_iterations <= TOKENS
    assert not block.exact_inverse
    block.jacobi_tolerance = 0.0  # never converged by the rule: stops at T, exact anyway
    assert torch.allclose(block.inverse(z, y), sequential, atol=1e-10, rtol=0)
    assert block.last_jacobi_iterations == TOKENS
    block.jacobi_max_iterations = 1  # one pass: only the first token is right
    assert not torch.allclose(block.inverse(z, y), sequential, atol=1e-3)
    assert block.last_jacobi_iterations == 1


def test_guidance_combines_conditional_and_null_parameters() -> None:
    """Sampling uses θ_c + w·(θ_c − θ_∅): checked against the parameters computed by hand,
    token by token, and the Jacobi inverse agrees with the sequential one under guidance."""
    w = 1.5
    block = _block("class_conditional", guidance=w)
    y = torch.tensor([0, 1, 2])
    null = torch.full_like(y, 3)
    z = torch.randn(3, *SHAPE, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    guided = block.inverse(z, y)

    z_tokens = block._tokens(z)  # (B, T, D)
    x_tokens = torch.zeros_like(z_tokens)
    for t in range(TOKENS):  # token t's parameters depend on the (already found) tokens < t
        raw_c, raw_u = block._raw(x_tokens, y), block._raw(x_tokens, null)
        params = block._params(raw_c + w * (raw_c - raw_u))  # (B, D, T, P)
        x_t = block.transform.inverse(z_tokens.transpose(1, 2), params)[:, :, t]
        x_tokens[:, t] = x_t
    assert torch.allclose(guided, block._image(x_tokens), atol=1e-10, rtol=0)

    block.guidance = 0.0
    unguided = block.inverse(z, y)
    assert (unguided - guided).abs().max() > 1e-3
    assert torch.allclose(block(unguided, y)[0], z, atol=1e-10)  # w = 0: the true inverse
    block.guidance, block.inversion, block.jacobi_tolerance = w, "jacobi", 1e-10
    assert torch.allclose(block.inverse(z, y), guided, atol=1e-6, rtol=0)


def test_label_dropout_is_one_draw_per_image_for_all_blocks() -> None:
    """In training the model drops each label once: every block sees the same label, so each
    image's logdet is the fully conditional or the fully unconditional one, never a mix."""
    torch.manual_seed(0)
    block = _block_factory(layers=1, width=16)
    model = tarflow(SHAPE, blocks=3, block=block, num_classes=3, label_dropout=0.5).double()
    perturb_parameters(model, 0.1)
    x = torch.randint(0, 256, (64, *SHAPE))
    y = torch.arange(64) % 3
    noise = torch.full(x.shape, 0.5, dtype=torch.float64)
    with torch.no_grad():
        conditional = model.eval()(x, y, noise).logdet
        unconditional = model(x, None, noise).logdet  # y=None: the null class
        torch.manual_seed(5)
        dropped = model.train()(x, y, noise).logdet
    is_conditional = torch.isclose(dropped, conditional, rtol=0, atol=1e-9)
    is_null = torch.isclose(dropped, unconditional, rtol=0, atol=1e-9)
    assert bool((is_conditional | is_null).all())
    assert 10 < int(is_null.sum()) < 54 and int(is_conditional.sum()) > 10
    assert not model.levels[0].transform.layers[0].exact_inverse  # random forward


def test_bf16_transformer_keeps_transform_and_logdet_in_fp32() -> None:
    torch.manual_seed(0)
    block = TarFlowBlock(SHAPE, 2, 16, 2, 2)
    perturb_parameters(block, 0.1)
    x = torch.randn(4, *SHAPE)
    z32, logdet32 = block(x)
    block.bf16 = True
    z16, logdet16 = block(x)
    assert z16.dtype == logdet16.dtype == torch.float32
    assert torch.allclose(z16, z32, atol=0.1) and not torch.equal(z16, z32)
    assert torch.allclose(logdet16, logdet32, atol=0.2)
    assert not block.exact_inverse
    assert torch.allclose(block.inverse(z16), x, atol=0.1)


def test_reversible_memory_saving_refuses_jacobi_blocks() -> None:
    exact = TarFlowBlock(SHAPE, 2, 16, 1, 2)
    assert exact.exact_inverse and Sequential([exact], "reversible").exact_inverse
    numerical = TarFlowBlock(SHAPE, 2, 16, 1, 2, inversion="jacobi")
    with pytest.raises(ValueError, match="use memory_saving='checkpoint'"):
        Sequential([numerical], "reversible")


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: TarFlowBlock((1, 6, 6), patch_size=4), r"patch_size=4 does not divide the 6×6"),
        (lambda: TarFlowBlock(SHAPE, 2, width=30, heads=4), r"heads=4 must divide width=30"),
        (lambda: TarFlowBlock(SHAPE, 2, inversion="parallel"), r"inversion='parallel'"),
        (lambda: TarFlowBlock(SHAPE, 2, label_dropout=0.1), r"label_dropout and guidance need"),
        (lambda: TarFlowBlock(SHAPE, 2, num_classes=3, label_dropout=1.0), r"\[0, 1\)"),
        (lambda: TarFlowBlock(SHAPE, 2, jacobi_max_iterations=0), r"jacobi_max_iterations=0"),
        (lambda: TarFlowBlock(SHAPE, 4), r"patch_size=4 makes the 4×4 image a single token"),
        (lambda: tarflow((1, 8, 8), levels=2), r"tarflow\(\) has no option 'levels'.*blocks"),
        (lambda: jet((1, 8, 8), patch_size=3), r"patch_size=3 does not divide"),
        (lambda: jet((1, 8, 8), patch_size=1), r"even patch_size or channel_couplings=0"),
        (
            lambda: configure_sampling(tarflow((1, 8, 8), 1, _block_factory()), guidance=1.0),
            "no sampling option 'guidance'; its options are: inversion, jacobi_max_",
        ),
        (
            lambda: configure_sampling(tarflow((1, 8, 8), 1, _block_factory()), inversion="x"),
            r"inversion='x'",
        ),
    ],
)
def test_bad_options_are_named(build, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        build()


def test_bad_labels_are_named() -> None:
    block = TarFlowBlock(SHAPE, 2, 16, 1, 2, num_classes=3)
    with pytest.raises(ValueError, match=r"class indices in \[0, 3\)"):
        block(torch.randn(2, *SHAPE), torch.tensor([0, 3]))


# ------------------------------------------------------------------ whole models
MODELS = {
    "tarflow": lambda: tarflow((1, 8, 8), 2, _block_factory(layers=1, width=16)),
    "tarflow_spline_logit_classes": lambda: tarflow(
        (1, 4, 4),
        blocks=3,
        block=_block_factory(layers=1, width=16),
        transform=transform_factory("spline", bins=4),
        num_classes=3,
        label_dropout=0.1,
        preprocess="logit",
    ),
    "jet": lambda: jet((1, 8, 8), patch_size=2, couplings=5, conditioner=vit),
}


def _model(name: str) -> MultiscaleFlow:
    torch.manual_seed(0)
    model = MODELS[name]().double()
    perturb_parameters(model, 0.05)
    return model.eval()


@pytest.mark.parametrize("name", sorted(MODELS))
def test_model_logdet_round_trip_gradients_and_samples(name: str) -> None:
    model = _model(name)
    shape, n = model.image_shape, 3
    y = torch.arange(n) % 3 if model.num_classes else None
    v = torch.rand(n, *shape, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    logdet = model.flow(v, y).logdet
    for i in range(n):
        yi = None if y is None else y[i : i + 1]

        def to_latents(flat: torch.Tensor, yi=yi) -> torch.Tensor:
            return torch.cat([z.reshape(-1) for z in model.flow(flat.view(1, *shape), yi).latents])

        jac = torch.autograd.functional.jacobian(to_latents, v[i].reshape(-1))
        assert torch.allclose(logdet[i], torch.linalg.slogdet(jac)[1], atol=1e-7)

    x = torch.randint(0, 256, (n, *shape), dtype=torch.uint8)
    assert model.log_prob(x, y).shape == (n,)
    assert torch.equal(model.decode(model.encode(x, y), y), x)
    model.train()
    model.bits_per_dim(x, y).mean().backward()
    missing = [k for k, p in model.named_parameters() if p.grad is None]
    assert not missing, missing
    model.eval()
    samples = model.sample(4, temperature=0.7, y=None if y is None else torch.arange(4) % 3)
    assert samples.shape == (4, *shape) and samples.dtype == torch.uint8


def test_model_jacobi_sampling_matches_sequential_and_guidance_changes_samples() -> None:
    model = _model("tarflow_spline_logit_classes")
    y = torch.tensor([0, 1, 2, 0])
    eps = model.latent_noise(4, seed=7)
    eps = [e.double() for e in eps]
    sequential = model.sample(4, 1.0, y=y, eps=eps)
    options = configure_sampling(model, inversion="jacobi", jacobi_tolerance=1e-10)
    assert options == sampling_options(model)
    assert options["inversion"] == "jacobi" and options["guidance"] == 0.0
    blocks = tarflow_blocks(model)
    assert len(blocks) == 3 and all(b.jacobi_tolerance == 1e-10 for b in blocks)
    assert torch.equal(model.sample(4, 1.0, y=y, eps=eps), sequential)
    iterations = sampling_report(model)["jacobi_iterations"]
    assert iterations == [b.last_jacobi_iterations for b in blocks]
    assert all(1 <= n <= b.tokens for n, b in zip(iterations, blocks, strict=True))
    configure_sampling(model, inversion="sequential", guidance=3.0)
    assert not torch.equal(model.sample(4, 1.0, y=y, eps=eps), sequential)
    assert sampling_report(model) == {}  # a sequential inverse does no iterations


@pytest.mark.parametrize(
    ("name", "small", "paper"),
    [
        ("tarflow", {}, None),
        ("tarflow_paper", {"blocks": 1, "block": {"layers": 1}}, (2, 8, 8, 768, 12)),
        ("jet", {}, None),
        ("jet_paper", {"couplings": 2}, (4, 32, 2, 512, 8)),
    ],
)
def test_presets_build_from_config(name: str, small: dict, paper) -> None:
    GlobalHydra.instance().clear()
    with initialize_config_dir(str(CONF / "model"), version_base="1.3"):
        cfg = compose(config_name=name)
    if paper is not None:  # the paper's sizes are in the preset; built narrower here
        if "tarflow" in name:
            b = cfg.block
            assert (b.patch_size, cfg.blocks, b.layers, b.width, b.heads) == paper
        else:
            n = cfg.conditioner
            assert (cfg.patch_size, cfg.couplings, n.depth, n.width, n.heads) == paper
    model = instantiate(cfg, image_shape=(1, 28, 28), **small)
    assert isinstance(model, MultiscaleFlow) and model.image_shape == (1, 28, 28)
    x = torch.randint(0, 256, (2, 1, 28, 28))
    assert model.bits_per_dim(x).shape == (2,)
    if "tarflow" in name:
        assert all(b.transform.centred for b in tarflow_blocks(model))
