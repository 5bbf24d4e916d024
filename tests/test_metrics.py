"""glowlab.metrics: a metric defined in this file, registered and selected by config, reaches
metrics.json, TensorBoard (scalars and HParams) and glowlab-report; bpd, the importance-weighted
bound and AUROC against hand computations; the registry's refusals."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torchmetrics import MeanMetric
from torchmetrics.functional.classification import binary_auroc

from glowlab.metrics import (
    AUROC,
    Batch,
    BitsPerDim,
    ImportanceWeightedBound,
    Metric,
    auroc,
    build_metrics,
    measure,
    metric_class,
    register,
)
from glowlab.metrics.importance_weighted import ABSENT_NOTE
from glowlab.models import MultiscaleFlow
from glowlab.report import main as report_main
from glowlab.tools import evaluate
from glowlab.tools.loading import build_datamodule
from glowlab.training import FlowModule
from glowlab.training.checkpoints import load_checkpoint
from tests.conftest import TINY_RUN, compose_run
from tests.test_dequantization import SHAPE, _images, _prepared_flow

ROOT = Path(__file__).resolve().parents[1]
LN2 = math.log(2.0)


@register
class MeanPixel(Metric):
    """Mean pixel value of the real images, 0..255 (reads the images only)."""

    name = "mean_pixel"
    higher_is_better = True
    needs = frozenset()

    def __init__(self, model) -> None:
        super().__init__()
        self.mean = MeanMetric()

    def update(self, batch: Batch) -> None:
        self.mean.update(batch.images.float().mean(dim=(1, 2, 3)))

    def compute(self) -> dict[str, float | None]:
        return {self.name: self.mean.compute().item()}


# ------------------------------------------------------------------ a metric of one's own
def test_a_metric_defined_here_reaches_metrics_json_tensorboard_and_the_report(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    run_dir = tmp_path / "run"
    args = [
        *[a for a in TINY_RUN if not a.startswith(("callbacks.", "trainer.max_epochs"))],
        "data.train_subset=32",  # two steps of 16 images, then validation and test
        "trainer.max_epochs=1",
        "++trainer.limit_val_batches=2",
        "++trainer.limit_test_batches=2",
        "callbacks=minimal",
        "logger=tensorboard",
        "module.metrics=[bpd,tests.test_metrics:mean_pixel]",
        f"hydra.run.dir={run_dir}",
    ]
    path = os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])
    env = {**os.environ, "PYTHONPATH": path}  # the subprocess imports tests.test_metrics
    done = subprocess.run(
        [sys.executable, "-m", "glowlab.train", *args],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["steps"] == 2
    assert metrics["metric_directions"] == {"bpd": "lower", "mean_pixel": "higher"}
    assert f"test/mean_pixel {metrics['test/mean_pixel']:.4f}" in done.stdout  # the last lines

    # the value: the mean pixel of the images validation and test saw (two batches each)
    config = load_checkpoint(run_dir / "checkpoints" / "last.ckpt")["glowlab"]["config"]
    datamodule = build_datamodule(config)
    datamodule.setup()
    loaders = {"val": datamodule.val_dataloader(), "test": datamodule.test_dataloader()}
    for stage, loader in loaders.items():
        seen = [x for (x, _), _ in zip(loader, range(2), strict=False)]
        expected = torch.cat(seen).float().mean().item()
        assert metrics[f"{stage}/mean_pixel"] == pytest.approx(expected, rel=1e-5), stage
    assert 0 < metrics["test/bpd"] < 16

    [logdir] = {p.parent for p in (run_dir / "tensorboard").rglob("events.out.tfevents.*")}
    accumulator = EventAccumulator(str(logdir))
    accumulator.Reload()
    scalars = set(accumulator.Tags()["scalars"])
    assert {"val/mean_pixel", "test/mean_pixel", "val/bpd", "val/prior_bpd"} <= scalars
    assert {"hp/val_mean_pixel", "hp/test_mean_pixel", "hp/test_bpd"} <= scalars
    [final] = accumulator.Scalars("hp/test_mean_pixel")
    assert final.value == pytest.approx(metrics["test/mean_pixel"], rel=1e-6)

    # glowlab-eval on the checkpoint: the same 32 test images give the same mean
    args = [f"ckpt={run_dir / 'checkpoints' / 'last.ckpt'}", "max_images=32", "samples=1"]
    args.append("metrics=[bpd,tests.test_metrics:mean_pixel]")
    evaluate.main(compose_run(tmp_path / "eval", args, config_name="eval"))
    report = json.loads((tmp_path / "eval" / "eval.json").read_text())
    assert report["metrics"] == ["bpd", "mean_pixel"]
    assert report["mean_pixel"] == pytest.approx(metrics["test/mean_pixel"], rel=1e-6)

    report_main([str(run_dir)])
    table = capsys.readouterr().out
    header = "| run | overrides | val/bpd | test/bpd | val/mean_pixel | test/mean_pixel |"
    assert header in table
    assert f"{metrics['test/mean_pixel']:.4f}" in table


def test_the_report_sorts_each_metric_best_first(tmp_path: Path, capsys) -> None:
    for run, pixel, bpd in (("a", 10.0, 3.0), ("b", 30.0, 4.0), ("c", None, 2.0)):
        (tmp_path / run).mkdir()
        metrics = {"overrides": [f"run={run}"], "test/bpd": bpd, "test/mean_pixel": pixel}
        metrics["metric_directions"] = {"bpd": "lower", "mean_pixel": "higher"}
        (tmp_path / run / "metrics.json").write_text(json.dumps(metrics))
    old = {"overrides": ["run=old"], "val/bpd": 5.0, "test/bpd": 5.0}  # before the record
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "metrics.json").write_text(json.dumps(old))

    def order(*args: str) -> list[str]:
        report_main([str(tmp_path), *args])
        lines = capsys.readouterr().out.splitlines()
        return [line.split(" | ")[1] for line in lines if line.startswith("| ") and "=" in line]

    assert order() == ["run=c", "run=a", "run=b", "run=old"]  # test/bpd: lower first
    assert order("--sort-by", "test/mean_pixel") == ["run=b", "run=a", "run=c", "run=old"]
    with pytest.raises(SystemExit, match="--sort-by test/fid: choose from"):
        report_main([str(tmp_path), "--sort-by", "test/fid"])


# ------------------------------------------------------------------ bpd and its parts
def test_bpd_is_minus_log_prob_over_d_ln2_and_the_sum_of_its_parts() -> None:
    model = _prepared_flow()
    x = _images(5)
    batch = Batch(model, x, None, seed=3)
    noise = torch.rand(x.shape, generator=torch.Generator().manual_seed(3), dtype=torch.float32)
    with torch.no_grad():
        out = model(x, noise=noise.double())
        metric = BitsPerDim(model)
        metric.update(batch)
        result = metric.compute()
    d = math.prod(SHAPE)
    by_hand = -(out.log_prior + out.logdet - out.log_q) / (d * LN2)
    assert result["bpd"] == pytest.approx(by_hand.mean().item(), rel=1e-12)
    assert result["dequant_bpd"] == pytest.approx((out.log_q / (d * LN2)).mean().item())
    parts = result["prior_bpd"] + result["logdet_bpd"] + result["dequant_bpd"]
    assert parts == pytest.approx(result["bpd"], rel=1e-12)
    assert metric.key == "bpd" and metric.per_image() == {}
    assert metric.describe()["bound"] == "variational dequantization bound"


def test_per_image_bpd_averages_the_draws_and_gives_its_standard_error() -> None:
    model = _prepared_flow()
    batches = [(_images(3, seed=1), torch.zeros(3)), (_images(2, seed=2), torch.zeros(2))]
    metric = BitsPerDim(model, per_image=True)
    labels = measure(model, batches, [metric], samples=4, seed=10)
    expected = []
    with torch.no_grad():
        for i, (x, _) in enumerate(batches):
            gen = torch.Generator().manual_seed(10 + i)
            draws = [model.log_prob(x, noise=torch.rand(x.shape, generator=gen)) for _ in range(4)]
            expected.append(-torch.stack(draws).double().mean(0) / (math.prod(SHAPE) * LN2))
    expected = torch.cat(expected)
    values = metric.per_image()["bpd"]
    assert labels.shape == (5,) and values.dtype == torch.float64
    torch.testing.assert_close(values, expected)
    result = metric.compute()
    assert result["bpd"] == pytest.approx(expected.mean().item())
    assert result["bpd_sem"] == pytest.approx(expected.std().item() / math.sqrt(5))
    metric.reset()
    measure(model, batches[:1], [metric], samples=4, seed=10)
    torch.testing.assert_close(metric.per_image()["bpd"], expected[:3])


# ------------------------------------------------------------------ importance-weighted bound
def test_importance_weighted_bound_is_below_the_variational_bound() -> None:
    model = _prepared_flow()
    x = _images(3)
    batch = Batch(model, x, None, seed=4, draws=6)
    with torch.no_grad():
        weights = batch.log_weights
    assert weights.shape == (3, 6) and weights.dtype == torch.float64
    variational = -weights.mean(1) / (16 * LN2)
    by_hand = -torch.log(torch.exp(weights).mean(1)) / (16 * LN2)
    bpd, weighted = BitsPerDim(model, per_image=True), ImportanceWeightedBound(model)
    for metric in (bpd, weighted):
        metric.update(batch)
    torch.testing.assert_close(weighted.per_image()["importance_weighted_bpd"], by_hand)
    torch.testing.assert_close(bpd.per_image()["bpd"], variational)
    assert (by_hand < variational).all()
    # from the same draws through measure (batch i seeded seed + i)
    again = [BitsPerDim(model, per_image=True), ImportanceWeightedBound(model)]
    measure(model, [(x, torch.zeros(3))], again, samples=6, seed=4)
    same = weighted.per_image()["importance_weighted_bpd"]
    assert torch.equal(again[1].per_image()["importance_weighted_bpd"], same)
    # one draw: the two bounds are equal
    one = [BitsPerDim(model, per_image=True), ImportanceWeightedBound(model)]
    measure(model, [(x, torch.zeros(3))], one, samples=1)
    assert torch.equal(one[0].per_image()["bpd"], one[1].per_image()["importance_weighted_bpd"])


def test_importance_weighted_bound_is_null_without_a_variational_dequantizer() -> None:
    variational = _prepared_flow()
    uniform = MultiscaleFlow(SHAPE, variational.preprocess, list(variational.levels)).double()
    metric = ImportanceWeightedBound(uniform)
    measure(uniform, [(_images(2), torch.zeros(2))], [metric], samples=2)
    assert metric.compute() == {
        "importance_weighted_bpd": None,
        "importance_weighted_bpd_sem": None,
    }
    assert metric.describe() == {"importance_weighted_note": ABSENT_NOTE}
    assert metric.per_image() == {}


# ------------------------------------------------------------------ AUROC
def test_auroc_known_answers_and_ties() -> None:
    assert auroc(torch.tensor([3.0, 4.0]), torch.tensor([1.0, 2.0])) == 1.0
    assert auroc(torch.tensor([1.0, 2.0]), torch.tensor([3.0, 4.0])) == 0.0
    assert auroc(torch.ones(5), torch.ones(3)) == 0.5
    # pairs: (3>2) (3>1) (2=2: 1/2) (2>1) (2=2: 1/2) (2>1) -> 5 of 6
    assert auroc(torch.tensor([3.0, 2.0, 2.0]), torch.tensor([2.0, 1.0])) == pytest.approx(5 / 6)
    gen = torch.Generator().manual_seed(0)
    pos, neg = torch.randint(0, 5, (40,), generator=gen), torch.randint(0, 4, (30,), generator=gen)
    wins = (pos[:, None] > neg[None]).double() + 0.5 * (pos[:, None] == neg[None]).double()
    assert auroc(pos.float(), neg.float()) == pytest.approx(wins.mean().item())
    # torchmetrics agrees on ties (to its float32 result) for float64 scores
    target = torch.cat([torch.ones(40), torch.zeros(30)]).long()
    theirs = binary_auroc(torch.cat([pos, neg]).double(), target).item()
    assert theirs == pytest.approx(wins.mean().item(), abs=1e-6)
    # the metric: fed in pieces, the same number
    metric = AUROC()
    metric.update(pos[:25].double(), positive=True)
    metric.update(neg, positive=False)
    metric.update(pos[25:].double(), positive=True)
    assert metric.compute() == {"auroc": auroc(pos.float(), neg.float())}
    with pytest.raises(ValueError, match="NaN or infinite"):
        auroc(torch.tensor([float("nan")]), torch.tensor([1.0]))


# ------------------------------------------------------------------ the registry
def test_the_registry_selects_by_name_or_module_and_names_each_mistake() -> None:
    model = _prepared_flow()
    assert metric_class("mean_pixel") is MeanPixel
    assert metric_class("tests.test_metrics:mean_pixel") is MeanPixel
    built = build_metrics(["bpd", "iw_bound"], model, "metrics", {"likelihood"}, per_image=True)
    assert [m.key for m in built] == ["bpd", "importance_weighted_bpd"]
    assert built[0].keep_per_image  # per_image reaches the metrics that take it
    with pytest.raises(ValueError, match=r"unknown metric 'sharp'; choose from \['auroc', 'bpd'"):
        metric_class("sharp")
    with pytest.raises(ValueError, match="cannot import 'no_such_module'"):
        metric_class("no_such_module:x")
    with pytest.raises(ValueError, match="tests.test_metrics registers no metric 'x'"):
        metric_class("tests.test_metrics:x")
    with pytest.raises(ValueError, match="metric 'auroc' needs scores"):
        build_metrics(["bpd", "auroc"], model, "module.metrics", {"likelihood", "samples"})
    with pytest.raises(ValueError, match="names a metric twice"):
        build_metrics(["bpd", "bpd"], model, "metrics", {"likelihood"})
    with pytest.raises(ValueError, match="metrics=\\[\\] names no metric"):
        build_metrics([], model, "metrics", {"likelihood"})

    class Other(MeanPixel):
        pass

    with pytest.raises(ValueError, match="metric name 'mean_pixel' is taken by"):
        register(Other)

    class Nameless(Metric):
        name, higher_is_better = "two words", True

    with pytest.raises(ValueError, match="must be a word"):
        register(Nameless)


def test_training_always_reports_bpd() -> None:
    with pytest.raises(ValueError, match=r"lacks bpd.*module.metrics=\['bpd', 'mean_pixel'\]"):
        FlowModule(_prepared_flow(), torch.optim.Adam, metrics=["mean_pixel"])
    module = FlowModule(_prepared_flow(), torch.optim.Adam, metrics=["bpd", "mean_pixel"])
    assert module.metric_keys == {"bpd": False, "mean_pixel": True}
    assert not any("metric" in key for key in module.state_dict())  # never checkpointed
