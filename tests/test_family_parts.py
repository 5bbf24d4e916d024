"""Families from parts: the TarFlow, Jet, flow-matching and FFJORD recipes take their layers as
parts and give the reference numbers through the Python API too; objectives are chosen by
config and refuse a model they cannot train; checkpoints and command lines from before the
change load with the same numbers or stop naming the new key."""

from __future__ import annotations

import functools
import inspect
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate

import glowlab
from glowlab.bijections.cnf import CNF, ODEFlow, SolverOptions
from glowlab.bijections.tarflow import TarFlowBlock
from glowlab.conf import CONFIG_DIR
from glowlab.migration import check_model_config, guard_command_line, translate_checkpoint
from glowlab.nets.dynamics import ConcatConvDynamics
from glowlab.nets.transformer import ViTConditioner
from glowlab.nets.unet import UNet
from glowlab.objectives import RNODE, FlowMatching, Likelihood
from glowlab.sampling import sampling_options
from glowlab.tools import evaluate, sample
from glowlab.tools.loading import load_flow
from glowlab.transforms import Affine
from tests.conftest import compose_run
from tests.preset_reference import (
    RELATIVE_TOLERANCE,
    assert_matches_reference,
    build,
    real_images,
    reference_log_prob,
)

LEGACY = Path(__file__).resolve().parent / "data" / "legacy"
ROOT = Path(__file__).resolve().parents[1]

TARFLOW_AFFINE = functools.partial(Affine, scale="soft_clamp", centred=True)
FM_FIELD = {"width": 8, "blocks": 1, "attention_levels": ()}  # as tests.conftest.SHRUNK

# The Python-API spelling of each preset, shrunk as the reference fixture is built.
PYTHON_API = {
    "tarflow": lambda s: glowlab.tarflow(
        s,
        blocks=1,
        block=functools.partial(TarFlowBlock, patch_size=4, layers=1, width=24, heads=2),
        transform=TARFLOW_AFFINE,
    ),
    "tarflow_paper": lambda s: glowlab.tarflow(
        s,
        blocks=1,
        block=functools.partial(
            TarFlowBlock, patch_size=2, layers=1, width=24, heads=12, bf16=True
        ),
        transform=functools.partial(Affine, scale="exp", centred=True),
        preprocess="shift",
    ),
    "jet": lambda s: glowlab.jet(
        s,
        couplings=2,
        conditioner=functools.partial(ViTConditioner, depth=1, width=16, heads=2),
        transform=functools.partial(Affine, scale="soft_clamp"),
    ),
    "jet_paper": lambda s: glowlab.jet(
        s,
        couplings=2,
        conditioner=functools.partial(ViTConditioner, depth=1, width=16, heads=8, bf16=True),
        transform=functools.partial(Affine, scale="soft_clamp"),
        preprocess="shift",
    ),
    "fm": lambda s: glowlab.flow_matching(
        s, functools.partial(UNet, **FM_FIELD), SolverOptions(rtol=1e-4, atol=1e-4)
    ),
    "fm_paper": lambda s: glowlab.flow_matching(
        s,
        functools.partial(UNet, channel_mults=(1, 2, 2, 2), scale_shift=False, **FM_FIELD),
        SolverOptions(),
    ),
    "ffjord": lambda s: glowlab.ffjord(
        s,
        depth=1,
        field=functools.partial(ConcatConvDynamics, hidden=32),
        solver=SolverOptions(rtol=1e-3, atol=1e-3),
    ),
    "ffjord_paper": lambda s: glowlab.ffjord(
        s, levels=3, depth=1, field=functools.partial(ConcatConvDynamics, hidden=64)
    ),
}
PYTHON_API["ffjord_rnode"] = PYTHON_API["ffjord"]  # the same model; only the objective differs


def _shape(name: str) -> tuple[int, int, int]:
    return (3, 32, 32) if name.endswith("_paper") else (1, 28, 28)


@pytest.mark.parametrize("name", sorted(PYTHON_API))
def test_python_api_and_config_give_the_reference_numbers(name: str) -> None:
    shape = _shape(name)
    torch.manual_seed(0)
    by_api = reference_log_prob(PYTHON_API[name](shape), real_images(shape))
    by_config = reference_log_prob(build(name)[0], real_images(shape))
    assert by_api == by_config, name  # bit-identical: the same model on the same machine
    assert_matches_reference(name, by_api)


