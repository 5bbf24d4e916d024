"""Classifier-free guidance: label dropout trains the null class, w = 0 is conditional
sampling, w > 0 moves the class log-likelihood ratio as the closed form says, and the same
mechanism reaches TarFlow blocks."""

from __future__ import annotations

import functools

import pytest
import torch

import glowlab
from glowlab.bijections.tarflow import TarFlowBlock
from glowlab.objectives import Likelihood
from glowlab.priors import LearnedPrior, gaussian_log_prob
from glowlab.sampling import configure_sampling, guidance, guided_parts

CLASSES = 3


def _model(label_dropout: float = 0.5):
    torch.manual_seed(0)
    return glowlab.glow(
        image_shape=(1, 8, 8),
        levels=2,
        depth=1,
        width=8,
        num_classes=CLASSES,
        label_dropout=label_dropout,
    )


def _top(model) -> LearnedPrior:
    return model.levels[-1].prior


def test_label_dropout_trains_the_null_class() -> None:
    model = _model(0.5)
    top = _top(model)
    assert top.class_embedding.num_embeddings == CLASSES + 1 and top.null_class == CLASSES
    assert _top(_model(0.0)).class_embedding.num_embeddings == CLASSES  # old layout kept
    x = torch.randint(0, 256, (32, 1, 8, 8), dtype=torch.uint8)
    y = torch.arange(32) % CLASSES
    model.train()
    Likelihood()(model, x, y).loss.backward()
    assert top.class_embedding.weight.grad[CLASSES].abs().sum() > 0  # the null row learns
    model.zero_grad()
    model.eval()  # no dropout in evaluation: the null row gets no gradient
    Likelihood()(model, x, y).loss.backward()
    assert top.class_embedding.weight.grad[CLASSES].abs().sum() == 0
    # y=None is the unconditional model: the null class
    null = torch.full((32,), CLASSES)
    torch.testing.assert_close(
        model.flow(x.float() / 256, None).log_prob, model.flow(x.float() / 256, null).log_prob
    )
    with pytest.raises(ValueError, match=r"label_dropout=0.3 needs a class-conditional model"):
        glowlab.glow(image_shape=(1, 8, 8), levels=2, depth=1, label_dropout=0.3)


def _shift_embeddings(model, seed: int = 1) -> None:
    """Move the class means away from the null mean (equal log-scales for all classes)."""
    gen = torch.Generator().manual_seed(seed)
    weight = _top(model).class_embedding.weight
    with torch.no_grad():
        channels = weight.shape[1] // 2
        weight[:, :channels] = torch.randn(weight.shape[0], channels, generator=gen)
        weight[:, channels:] = 0.0


def test_zero_guidance_is_conditional_sampling_and_weights_are_restored() -> None:
    model = _model().eval()
    _shift_embeddings(model)
    y = torch.tensor([0, 1, 2, 1])
    eps = model.latent_noise(4, seed=5)
    plain = model.sample_continuous(4, 0.8, y=y, eps=eps)
    torch.testing.assert_close(
        model.sample_continuous(4, 0.8, y=y, eps=eps, guidance=0.0), plain, rtol=0, atol=0
    )
    guided = model.sample_continuous(4, 0.8, y=y, eps=eps, guidance=2.0)
    assert not torch.allclose(guided, plain)
    assert _top(model).guidance == 0.0  # put back after the call
    # guidance acts on the top prior only: w shifts its mean by w·(μ_y − μ_∅), i.e. the
    # top noise by w·(μ_y − μ_∅) / (T·σ_y)
    top = _top(model)
    shape = model.levels[-1].latent_shape
    mean_y, log_scale = top.params(shape, None, y)
    mean_null, _ = top.params(shape, None, None)
    shifted = [*eps[:-1], eps[-1] + 2.0 * (mean_y - mean_null) / (0.8 * torch.exp(log_scale))]
    torch.testing.assert_close(
        guided, model.sample_continuous(4, 0.8, y=y, eps=shifted), rtol=1e-4, atol=1e-5
    )


