"""The README's "Write your own family" example, run as written: its bijection is exact, its
recipe is at most 20 lines, and its preset in a user config dir trains two steps through
glowlab-train, then glowlab-sample and glowlab-eval run on the checkpoint."""

from __future__ import annotations

import functools
import inspect
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from glowlab.nets.conditioners import GlowConditioner
from tests.conftest import perturb_parameters

README = Path(__file__).resolve().parents[1] / "README.md"
ROOT = Path(__file__).resolve().parents[1]


def _example(name: str) -> str:
    """The fenced block after ``<!-- example: name -->`` in the README."""
    match = re.search(
        rf"<!-- example: {re.escape(name)} -->\n```\w*\n(.*?)```", README.read_text(), re.S
    )
    assert match, f"README lost its example {name}"
    return match.group(1)


@pytest.fixture()
def family(tmp_path: Path, monkeypatch):
    """The example's module, written to ``tmp_path`` and imported from there."""
    (tmp_path / "my_family.py").write_text(_example("my_family.py"))
    preset = tmp_path / "my_conf" / "model" / "householder.yaml"
    preset.parent.mkdir(parents=True)
    preset.write_text(_example("my_conf/model/householder.yaml"))
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("my_family", None)
    import my_family

    return my_family


def test_the_mixing_layer_is_exact(family) -> None:
    torch.manual_seed(0)
    layer = family.Householder(3).double()
    x = torch.randn(2, 3, 2, 2, dtype=torch.float64)
    z, logdet = layer(x)
    assert torch.allclose(layer.inverse(z), x, atol=1e-12)
    assert (z - x).abs().max() > 0.1  # not the identity
    for i in range(2):
        jac = torch.autograd.functional.jacobian(
            lambda v: layer(v.view(1, 3, 2, 2))[0].reshape(-1), x[i].reshape(-1)
        )
        assert torch.allclose(logdet[i], torch.linalg.slogdet(jac)[1], atol=1e-12)


def test_the_recipe_is_short_and_its_model_exact(family) -> None:
    assert len(inspect.getsource(family.householder_glow).splitlines()) <= 20
    torch.manual_seed(0)
    net = functools.partial(GlowConditioner, hidden=8)
    model = family.householder_glow((1, 4, 4), levels=2, depth=2, conditioner=net).double()
    perturb_parameters(model, 0.1)
    model.eval()
    v = torch.rand(2, 1, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    out = model.flow(v)
    for i in range(2):

        def to_latents(flat: torch.Tensor) -> torch.Tensor:
            return torch.cat([z.reshape(-1) for z in model.flow(flat.view(1, 1, 4, 4)).latents])

        jac = torch.autograd.functional.jacobian(to_latents, v[i].reshape(-1))
        assert torch.allclose(out.logdet[i], torch.linalg.slogdet(jac)[1], atol=1e-9)
    assert torch.allclose(model.invert(out.latents), v, atol=1e-10)


def _run(args: list[str], cwd: Path) -> str:
    env = {**os.environ, "PYTHONPATH": f"{cwd}{os.pathsep}{ROOT}"}
    result = subprocess.run(
        [sys.executable, "-m", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


@pytest.mark.slow
def test_the_example_trains_samples_and_evaluates_from_a_user_config_dir(
    family, tmp_path: Path
) -> None:
    run = tmp_path / "run"
    tiny = ["data=synthetic", "data.image_size=8", "data.batch_size=8", "data.train_subset=32"]
    tiny += ["model.depth=1", "model.conditioner.hidden=8", "module.init_batch_size=16"]
    tiny += ["trainer.max_steps=2", "trainer.max_epochs=null", "trainer.val_check_interval=2"]
    tiny += ["callbacks=minimal", "logger=csv", "test=false", f"hydra.run.dir={run}"]
    _run(["glowlab.train", "--config-dir", "my_conf", "model=householder", *tiny], tmp_path)
    ckpt = run / "checkpoints" / "last.ckpt"
    assert ckpt.exists()
    out = tmp_path / "sample"
    args = [f"ckpt={ckpt}", "n=2", "temperatures=[1.0]", "progress=false", "device=cpu"]
    _run(["glowlab.tools.sample", *args, f"hydra.run.dir={out}"], tmp_path)
    assert (out / "samples_T1.png").exists()
    out = tmp_path / "eval"
    args = [f"ckpt={ckpt}", "max_images=8", "progress=false", "device=cpu"]
    _run(["glowlab.tools.evaluate", *args, f"hydra.run.dir={out}"], tmp_path)
    results = [json.loads(p.read_text()) for p in out.glob("*.json")]
    assert results and any(0 < r.get("bpd", 0) < 16 for r in results), results
