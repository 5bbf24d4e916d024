"""Variational dequantization (Flow++): exact log q, the noise contract, the bounds, learning,
and the evaluate tool's report of both bounds."""

from __future__ import annotations

import csv
import functools
import json
import math
from pathlib import Path

import pytest
import torch
from torch.distributions import Normal

from glowlab import metrics
from glowlab.bijections import (
    ActNorm,
    Coupling,
    InvConv1x1LU,
    Sequential,
    Shift,
    Squeeze,
)
from glowlab.bijections.dequantization import VariationalDequantizer, coupling_masks
from glowlab.data import ImageDataModule
from glowlab.models import Level, MultiscaleFlow
from glowlab.nets.conditioners import GlowConditioner
from glowlab.priors import LearnedPrior
from glowlab.tools import evaluate
from tests.conftest import compose_run, perturb_parameters

SHAPE = (1, 4, 4)
STANDARD_NORMAL = Normal(torch.tensor(0.0, dtype=torch.float64), 1.0)
SYNTHETIC = {
    "_target_": "glowlab.data.ImageDataModule",
    "name": "synthetic",
    "image_size": 4,
    "channels": 1,
    "batch_size": 4,
    "eval_batch_size": 3,
    "val_size": 8,
    "train_subset": 20,  # keeps 4 test images: batches of 3 and 1
}


