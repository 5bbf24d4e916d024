"""Whole models: exact logdet, round trips, the bpd definition, sampling, bad inputs."""

from __future__ import annotations

import dataclasses
import functools
import math
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from glowlab.bijections import ActNorm, Sequential, Shift, Squeeze
from glowlab.bijections.cnf import CNF, SolverOptions
from glowlab.models import Level, MultiscaleFlow, ffjord, glow, maf, nice, realnvp, resflow
from glowlab.models.assembly import assemble
from glowlab.models.options import ModelOptions
from glowlab.models.parts import DequantizationChoice, PriorChoice
from glowlab.nets.conditioners import FlowPPConditioner
from glowlab.nets.dynamics import ConcatConvDynamics
from glowlab.priors import LearnedPrior, StandardNormal
from glowlab.transforms import Affine, LogisticMixture, Spline
from tests.conftest import model_config_shape, perturb_parameters, shrunk

CONF = Path(__file__).resolve().parents[1] / "glowlab" / "conf"

TINY = {
    "glow": lambda **kw: glow((1, 8, 8), levels=2, depth=2, width=8, **kw),
    "glow_checkerboard_additive": lambda **kw: glow(
        (1, 8, 8),
        levels=2,
        depth=2,
        width=8,
        mask="checkerboard",
        transform="additive",
        permutation="conv1x1",
        **kw,
    ),
    "glow_logit_standard": lambda **kw: glow(
        (2, 4, 4),
        levels=2,
        depth=1,
        width=8,
        prior="standard",
        preprocess="logit",
        permutation="shuffle",
        transform=functools.partial(Affine, scale="exp_tanh"),
        **kw,
    ),
    "glow_spline_checkerboard": lambda **kw: glow(
        (1, 8, 8),
        levels=2,
        depth=2,
        width=8,
        transform=functools.partial(Spline, bins=4),
        mask="checkerboard",
        **kw,
    ),
    "flowpp_planar_prior": lambda **kw: glow(
        (1, 8, 8),
        levels=2,
        depth=1,
        transform=functools.partial(LogisticMixture, components=3),
        conditioner=functools.partial(FlowPPConditioner, hidden=8, blocks=1, heads=2),
        mask="checkerboard",
        prior="planar",
        dequantization=DequantizationChoice("variational", width=8, depth=2),
        **kw,
    ),
    "resflow": lambda **kw: resflow((1, 8, 8), levels=2, depth=1, width=8, logdet="exact", **kw),
    "ffjord": lambda **kw: ffjord(
        (1, 4, 4),
        levels=1,
        depth=1,
        field=functools.partial(ConcatConvDynamics, hidden=4),
        solver=SolverOptions(rtol=1e-10, atol=1e-10),
        block=functools.partial(CNF, trace="exact", eval_trace="exact"),
        **kw,
    ),
    "maf": lambda **kw: maf((1, 8, 8), levels=2, depth=2, width=8, **kw),
    "iaf": lambda **kw: maf((1, 4, 4), levels=2, depth=2, width=8, direction="iaf", **kw),
    "realnvp": lambda **kw: realnvp((1, 8, 8), levels=2, depth=1, width=8, blocks=1, **kw),
    "nice": lambda **kw: nice((1, 8, 8), levels=2, depth=2, width=8, mask="checkerboard", **kw),
}


def _prepared(name: str, **kwargs) -> MultiscaleFlow:
    torch.manual_seed(0)
    model = TINY[name](**kwargs).double().train()
    c, h, w = model.image_shape
    with torch.no_grad():
        y = torch.zeros(16, dtype=torch.long) if model.num_classes else None
        model(torch.randint(0, 256, (16, c, h, w)), y)  # ActNorm init
    perturb_parameters(model, 0.05)
    return model.eval()


