"""Every flow-family preset trains through glowlab-train on real Fashion-MNIST (its objective
goes down), and its checkpoint reloads through the tools' loader, round-trips images, samples
and works in every research tool."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image

from glowlab.bijections.cnf import ODEFlow, SolverOptions
from glowlab.tools import evaluate, interpolate, manipulate, sample, score
from glowlab.tools.loading import load_flow
from tests.conftest import compose_run, logged, train_briefly

# CPU-sized presets, narrowed further so each run takes seconds: (overrides, logged training
# objective, how much it must fall in 20 steps).
PRESETS = {
    "nsf": (["model.depth=1", "model.conditioner.hidden=16"], "train/bpd", 0.5),
    "flowpp": (
        ["model.depth=1", "model.conditioner.hidden=16", "model.dequantization.width=8"],
        "train/bpd",
        0.5,
    ),
    "resflow": (["model.depth=1", "model.width=16", "module.optimizer.lr=2e-2"], "train/bpd", 0.5),
    "ffjord": (["model.depth=1", "model.field.hidden=8"], "train/bpd", 0.5),
    "ffjord_rnode": (["model.depth=1", "model.field.hidden=8"], "train/bpd", 0.5),
    "maf": (["model.depth=1", "model.width=16"], "train/bpd", 0.5),
    "tarflow": (
        ["model.blocks=2", "model.block.layers=1", "model.block.width=32"]
        + ["module.optimizer.lr=2e-3"],
        "train/bpd",
        0.5,
    ),
    "jet": (
        ["model.couplings=2", "model.conditioner.depth=1", "model.conditioner.width=32"]
        + ["module.optimizer.lr=2e-3"],
        "train/bpd",
        0.5,
    ),
    "fm": (  # trained by regression: its loss falls, its bpd is only evaluated
        ["model.field.width=8", "model.solver.rtol=1e-3", "model.solver.atol=1e-3"]
        + ["data.eval_batch_size=16"],
        "train/fm_loss",
        0.1,
    ),
}


@pytest.mark.slow
@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_preset_trains_and_every_tool_runs_on_its_checkpoint(
    tmp_path: Path, preset: str, fmnist_images: torch.Tensor
) -> None:
    extra, objective, fall = PRESETS[preset]
    overrides = [
        f"model={preset}",
        "module.init_batch_size=128",
        "module.optimizer.lr=5e-3",
        "module.scheduler.warmup_steps=3",
        *extra,
    ]
    metrics, rows = train_briefly(tmp_path / "run", overrides, steps=20)
    curve = logged(rows, objective)
    assert len(curve) >= 15
    first, last = sum(curve[:3]) / 3, sum(curve[-3:]) / 3
    assert last < first - fall, (preset, curve)
    assert 0 < metrics["test/bpd"] < 16

    ckpt = metrics["best_checkpoint"]
    model, _ = load_flow(ckpt)
    x = fmnist_images[:2]
    for block in model.modules():  # ODE families: exact integers need a tight solve
        if isinstance(block, ODEFlow):
            block.solver = block.sample_solver = SolverOptions("dopri5", 1e-7, 1e-7)
    with torch.no_grad():
        assert torch.equal(model.decode(model.encode(x)), x)
    samples = model.sample(2, temperature=0.7)
    assert samples.shape == (2, 1, 28, 28) and samples.dtype == torch.uint8
    _every_tool(preset, ckpt, tmp_path, fmnist_images)


def _every_tool(preset: str, ckpt: str, out: Path, images: torch.Tensor) -> None:
    """glowlab-eval, -sample, -interpolate, -manipulate and -score, each on a few images."""
    folder = out / "inputs"
    folder.mkdir()
    for i in range(2):
        Image.fromarray(images[i, 0].numpy()).save(folder / f"{i}.png")
    common = [f"ckpt={ckpt}", "device=cpu", "progress=false"]
    runs = {
        (evaluate, "eval"): ["max_images=4", "samples=1"],
        (sample, "sample"): ["n=2", "temperatures=[0.7]"],
        (interpolate, "interpolate"): ["a=0", "b=1", "steps=3"],
        (manipulate, "manipulate"): [
            "class_a=1",
            "class_b=2",
            "indices=[0]",
            "alphas=[0,1]",
            "max_images=8",
        ],
        (score, "score"): [f"inputs={folder}", "reference=test", "max_images=2", "train_images=2"],
    }
    for (tool, name), args in runs.items():
        result = tool.main(compose_run(out / name, [*common, *args], config_name=name))
        assert result, name
    if preset == "tarflow":  # parallel inversion from the command line, iterations reported
        args = [*common, "n=2", "temperatures=[0.7]", "inversion=jacobi"]
        result = sample.main(compose_run(out / "jacobi", args, config_name="sample"))
        sampling = result["sampling"]
        assert sampling["inversion"] == "jacobi" and len(sampling["jacobi_iterations"]) == 2