def test_guidance_raises_the_class_log_likelihood_ratio_as_the_closed_form() -> None:
    """With equal scales σ, z = μ_∅ + (1 + w)δ at T = 0 gives
    log p(z|y) − log p(z|∅) = (1 + 2w)·Σ δ² / (2σ²), δ = μ_y − μ_∅."""
    model = _model().eval()
    _shift_embeddings(model)
    top = _top(model)
    shape = model.levels[-1].latent_shape
    y = torch.tensor([0, 1, 2])
    mean_y, log_scale = top.params(shape, None, y)
    mean_null, _ = top.params(shape, None, None)
    delta2 = ((mean_y - mean_null) ** 2 / (2 * torch.exp(2 * log_scale))).flatten(1).sum(1)
    ratios = []
    for w in (0.0, 1.0, 3.0):
        with guidance(model, w):
            z = top.sample(3, shape, y=y, temperature=0.0)
        ratio = gaussian_log_prob(z, mean_y, log_scale) - gaussian_log_prob(
            z, mean_null, log_scale
        )
        torch.testing.assert_close(ratio, (1 + 2 * w) * delta2)
        ratios.append(ratio)
    assert bool((ratios[0] < ratios[1]).all() and (ratios[1] < ratios[2]).all())


def test_guidance_needs_a_model_trained_with_label_dropout() -> None:
    with pytest.raises(ValueError, match="needs a class-conditional model trained with label"):
        _model(0.0).sample(2, y=torch.tensor([0, 1]), guidance=1.0)
    unconditional = glowlab.glow(image_shape=(1, 8, 8), levels=2, depth=1, width=8)
    unconditional.sample(2, guidance=0.0)  # w = 0 is always allowed
    with pytest.raises(ValueError, match="guidance="):
        unconditional.sample(2, guidance=2.0)
    from glowlab.tools.sample import sample_grids

    model = _model().eval()
    _shift_embeddings(model)
    grids = sample_grids(model, n=2, temperatures=[0.0], y=1, guidance=0.0)
    guided = sample_grids(model, n=2, temperatures=[0.0], y=1, guidance=4.0)
    assert torch.equal(grids[0.0], sample_grids(model, n=2, temperatures=[0.0], y=1)[0.0])
    assert not torch.equal(grids[0.0], guided[0.0])
    with pytest.raises(ValueError, match="guidance='a' must be a number"):
        sample_grids(model, n=2, temperatures=[0.0], guidance="a")


def test_the_same_mechanism_reaches_tarflow_blocks() -> None:
    torch.manual_seed(0)
    model = glowlab.tarflow(
        image_shape=(1, 8, 8),
        blocks=2,
        block=functools.partial(TarFlowBlock, patch_size=4, layers=1, width=16, heads=2),
        num_classes=CLASSES,
        label_dropout=0.1,
        preprocess="shift",
    ).eval()
    blocks = [m for m in model.modules() if isinstance(m, TarFlowBlock)]
    assert set(map(id, guided_parts(model))) == set(map(id, blocks))
    for block in blocks:
        torch.nn.init.normal_(block.class_embedding.weight)
        torch.nn.init.normal_(block.out.weight, std=0.1)
    y = torch.tensor([0, 2])
    eps = model.latent_noise(2, seed=1)
    guided = model.sample_continuous(2, 1.0, y=y, eps=eps, guidance=1.5)
    assert all(block.guidance == 0.0 for block in blocks)
    configure_sampling(model, guidance=1.5)
    torch.testing.assert_close(guided, model.sample_continuous(2, 1.0, y=y, eps=eps))
    configure_sampling(model, guidance=0.0)
    assert not torch.allclose(guided, model.sample_continuous(2, 1.0, y=y, eps=eps))