def tiny_variational_flow(image_shape=SHAPE, n_bits: int = 8) -> MultiscaleFlow:
    """One Glow step (squeeze → ActNorm → 1×1 conv → affine coupling) on one level, with a
    variational dequantizer; also the Hydra target of the checkpoint test."""
    c, h, w = (int(s) for s in image_shape)
    out_shape = (4 * c, h // 2, w // 2)
    step = Sequential(
        [
            Squeeze(),
            ActNorm(4 * c),
            InvConv1x1LU(4 * c),
            Coupling(4 * c, functools.partial(GlowConditioner, hidden=8)),
        ]
    )
    level = Level(step, LearnedPrior(4 * c), out_shape, factor_out=False)
    dequantizer = VariationalDequantizer(image_shape, hidden=8, depth=4)
    return MultiscaleFlow(image_shape, Shift(), [level], n_bits, dequantizer=dequantizer)


def _prepared_flow(dtype: torch.dtype = torch.float64) -> MultiscaleFlow:
    """``tiny_variational_flow`` with ActNorm initialised and every parameter perturbed."""
    torch.manual_seed(0)
    model = tiny_variational_flow().to(dtype).train()
    with torch.no_grad():
        model(torch.randint(0, 256, (16, *SHAPE)))
    perturb_parameters(model, 0.1)
    return model.eval()


def _images(n: int, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, 256, (n, *SHAPE), generator=torch.Generator().manual_seed(seed))


# ------------------------------------------------------------------ q(u | x) itself
@pytest.mark.parametrize("shape", [(1, 4, 4), (2, 2, 4)])
def test_log_q_is_the_change_of_variables_density(shape) -> None:
    torch.manual_seed(0)
    dequantizer = VariationalDequantizer(shape, hidden=8, depth=4).double()
    perturb_parameters(dequantizer, 0.2)
    gen = torch.Generator().manual_seed(2)
    image = torch.rand(2, *shape, generator=gen, dtype=torch.float64) - 0.5
    noise = torch.rand(2, *shape, generator=gen, dtype=torch.float64)
    u, log_q = dequantizer(image, noise)
    assert u.shape == image.shape and log_q.shape == (2,)
    assert ((u > 0) & (u < 1)).all()
    eps = STANDARD_NORMAL.icdf(noise)
    assert not torch.allclose(u, torch.sigmoid(eps), atol=1e-3)  # the couplings act
    for i in range(2):

        def eps_to_u(flat: torch.Tensor, i: int = i) -> torch.Tensor:
            noise_i = STANDARD_NORMAL.cdf(flat.view(1, *shape))
            return dequantizer(image[i : i + 1], noise_i)[0].reshape(-1)

        jac = torch.autograd.functional.jacobian(eps_to_u, eps[i].reshape(-1))
        expected = STANDARD_NORMAL.log_prob(eps[i]).sum() - torch.linalg.slogdet(jac)[1]
        torch.testing.assert_close(log_q[i], expected, atol=1e-8, rtol=0)


def test_masks_transform_every_pixel_and_alternate() -> None:
    gray = coupling_masks((1, 4, 4), depth=4)
    assert all(m.shape == (1, 1, 4, 4) for m in gray)
    assert torch.equal(gray[0] + gray[1], torch.ones(1, 1, 4, 4))
    assert torch.equal(gray[2], gray[0])  # odd channel count: checkerboards only
    color = coupling_masks((2, 2, 2), depth=4)
    assert torch.equal(color[0] + color[1], torch.ones(1, 2, 2, 2))
    assert color[2][0, 0].eq(1).all() and color[2][0, 1].eq(0).all()  # channel halves
    assert torch.equal(color[2] + color[3], torch.ones(1, 2, 2, 2))


def test_fresh_q_is_logit_normal_and_noise_maps_through_the_normal_quantile() -> None:
    dequantizer = VariationalDequantizer(SHAPE, hidden=8, depth=2).double()
    image = torch.rand(3, *SHAPE, dtype=torch.float64) - 0.5
    noise = torch.rand(3, *SHAPE, dtype=torch.float64)
    u, log_q = dequantizer(image, noise)
    eps = STANDARD_NORMAL.icdf(noise)
    torch.testing.assert_close(u, torch.sigmoid(eps))  # zero-initialised couplings
    log_sigmoid_slope = torch.log(u * (1 - u)).flatten(1).sum(1)
    log_normal = STANDARD_NORMAL.log_prob(eps).flatten(1).sum(1)
    torch.testing.assert_close(log_q, log_normal - log_sigmoid_slope)
    u_half, _ = dequantizer(image, 0.5)  # a float: ε = Φ⁻¹(0.5) = 0 for every pixel
    assert torch.equal(u_half, torch.full_like(image, 0.5))
    edges = torch.zeros_like(image)
    edges[..., :2] = 1.0  # out of [0, 1): clamped to a finite ε
    u_edges, log_q_edges = dequantizer(image, edges)
    assert torch.isfinite(log_q_edges).all() and ((u_edges > 0) & (u_edges < 1)).all()
    first, second = dequantizer(image)[0], dequantizer(image)[0]
    assert not torch.equal(first, second)  # noise=None draws afresh


# ------------------------------------------------------------------ the model's bound
def test_model_bound_is_log_p_of_the_dequantized_image_minus_log_q() -> None:
    model = _prepared_flow()
    x = _images(4)
    noise = torch.rand(4, *SHAPE, dtype=torch.float64)
    out = model(x, noise=noise)
    u, log_q = model.dequantizer(x.double() / 255 - 0.5, noise)
    dims = math.prod(SHAPE)
    expected = model.flow((x + u) / 256).log_prob - dims * 8 * math.log(2) - log_q
    torch.testing.assert_close(out.log_prob, expected)
    torch.testing.assert_close(out.log_q, log_q)
    torch.testing.assert_close(out.log_prob, out.log_prior + out.logdet - out.log_q)
    assert torch.equal(model.log_prob(x, noise=noise), out.log_prob)  # fixed noise reproduces
    assert not torch.equal(model.log_prob(x), model.log_prob(x))  # fresh draws differ
    bpd = model.bits_per_dim(x, noise=noise)
    assert bpd.shape == (4,) and torch.isfinite(bpd).all()
    torch.testing.assert_close(bpd, -out.log_prob / (dims * math.log(2)))
    assert torch.equal(model.decode(model.encode(x)), x.to(torch.uint8))
    uniform = MultiscaleFlow(SHAPE, model.preprocess, list(model.levels)).double()
    assert torch.equal(uniform(x, noise=noise).log_q, torch.zeros(4, dtype=torch.float64))


def test_gradients_of_the_bound_reach_the_flow_and_q() -> None:
    model = _prepared_flow().train()
    model.bits_per_dim(_images(4)).mean().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing, missing


def test_training_q_alone_lowers_the_bound() -> None:
    model = _prepared_flow()
    x = _images(8)
    gen = torch.Generator().manual_seed(5)
    fixed = torch.rand(8, 8, *SHAPE, dtype=torch.float64, generator=gen)  # 8 draws per image

    def bound() -> float:
        with torch.no_grad():
            return torch.stack([model.bits_per_dim(x, noise=n) for n in fixed]).mean().item()

    flow_state = {k: v.clone() for k, v in model.state_dict().items() if "dequantizer" not in k}
    before = bound()
    optimizer = torch.optim.Adam(model.dequantizer.parameters(), lr=1e-2)
    for _ in range(30):
        optimizer.zero_grad()
        model.bits_per_dim(x).mean().backward()
        optimizer.step()
    after = bound()
    assert after < before - 0.1, (before, after)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in flow_state.items())