@pytest.mark.parametrize("name", sorted(TINY))
def test_model_logdet_matches_brute_force_jacobian(name: str) -> None:
    model = _prepared(name)
    shape = model.image_shape
    v = torch.rand(2, *shape, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    logdet = model.flow(v).logdet

    def to_latents(flat: torch.Tensor) -> torch.Tensor:
        zs = model.flow(flat.view(1, *shape)).latents
        return torch.cat([z.reshape(-1) for z in zs])

    for i in range(v.shape[0]):
        jac = torch.autograd.functional.jacobian(to_latents, v[i].reshape(-1))
        assert jac.shape == (model.dims, model.dims)
        expected = torch.linalg.slogdet(jac)[1]
        atol = 1e-5 if name == "ffjord" else 1e-7  # ffjord: an ODE solve to 1e-10 tolerances
        assert torch.allclose(logdet[i], expected, atol=atol), (name, logdet[i], expected)


@pytest.mark.parametrize("name", sorted(TINY))
def test_encode_decode_round_trip_and_gradients(name: str) -> None:
    model = _prepared(name)
    x = torch.randint(0, 256, (4, *model.image_shape), dtype=torch.uint8)
    assert torch.equal(model.decode(model.encode(x)), x)
    noise = torch.rand(4, *model.image_shape, dtype=torch.float64)
    assert torch.equal(model.decode(model.encode(x, noise=noise)), x)
    model.train()
    model.bits_per_dim(x).mean().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing, missing


def test_round_trip_on_real_fashion_mnist(fmnist_images: torch.Tensor) -> None:
    torch.manual_seed(0)
    model = glow((1, 28, 28), levels=2, depth=2, width=16).train()
    x = fmnist_images[:32]
    with torch.no_grad():
        model(x)
    perturb_parameters(model, 0.02)
    model.eval()
    with torch.no_grad():
        assert torch.equal(model.decode(model.encode(x)), x)
        bpd = model.bits_per_dim(x)
    assert bpd.shape == (32,) and torch.isfinite(bpd).all()


def test_bits_per_dim_known_answer() -> None:
    """Identity flow + standard normal: bpd is computable by hand."""
    shape = (1, 2, 2)
    model = MultiscaleFlow(shape, Shift(), [Level(Sequential([]), StandardNormal(), shape, False)])
    model.double()
    x = torch.tensor([[[[0, 255], [128, 7]]]], dtype=torch.uint8)
    u = torch.tensor([[[[0.5, 0.25], [0.0, 0.9]]]], dtype=torch.float64)
    z = (x.double() + u) / 256 - 0.5
    log_density = (-0.5 * z**2 - 0.5 * math.log(2 * math.pi)).sum()
    expected_bpd = -(log_density - 4 * 8 * math.log(2)) / (4 * math.log(2))
    assert abs(model.bits_per_dim(x, noise=u).item() - expected_bpd.item()) < 1e-6
    # 8 bits for the rescaling to [0, 1) plus about -log2 N(0; 0, 1) = 1.33 bits per pixel
    assert abs(expected_bpd.item() - 9.4547) < 1e-4


def test_five_bit_data_pays_five_bits_per_dim() -> None:
    shape = (1, 2, 2)
    model = MultiscaleFlow(
        shape, Shift(), [Level(Sequential([]), StandardNormal(), shape, False)], n_bits=5
    ).double()
    x = torch.full((1, *shape), 16, dtype=torch.uint8)
    z = (16 + 0.5) / 32 - 0.5
    expected = -(4 * (-0.5 * z**2 - 0.5 * math.log(2 * math.pi)) - 4 * 5 * math.log(2))
    expected /= 4 * math.log(2)
    assert abs(model.bits_per_dim(x, noise=0.5).item() - expected) < 1e-6
    with pytest.raises(ValueError, match=r"\[0, 31\] for n_bits=5"):
        model.log_prob(torch.full((1, *shape), 32, dtype=torch.uint8))


def test_actnorm_state_dict_round_trip_gives_identical_log_prob(fmnist_images) -> None:
    torch.manual_seed(0)
    model = glow((1, 28, 28), levels=2, depth=2, width=16).train()
    x = fmnist_images[:16]
    model(x)  # initialise
    model.eval()
    reference = model.log_prob(x, noise=0.5)
    clone = glow((1, 28, 28), levels=2, depth=2, width=16)
    clone.load_state_dict(model.state_dict())
    clone.train()
    clone(fmnist_images[100:116] // 2)  # would re-initialise a fresh ActNorm
    clone.eval()
    assert torch.equal(clone.log_prob(x, noise=0.5), reference)


def test_sampling_shapes_temperature_and_mode() -> None:
    model = _prepared("glow").float()
    images = model.sample(5, temperature=0.7)
    assert images.shape == (5, 1, 8, 8) and images.dtype == torch.uint8
    mode_a, mode_b = model.sample(3, temperature=0.0), model.sample(3, temperature=0.0)
    assert torch.equal(mode_a, mode_b)
    eps = [torch.randn(3, *s) for s in model.latent_shapes]
    assert torch.equal(model.sample(3, 0.0, eps=eps), mode_a)
    assert not torch.equal(model.sample(3, 1.0, eps=eps), mode_a)
    with pytest.raises(ValueError, match="temperature"):
        model.sample(2, temperature=-0.1)


def test_class_conditional_prior_needs_labels() -> None:
    model = _prepared("glow", num_classes=3).float()
    x = torch.randint(0, 256, (2, 1, 8, 8))
    with pytest.raises(ValueError, match="pass y=labels"):
        model.log_prob(x)
    with pytest.raises(ValueError, match=r"class indices in \[0, 3\)"):
        model.log_prob(x, y=torch.tensor([0, 3]))
    assert model.log_prob(x, y=torch.tensor([0, 2])).shape == (2,)
    assert model.sample(2, y=torch.tensor([1, 1])).shape == (2, 1, 8, 8)


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: glow((1, 28, 28), levels=3), r"28×28 is not divisible by 2\*\*3 = 8"),
        (lambda: realnvp((3, 30, 30), levels=3), r"not divisible by 2\*\*2 = 4"),
        (lambda: glow((1, 8, 8), permutation="random"), r"permutation='random'.*'lu'"),
        (lambda: glow((1, 8, 8), prior="laplace"), r"prior='laplace'.*'learned', 'standard'"),
        (lambda: glow((1, 8, 8), preprocess="none"), r"preprocess='none'"),
        (lambda: glow((1, 8, 8), n_bits=0), r"n_bits=0 must be an integer in 1..8"),
        (lambda: nice((1, 8, 8), depth=0), r"depth=0 must be an integer >= 1"),
        (lambda: realnvp((1, 8, 8), conditioner="mlp"), r"conditioner='mlp'"),
        (lambda: glow((1, 8, 8), dequantization="dither"), r"dequantization='dither'"),
        (lambda: glow((1, 8, 8), prior="planar", num_classes=3), r"planar.*not class-cond"),
        (lambda: maf((1, 8, 8), label_dropout=0.1), r"label_dropout=0.1 needs a class-cond"),
        (lambda: nice((1, 8, 8), labels="blocks"), r"nice\(\) puts class labels in its prior"),
        (lambda: realnvp((1, 8, 8), memory_saving="all"), r"memory_saving='all'"),
        (
            lambda: glow((1, 8, 8), dequantization="gaussian", preprocess="logit"),
            r"gaussian.*set model.preprocess=shift",
        ),
        (lambda: glow((1, 8, 8), conditioner="flowpp", width=6), r"heads=4.*divide hidden=6"),
        (lambda: resflow((1, 8, 8), memory_saving="reversible"), r"use memory_saving='checkp"),
        (lambda: maf((1, 8, 8), direction="left"), r"direction='left'"),
        (lambda: ffjord((1, 8, 8), solver=SolverOptions("magic")), r"solver='magic'"),
    ],
)
def test_bad_model_options_are_named(build, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        build()


def test_an_unknown_option_is_named_with_the_valid_ones() -> None:
    with pytest.raises(ValueError, match=r"^glow\(\) has no option 'levles' \(did you mean 'le"):
        glow((1, 8, 8), levles=2)
    with pytest.raises(ValueError, match=r"'levels'\?\); its own options are levels, depth, tr"):
        glow((1, 8, 8), levles=2)
    with pytest.raises(ValueError, match=r"the shared ones n_bits, preprocess, logit_alpha"):
        maf((1, 8, 8), colour=True)


def test_shared_options_are_one_checked_object() -> None:
    options = ModelOptions(prior="planar", dequantization="variational", num_classes=0)
    assert options.prior == PriorChoice("planar") and options.dequantization.kind == "variational"
    assert options.num_classes is None and options.prior_classes is None
    with pytest.raises(dataclasses.FrozenInstanceError):
        options.n_bits = 5  # type: ignore[misc]
    blocks = ModelOptions(num_classes=3, label_dropout=0.1, labels="blocks", prior="planar")
    assert (blocks.num_classes, blocks.prior_classes) == (3, None)
    with pytest.raises(ValueError, match=r"labels='y' is not supported"):
        ModelOptions(labels="y")


@pytest.mark.parametrize("labels", ["prior", "blocks"])
def test_labels_go_to_the_prior_or_to_the_layers(labels: str) -> None:
    """The model gets its classes and label dropout when built (nothing is set afterwards);
    only labels="prior" makes the (learned) top prior class-conditional."""
    options = ModelOptions(n_bits=5, num_classes=3, label_dropout=0.25, labels=labels)
    model = assemble((1, 8, 8), [([Squeeze(), ActNorm(4)], (4, 4, 4))], options)
    assert (model.n_bits, model.num_classes, model.label_dropout) == (5, 3, 0.25)
    top = model.levels[-1].prior
    assert isinstance(top, LearnedPrior)
    conditional = labels == "prior"
    assert (top.num_classes, top.label_dropout) == ((3, 0.25) if conditional else (None, 0.0))


def test_bad_images_are_named() -> None:
    model = glow((1, 8, 8), levels=2, depth=1, width=8)
    with pytest.raises(ValueError, match=r"shape \(B, 1, 8, 8\), got \(2, 3, 8, 8\)"):
        model.log_prob(torch.zeros(2, 3, 8, 8, dtype=torch.uint8))
    with pytest.raises(ValueError, match="non-integer"):
        model.log_prob(torch.full((2, 1, 8, 8), 0.5))
    with pytest.raises(ValueError, match=r"\[0, 255\]"):
        model.log_prob(torch.full((2, 1, 8, 8), 256))
    with pytest.raises(ValueError, match=r"\[0, 255\]"):
        model.log_prob(torch.full((2, 1, 8, 8), -1))


@pytest.mark.parametrize("name", sorted(p.stem for p in (CONF / "model").glob("*.yaml")))
def test_model_configs_instantiate(name: str) -> None:
    with initialize_config_dir(str(CONF), version_base="1.3"):  # presets may pick an objective
        cfg = compose(config_name="train", overrides=[f"model={name}"]).model
    shape = model_config_shape(name)
    overrides = shrunk(cfg) if shape[0] == 3 else {}  # paper sizes: small, same layout
    model = instantiate(cfg, image_shape=shape, **overrides)
    assert isinstance(model, MultiscaleFlow) and model.image_shape == shape
    x = torch.randint(0, 256, (2, *shape))
    assert model.bits_per_dim(x).shape == (2,)
