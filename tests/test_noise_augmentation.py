"""Gaussian noise augmentation (``model/dequantization=gaussian``) and Tweedie denoising: the
noisy density against a direct computation, its own name everywhere, refused combinations,
and the denoiser against the closed-form posterior mean of a Gaussian model."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest
import torch
from torch import Tensor
from torch.distributions import Normal

import glowlab
from glowlab.bijections.base import Sequential
from glowlab.bijections.elementwise import DiagonalScale, Shift
from glowlab.models.multiscale import Level, MultiscaleFlow
from glowlab.models.parts import DequantizationChoice
from glowlab.objectives import Likelihood
from glowlab.priors import LearnedPrior
from glowlab.report import collect, markdown
from glowlab.tools.evaluate import evaluate
from glowlab.tools.loading import build_datamodule, load_flow
from glowlab.tools.sample import sample_grids
from glowlab.train import train
from tests.conftest import TINY_RUN, compose_run

SHAPE = (2, 4, 4)
GAUSSIAN = DequantizationChoice("gaussian", sigma=0.1)


def _gaussian_flow(sigma: float | None) -> tuple[MultiscaleFlow, Tensor, Tensor]:
    """``v ~ N(loc, scale²)`` per pixel on the [0, 1) scale: Shift → DiagonalScale(s) →
    learned prior N(m, e^{2ℓ}); returns the flow and ``loc``, ``scale`` ``(C, H, W)``."""
    gen = torch.Generator().manual_seed(0)
    scale_layer = DiagonalScale(SHAPE)
    prior = LearnedPrior(SHAPE[0])
    with torch.no_grad():
        scale_layer.log_scale.copy_(0.3 * torch.randn(SHAPE, generator=gen) + 2.0)
        prior.mean.copy_(torch.randn(prior.mean.shape, generator=gen))
        prior.log_scale.copy_(0.2 * torch.randn(prior.log_scale.shape, generator=gen))
    level = Level(Sequential([scale_layer]), prior, SHAPE, factor_out=False)
    flow = MultiscaleFlow(SHAPE, Shift(), [level], n_bits=8, noise_sigma=sigma).double()
    s = scale_layer.log_scale.detach().double()
    loc = 0.5 + prior.mean.detach().double()[0] * torch.exp(-s)
    scale = torch.exp(prior.log_scale.detach().double()[0] - s)
    return flow.eval(), loc, scale


def test_noisy_log_density_equals_a_direct_computation() -> None:
    """``noisy_bpd = −log p(y) / (D ln 2)`` of ``y = x + ½ + 256·(σ/2)·ε`` in pixel units."""
    sigma = 0.1
    flow, loc, scale = _gaussian_flow(sigma)
    gen = torch.Generator().manual_seed(1)
    x = torch.randint(0, 256, (5, *SHAPE), generator=gen, dtype=torch.uint8)
    u = torch.rand((5, *SHAPE), generator=gen, dtype=torch.float64)
    eps = torch.special.ndtri(u)
    y_pixels = x.double() + 0.5 + 256 * (sigma / 2) * eps
    # the density of v = y / 256 is N(loc, scale²); in pixel units it is N(256 loc, (256 scale)²)
    log_p = Normal(256 * loc, 256 * scale).log_prob(y_pixels).flatten(1).sum(1)
    dims = math.prod(SHAPE)
    parts = flow.bpd_parts(x, noise=u)
    assert set(parts) == {"noisy_bpd", "noisy_prior_bpd", "noisy_logdet_bpd"}
    torch.testing.assert_close(parts["noisy_bpd"], -log_p / (dims * math.log(2)))
    torch.testing.assert_close(
        parts["noisy_prior_bpd"] + parts["noisy_logdet_bpd"], parts["noisy_bpd"]
    )
    assert flow.metric_name == "noisy_bpd"
    # noise = 0.5 is ε = 0: the bin centres
    centred = flow.bpd_parts(x, noise=0.5)["noisy_bpd"]
    log_c = Normal(256 * loc, 256 * scale).log_prob(x.double() + 0.5).flatten(1).sum(1)
    torch.testing.assert_close(centred, -log_c / (dims * math.log(2)))


def test_uniform_models_keep_the_discrete_names() -> None:
    model = glowlab.glow(image_shape=(1, 8, 8), levels=2, depth=1, width=8)
    x = torch.randint(0, 256, (2, 1, 8, 8), dtype=torch.uint8)
    assert model.metric_name == "bpd"
    assert set(model.bpd_parts(x)) == {"bpd", "prior_bpd", "logdet_bpd", "dequant_bpd"}
    noisy = glowlab.glow(
        image_shape=(1, 8, 8), levels=2, depth=1, width=8, dequantization=GAUSSIAN
    )
    objective = Likelihood()(noisy, x)
    assert set(objective.logs) == {"noisy_bpd", "noisy_prior_bpd", "noisy_logdet_bpd"}
    assert objective.loss == objective.logs["noisy_bpd"]


def test_bad_combinations_are_refused() -> None:
    with pytest.raises(ValueError, match="needs inputs in \\(0, 1\\); set model.preprocess=shift"):
        glowlab.glow(
            image_shape=(1, 8, 8), levels=2, depth=1, preprocess="logit", dequantization=GAUSSIAN
        )
    with pytest.raises(ValueError, match="model.dequantization.sigma=0"):
        DequantizationChoice("gaussian", sigma=0)
    uniform = glowlab.glow(image_shape=(1, 8, 8), levels=2, depth=1, width=8)
    with pytest.raises(ValueError, match="denoise needs a model trained with Gaussian noise"):
        uniform.sample(2, denoise=True)


def test_tweedie_denoising_matches_the_closed_form_posterior_mean() -> None:
    """The model is p(v) = N(loc, τ²): for clean x ~ N(loc, τ² − s²) plus noise s = σ/2 it is
    the exact noisy density, so E[x | v] = loc + (1 − s²/τ²)(v − loc), and denoising moves
    every sample to a higher model density."""
    sigma = 0.02
    flow, loc, scale = _gaussian_flow(sigma)
    s = sigma / 2
    assert bool((scale > s).all())  # a valid clean variance τ² − s² > 0
    v = flow.sample_continuous(16, temperature=1.0)
    expected = loc + (1 - s * s / scale**2) * (v - loc)
    denoised = flow.denoise(v)
    torch.testing.assert_close(denoised, expected, rtol=1e-9, atol=1e-12)
    assert bool((flow.flow(denoised).log_prob > flow.flow(v).log_prob).all())
    torch.manual_seed(3)
    images = flow.sample(16, denoise=True)
    torch.manual_seed(3)
    v = flow.sample_continuous(16)
    assert torch.equal(images, flow.dequantize.inverse(flow.denoise(v)))


def test_training_logs_report_and_checkpoint_use_the_noisy_name(tmp_path: Path) -> None:
    overrides = [
        *TINY_RUN,
        "model/dequantization=gaussian",
        "trainer.max_epochs=1",
        "logger=csv",
        "callbacks.sample_grid=null",
    ]
    metrics = train(compose_run(tmp_path, overrides))
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["metric"] == "noisy_bpd"
    for key in ("val/noisy_bpd", "train/noisy_bpd", "test/noisy_bpd"):
        assert isinstance(saved[key], float), key
    assert not any(k in saved for k in ("val/bpd", "train/bpd", "test/bpd"))
    assert metrics["best_checkpoint"] and "noisy_bpd" in Path(metrics["best_checkpoint"]).name
    (log,) = tmp_path.rglob("metrics.csv")
    with log.open() as f:
        columns = next(csv.reader(f))
    assert "val/noisy_bpd" in columns and "train/noisy_bpd" in columns
    assert not [c for c in columns if c.split("/")[-1] in ("bpd", "prior_bpd", "logdet_bpd")]
    table = markdown(collect(tmp_path))
    assert "val/noisy_bpd" in table and "test/noisy_bpd" in table

    # the tools: glowlab-eval names the number noisy_bpd, glowlab-sample denoises
    model, config = load_flow(metrics["best_checkpoint"])
    report = evaluate(model, build_datamodule(config, None, model), "test", 2, max_images=16)
    assert report["bound"] == "Gaussian noise-augmented density"
    assert isinstance(report["noisy_bpd"], float) and "bpd" not in report
    plain = sample_grids(model, n=4, temperatures=[0.7], seed=2)[0.7]
    denoised = sample_grids(model, n=4, temperatures=[0.7], seed=2, denoise=True)[0.7]
    assert denoised.shape == plain.shape and not torch.equal(denoised, plain)