def test_bad_dequantizer_options_are_named() -> None:
    with pytest.raises(ValueError, match=r"image_shape must be \(C, H, W\)"):
        VariationalDequantizer((4, 4))
    with pytest.raises(ValueError, match="hidden=0 must be > 0"):
        VariationalDequantizer(SHAPE, hidden=0)
    with pytest.raises(ValueError, match="depth=0 must be > 0"):
        VariationalDequantizer(SHAPE, depth=0)
    levels = list(tiny_variational_flow().levels)
    with pytest.raises(ValueError, match=r"built for images of shape \(1, 8, 8\)"):
        MultiscaleFlow(SHAPE, Shift(), levels, dequantizer=VariationalDequantizer((1, 8, 8)))
    with pytest.raises(ValueError, match=r"expects images of shape \(B, 1, 4, 4\)"):
        VariationalDequantizer(SHAPE)(torch.zeros(2, 1, 8, 8))


# ------------------------------------------------------------------ glowlab-eval
def test_evaluate_reports_the_variational_and_importance_weighted_bounds() -> None:
    model = _prepared_flow(torch.float32)
    datamodule = ImageDataModule(**{k: v for k, v in SYNTHETIC.items() if k != "_target_"})
    result = evaluate.evaluate(model, datamodule, "test", samples=3, seed=7)
    datamodule.setup()
    variational, weighted = [], []
    with torch.no_grad():
        for i, (x, _) in enumerate(datamodule.test_dataloader()):
            gen = torch.Generator().manual_seed(7 + i)
            draws = torch.stack(
                [model.log_prob(x, noise=torch.rand(x.shape, generator=gen)) for _ in range(3)]
            ).double()
            variational.append(-draws.mean(0) / (16 * math.log(2)))
            weighted.append(-(torch.logsumexp(draws, 0) - math.log(3)) / (16 * math.log(2)))
    assert result["images"] == 4
    torch.testing.assert_close(result["per_image_bpd"], torch.cat(variational))
    torch.testing.assert_close(result["per_image_importance_weighted_bpd"], torch.cat(weighted))
    assert result["bound"] == "variational dequantization bound"
    assert "log q(u|x)" in result["bound_note"]
    assert result["importance_weighted_bpd"] < result["bpd"]
    assert result["importance_weighted_note"] == metrics.importance_weighted.NOTE
    assert result["recon_pixel_errors"] == 0
    uniform = MultiscaleFlow(SHAPE, Shift(), list(model.levels))
    report = evaluate.evaluate(uniform, datamodule, "test", samples=3, seed=7)
    assert report["bound"] == "uniform dequantization bound"
    assert report["importance_weighted_bpd"] is None
    assert report["importance_weighted_note"] == metrics.importance_weighted.ABSENT_NOTE


def test_eval_app_on_a_variational_checkpoint(tmp_path: Path) -> None:
    model = _prepared_flow(torch.float32)
    ckpt = tmp_path / "variational.ckpt"
    config = {
        "model": {"_target_": "tests.test_dequantization.tiny_variational_flow"},
        "data": SYNTHETIC,
    }
    torch.save(
        {
            "glowlab": {"image_shape": list(SHAPE), "n_bits": 8, "config": config},
            "state_dict": {f"model.{k}": v for k, v in model.state_dict().items()},
        },
        ckpt,
    )
    args = [f"ckpt={ckpt}", "samples=3", "seed=7", "device=cpu"]
    evaluate.main(compose_run(tmp_path / "out", args, config_name="eval"))
    report = json.loads((tmp_path / "out" / "eval.json").read_text())
    assert report["bound"] == "variational dequantization bound"
    assert report["importance_weighted_bpd"] < report["bpd"]
    assert report["importance_weighted_note"] == metrics.importance_weighted.NOTE
    with (tmp_path / "out" / "per_image_bpd.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 4
    assert set(rows[0]) == {"index", "label", "bpd", "importance_weighted_bpd"}
    assert all(float(r["importance_weighted_bpd"]) <= float(r["bpd"]) for r in rows)