@pytest.mark.parametrize("recipe", ["tarflow", "jet", "flow_matching", "ffjord"])
def test_recipes_take_at_most_eight_parameters(recipe: str) -> None:
    parameters = inspect.signature(getattr(glowlab, recipe)).parameters
    assert len(parameters) <= 8, list(parameters)
    assert list(parameters)[-1] == "shared"


# ------------------------------------------------------------------ objectives by config
@pytest.mark.parametrize(
    ("model", "objective"),
    [
        ("fm", FlowMatching),
        ("fm_paper", FlowMatching),
        ("ffjord_rnode", RNODE),
        ("ffjord", Likelihood),
        ("tarflow", Likelihood),
        ("glow_small", Likelihood),
    ],
)
def test_presets_choose_their_objective(tmp_path: Path, model: str, objective: type) -> None:
    cfg = compose_run(tmp_path, [f"model={model}"])
    assert isinstance(instantiate(cfg.objective), objective)
    assert cfg.module.objective == cfg.objective  # what FlowModule is given


def test_the_command_line_overrides_a_presets_objective(tmp_path: Path) -> None:
    cfg = compose_run(tmp_path, ["model=ffjord_rnode", "objective.kinetic_weight=0.5"])
    assert instantiate(cfg.objective).kinetic_weight == 0.5
    cfg = compose_run(tmp_path, ["model=fm", "objective=likelihood"])
    assert isinstance(instantiate(cfg.objective), Likelihood)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["objective=flow_matching"], "objective=flow_matching trains one ODE block"),
        (["objective=rnode"], "objective=rnode regularises the ODE blocks"),
    ],
)
def test_a_wrong_objective_stops_in_one_line(
    tmp_path: Path, overrides: list[str], message: str
) -> None:
    run = [sys.executable, "-m", "glowlab.train", "data=synthetic", "model=glow_small"]
    run += [f"hydra.run.dir={tmp_path}", *overrides]
    result = subprocess.run(run, capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("glowlab-train: error: " + message), lines


# ------------------------------------------------------------------ before the change
LEGACY_SAMPLING = {
    "tarflow": {"inversion": "jacobi", "jacobi_tolerance": 1e-4, "guidance": 0.5},
    "fm": {"sample_solver": "euler", "sample_step_size": 0.25, "sample_rtol": 1e-3},
    "jet": {},
    "ffjord_rnode": {},
}


@pytest.mark.parametrize("name", sorted(LEGACY_SAMPLING))
def test_checkpoint_from_before_the_parts_loads_with_the_same_numbers(name: str) -> None:
    """tests/data/legacy/<name>.ckpt: 2 training steps of the code before the change (8×8
    synthetic images, tiny sizes); its log_prob and a seeded sample are unchanged, and its
    sampling options are the saved ones."""
    model, _ = load_flow(LEGACY / f"{name}.ckpt")
    expected = json.loads((LEGACY / f"{name}.json").read_text())
    options = sampling_options(model)
    assert {k: options[k] for k in LEGACY_SAMPLING[name]} == LEGACY_SAMPLING[name]
    model = model.double()
    x = torch.randint(0, 256, (3, 1, 8, 8), generator=torch.Generator().manual_seed(0))
    y = torch.tensor([0, 1, 2]) if model.num_classes else None
    noise = torch.rand(x.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    torch.manual_seed(2)  # the Hutchinson probes of the ODE models
    with torch.no_grad():
        got = model.log_prob(x.to(torch.uint8), y, noise=noise)
    assert got.tolist() == pytest.approx(expected["log_prob"], rel=RELATIVE_TOLERANCE, abs=0)
    torch.manual_seed(3)
    eps = model.latent_noise(2, 4)
    images = model.float().sample(2, 1.0, y=None if y is None else y[:2], eps=eps)
    assert int(images.long().sum()) == expected["sample_sum"]


def test_translated_configs_have_the_new_keys() -> None:
    checkpoint = torch.load(LEGACY / "fm.ckpt", weights_only=True)
    model = translate_checkpoint(checkpoint)["glowlab"]["config"]["model"]
    assert model["field"]["width"] == 4 and model["solver"]["rtol"] == 1e-3
    assert model["sample_solver"]["solver"] == "euler"
    assert not {"width", "rtol", "sigma_min", "sample_step_size"} & set(model)
    check_model_config(model)  # the translation is a current config
    checkpoint = torch.load(LEGACY / "ffjord_rnode.ckpt", weights_only=True)
    model = translate_checkpoint(checkpoint)["glowlab"]["config"]["model"]
    assert model["field"] == {
        "_target_": "glowlab.nets.dynamics.ConcatConvDynamics",
        "_partial_": True,
        "hidden": 8,
        "layers": 2,
    }
    assert "kinetic_weight" not in model  # the objective's, which the tools do not need


@pytest.mark.parametrize("name", ["tarflow", "fm"])
def test_the_tools_run_on_a_checkpoint_from_before_the_parts(tmp_path: Path, name: str) -> None:
    ckpt = LEGACY / f"{name}.ckpt"
    common = [f"ckpt={ckpt}", "device=cpu", "progress=false"]
    runs = {
        (sample, "sample"): ["n=2", "temperatures=[1.0]"],
        (evaluate, "eval"): ["split=test", "max_images=4"],
    }
    for (tool, config), args in runs.items():
        result = tool.main(compose_run(tmp_path / config, [*common, *args], config_name=config))
        assert result, config


@pytest.mark.parametrize(
    ("overrides", "new_key"),
    [
        (["model=tarflow", "model.width=8"], "model.block.width"),
        (["model=tarflow_paper", "model.inversion=jacobi"], "model.block.inversion"),
        (["model=jet", "model.block_depth=2"], "model.conditioner.depth"),
        (["model=jet", "model.bf16_conditioner=true"], "model.conditioner.bf16"),
        (["model=fm", "model.rtol=1e-3"], "model.solver.rtol"),
        (["model=fm", "model.width=8"], "model.field.width"),
        (["model=fm", "model.sigma_min=0.01"], "objective.sigma_min"),
        (["model=fm", "model.sample_step_size=0.1"], "model.sample_solver.step_size"),
        (["model=ffjord", "model.width=8"], "model.field.hidden"),
        (["model=ffjord_rnode", "model.kinetic_weight=0.1"], "objective.kinetic_weight"),
        (["model=ffjord", "model.eval_trace=exact"], "model.block.eval_trace"),
    ],
)
def test_a_saved_command_with_an_old_key_names_the_new_key(
    overrides: list[str], new_key: str
) -> None:
    with pytest.raises(SystemExit) as stop:
        guard_command_line("glowlab-train", CONFIG_DIR, "train", overrides)
    message = str(stop.value)
    assert message.startswith("glowlab-train: error: model.") and "\n" not in message
    assert new_key in message, message


def test_an_old_key_in_a_composed_config_names_the_new_key() -> None:
    with pytest.raises(ValueError, match=r"use model\.block\.heads"):
        check_model_config({"_target_": "glowlab.models.tarflow", "heads": 2})
    with pytest.raises(ValueError, match=r"objective=rnode objective\.jacobian_weight"):
        check_model_config({"_target_": "glowlab.models.ffjord", "jacobian_weight": 0.1})
    check_model_config({"_target_": "glowlab.models.maf", "width": 64})  # still maf's own


def test_rnode_without_weights_is_the_likelihood_with_nfe() -> None:
    objective = RNODE(kinetic_weight=0.0, jacobian_weight=0.0)
    model = glowlab.ffjord((1, 4, 4), levels=1, depth=1, block=functools.partial(CNF))
    x = torch.randint(0, 256, (2, 1, 4, 4), dtype=torch.uint8)
    logs = objective(model.train(), x).logs
    assert set(logs) == {"bpd", "prior_bpd", "logdet_bpd", "dequant_bpd", "nfe"}


@pytest.mark.parametrize(
    ("build", "key"),
    [
        (
            lambda s: glowlab.tarflow(s, block=functools.partial(TarFlowBlock, num_classes=3)),
            "model.block.num_classes",
        ),
        (
            lambda s: glowlab.flow_matching(
                s, functools.partial(UNet, num_classes=3), SolverOptions()
            ),
            "model.field.num_classes",
        ),
        (
            lambda s: glowlab.flow_matching(
                s,
                functools.partial(UNet, **FM_FIELD),
                SolverOptions(),
                ode=functools.partial(ODEFlow, t_data=0.5),
            ),
            "model.ode.t_data",
        ),
    ],
)
def test_a_part_option_the_recipe_sets_is_refused(build, key: str) -> None:
    """A part node that fixes what the recipe passes would be overridden silently."""
    with pytest.raises(ValueError, match=rf"^{key} is set by the recipe"):
        build((1, 28, 28))
