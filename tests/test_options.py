"""Every number a user can set is checked in one place (glowlab.options): bad values through
the composed configs, through the real console scripts, and no false positives on any preset,
experiment or tool config."""

from __future__ import annotations

import inspect
import os
import subprocess
import sys
import typing
from pathlib import Path

import pytest
import yaml
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.utils import get_object

from glowlab.options import RULES, TOOL_OPTIONS, check_options

CONF = Path(__file__).resolve().parents[1] / "glowlab" / "conf"
TOOLS = ("sample", "eval", "score", "interpolate", "manipulate", "prepare")


def composed(config_name: str, overrides: list[str]):
    GlobalHydra.instance().clear()
    with initialize_config_dir(str(CONF), version_base="1.3"):
        return compose(config_name, overrides=overrides)


SOLVER = "_target_:glowlab.bijections.cnf.SolverOptions"  # a model.sample_solver node

BAD = [  # (app config, overrides, the key the error must name)
    ("train", ["model.depth=-1"], "model.depth"),
    ("train", ["model.levels=0"], "model.levels"),
    ("train", ["model.depth=2.5"], "model.depth"),
    ("train", ["model=tarflow", "model.blocks=-1"], "model.blocks"),
    ("train", ["model=tarflow", "model.block.layers=0"], "model.block.layers"),
    ("train", ["model=tarflow", "model.block.width=0"], "model.block.width"),
    ("train", ["model=tarflow", "model.block.guidance=nan"], "model.block.guidance"),
    ("train", ["model=tarflow", "model.label_dropout=1.5"], "model.label_dropout"),
    (
        "train",
        ["model=tarflow", "model.block.jacobi_tolerance=-1"],
        "model.block.jacobi_tolerance",
    ),
    (
        "train",
        ["model=tarflow", "model.block.jacobi_max_iterations=0"],
        "model.block.jacobi_max_iterations",
    ),
    ("train", ["model=nsf_paper", "model.conditioner.blocks=-2"], "model.conditioner.blocks"),
    ("train", ["model.conditioner.hidden=0"], "model.conditioner.hidden"),
    ("train", ["model=flowpp", "model.transform.components=0"], "model.transform.components"),
    ("train", ["model=flowpp", "model.dequantization.depth=0"], "model.dequantization.depth"),
    ("train", ["model/transform=spline", "model.transform.bound=0"], "model.transform.bound"),
    ("train", ["model/transform=spline", "model.transform.bins=1"], "model.transform.bins"),
    ("train", ["model/transform=spline", "model.transform.bound=nan"], "model.transform.bound"),
    ("train", ["model.transform.bound=inf"], "model.transform.bound"),
    ("train", ["model/prior=planar", "model.prior.layers=-1"], "model.prior.layers"),
    (
        "train",
        ["model/dequantization=gaussian", "model.dequantization.sigma=0"],
        "model.dequantization.sigma",
    ),
    ("train", ["model=resflow", "model.coeff=1.0"], "model.coeff"),
    ("train", ["model=resflow", "model.n_power_iterations=0"], "model.n_power_iterations"),
    ("train", ["model=ffjord", "model.solver.rtol=0"], "model.solver.rtol"),
    ("train", ["model=ffjord", "model.solver.step_size=0"], "model.solver.step_size"),
    ("train", ["model=ffjord", "model.block.time_length=-1"], "model.block.time_length"),
    ("train", ["model=ffjord", "model.field.hidden=0"], "model.field.hidden"),
    ("train", ["model=ffjord", "model.field.layers=0"], "model.field.layers"),
    (
        "train",
        ["model=ffjord_rnode", "objective.kinetic_weight=-0.01"],
        "objective.kinetic_weight",
    ),
    ("train", ["objective=rnode", "objective.jacobian_weight=nan"], "objective.jacobian_weight"),
    ("train", ["model=maf", "model.hidden_layers=-1"], "model.hidden_layers"),
    ("train", ["model=fm", "model.field.dropout=1.0"], "model.field.dropout"),
    ("train", ["model=fm", "model.field.channel_mults=[1,0]"], "model.field.channel_mults"),
    ("train", ["model=fm", "model.field.time_scale=0"], "model.field.time_scale"),
    ("train", ["model=fm", "model.solver.rtol=-1"], "model.solver.rtol"),
    (
        "train",
        ["model=fm", f"model.sample_solver={{{SOLVER},atol:0}}"],
        "model.sample_solver.atol",
    ),
    ("train", ["objective=flow_matching", "objective.sigma_min=2"], "objective.sigma_min"),
    ("train", ["model=jet", "model.channel_couplings=-1"], "model.channel_couplings"),
    ("train", ["model=jet", "model.conditioner.mlp_ratio=0"], "model.conditioner.mlp_ratio"),
    ("train", ["model=jet", "model.conditioner.depth=0"], "model.conditioner.depth"),
    ("train", ["model=glow_cpu", "+model.logit_alpha=0.7"], "model.logit_alpha"),
    ("train", ["module.optimizer.lr=-1"], "module.optimizer.lr"),
    ("train", ["module.optimizer.lr=nan"], "module.optimizer.lr"),
    ("train", ["module.optimizer.lr=inf"], "module.optimizer.lr"),
    ("train", ["module.optimizer.betas=[0.9,1.5]"], "module.optimizer.betas"),
    ("train", ["module.optimizer.weight_decay=-0.1"], "module.optimizer.weight_decay"),
    ("train", ["module.scheduler.final_fraction=1.5"], "module.scheduler.final_fraction"),
    ("train", ["module.scheduler.warmup_steps=-5"], "module.scheduler.warmup_steps"),
    ("train", ["module.init_batch_size=0"], "module.init_batch_size"),
    ("train", ["callbacks/ema=on", "callbacks.ema.decay=1.5"], "callbacks.ema.decay"),
    ("train", ["callbacks/ema=on", "callbacks.ema.decay=-0.1"], "callbacks.ema.decay"),
    ("train", ["callbacks.sample_grid.n=0"], "callbacks.sample_grid.n"),
    ("train", ["callbacks.sample_grid.temperatures=[nan]"], "callbacks.sample_grid.temperatures"),
    (
        "train",
        ["callbacks.model_checkpoint.last_every_n_steps=0"],
        "callbacks.model_checkpoint.last_every_n_steps",
    ),
    ("train", ["callbacks.reconstruction.n=0"], "callbacks.reconstruction.n"),
    ("train", ["data.val_size=-3"], "data.val_size"),
    ("train", ["data.batch_size=0"], "data.batch_size"),
    ("train", ["data=synthetic", "data.image_size=0"], "data.image_size"),
    ("train", ["data.n_bits=9"], "data.n_bits"),
    ("train", ["data.num_workers=-1"], "data.num_workers"),
    ("train", ["data.eval_batch_size=0"], "data.eval_batch_size"),
    ("train", ["trainer.gradient_clip_val=-1"], "trainer.gradient_clip_val"),
    ("train", ["trainer.max_epochs=0"], "trainer.max_epochs"),
    ("train", ["trainer.max_steps=-5"], "trainer.max_steps"),
    ("train", ["trainer.log_every_n_steps=-1"], "trainer.log_every_n_steps"),
    ("train", ["trainer.check_val_every_n_epoch=0"], "trainer.check_val_every_n_epoch"),
    ("train", ["trainer.val_check_interval=0"], "trainer.val_check_interval"),
    ("train", ["++trainer.limit_train_batches=0"], "trainer.limit_train_batches"),
    ("train", ["++trainer.accumulate_grad_batches=0"], "trainer.accumulate_grad_batches"),
    ("train", ["trainer.devices=0"], "trainer.devices"),
    ("train", ["seed=-1"], "seed"),
    ("train", ["+module.momentum=inf"], "module.momentum"),  # finite anywhere
    ("sample", ["temperatures=[nan]"], "temperatures"),
    ("sample", ["temperatures=[0.5,inf]"], "temperatures"),
    ("sample", ["n=0"], "n"),
    ("sample", ["guidance=nan"], "guidance"),
    ("sample", ["jacobi_tolerance=-1"], "jacobi_tolerance"),
    ("sample", ["batch_size=0"], "batch_size"),
    ("sample", ["y=-2"], "y"),
    ("eval", ["samples=0"], "samples"),
    ("eval", ["bins=0"], "bins"),
    ("eval", ["max_images=0"], "max_images"),
    ("eval", ["data.batch_size=0"], "data.batch_size"),
    ("eval", ["data=mnist", "data.val_size=-1"], "data.val_size"),
    ("score", ["train_images=0"], "train_images"),
    ("score", ["seed=-1"], "seed"),
    ("interpolate", ["temperature=nan"], "temperature"),
    ("interpolate", ["temperature=-1"], "temperature"),
    ("interpolate", ["steps=1"], "steps"),
    ("manipulate", ["alphas=[0,inf]"], "alphas"),
    ("manipulate", ["indices=[-1]"], "indices"),
    ("manipulate", ["class_a=-1", "class_b=0"], "class_a"),
    ("prepare", ["num_workers=0"], "num_workers"),
]


@pytest.mark.parametrize(("app", "overrides", "key"), BAD, ids=[" ".join(b[1]) for b in BAD])
def test_a_bad_number_is_one_line_naming_the_key_and_its_range(app, overrides, key) -> None:
    cfg = composed(app, overrides)
    with pytest.raises(ValueError) as raised:
        check_options(cfg)
    message = str(raised.value)
    assert message.startswith(f"{key}="), message
    assert " must be " in message
    assert "\n" not in message


GOOD = [  # edge values that are valid
    ("train", ["trainer.max_epochs=-1", "trainer.max_steps=100"]),
    ("train", ["trainer.gradient_clip_val=null"]),
    ("train", ["trainer.gradient_clip_val=0"]),
    ("train", ["trainer.val_check_interval=0.5", "++trainer.limit_val_batches=0"]),
    ("train", ["trainer.log_every_n_steps=0", "+trainer.fast_dev_run=true"]),
    ("train", ["callbacks/ema=on", "callbacks.ema.decay=0"]),
    ("train", ["data.val_size=0", "module.scheduler.warmup_steps=0"]),
    ("train", ["model=tarflow", "model.block.guidance=-0.5", "model.block.jacobi_tolerance=0"]),
    ("train", ["model=fm", f"model.sample_solver={{{SOLVER},solver:rk4,step_size:0.5}}"]),
    ("train", ["objective=flow_matching", "objective.sigma_min=0"]),
    ("train", ["model=ffjord_rnode", "objective.kinetic_weight=0", "objective.jacobian_weight=0"]),
    ("sample", ["y=all", "temperatures=0.5"]),
    ("sample", ["temperatures=[0]", "guidance=1.5"]),
    ("manipulate", ["indices=3", "alphas=-2", "class_a=1", "class_b=0"]),
    ("interpolate", ["a=some/image.png", "b=3"]),
]


@pytest.mark.parametrize(("app", "overrides"), GOOD, ids=[" ".join(g[1]) for g in GOOD])
def test_valid_edge_values_pass(app, overrides) -> None:
    check_options(composed(app, overrides))


def _names(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


@pytest.mark.parametrize("preset", _names("model"))
def test_every_model_preset_passes(preset: str) -> None:
    check_options(composed("train", [f"model={preset}"]))


@pytest.mark.parametrize("experiment", _names("experiment"))
def test_every_experiment_passes(experiment: str) -> None:
    check_options(composed("train", [f"experiment={experiment}"]))


@pytest.mark.parametrize(
    "overrides",
    [
        ["debug=fdr"],
        ["debug=limit"],
        ["debug=overfit"],
        ["debug=profiler"],
        ["callbacks/ema=on"],
        ["trainer=ddp_cpu"],
        ["logger=csv", "callbacks=minimal"],
        ["data=synthetic"],
        ["data=image_folder"],
    ],
)
def test_other_groups_pass(overrides: list[str]) -> None:
    check_options(composed("train", overrides))


@pytest.mark.parametrize("tool", TOOLS)
def test_every_tool_config_passes(tool: str) -> None:
    check_options(composed(tool, []))


# ------------------------------------------------------------------- the rules are complete


def _targets() -> dict[str, set[str]]:
    """Every ``_target_`` in conf/ (hydra's own plugins left out) -> its numeric keys there
    (lists of names, such as ``module.metrics``, are not numbers)."""
    found: dict[str, set[str]] = {}

    def walk(node) -> None:
        if isinstance(node, dict):
            target = node.get("_target_")
            if target and not target.startswith(("hydra_plugins", "optuna")):
                numeric = {
                    k
                    for k, v in node.items()
                    if isinstance(v, int | float | list)
                    and not isinstance(v, bool)
                    and not (isinstance(v, list) and v and all(isinstance(i, str) for i in v))
                    and k != "defaults"
                }
                found.setdefault(target, set()).update(numeric)
            for value in node.values():
                walk(value)

    for path in CONF.rglob("*.yaml"):
        walk(yaml.safe_load(path.read_text()))
    return found


def _numeric(annotation) -> bool:
    args = typing.get_args(annotation) or (annotation,)
    return any(
        a in (int, float) or typing.get_origin(a) in (list, tuple, typing.Sequence)
        for a in args
        if a is not bool
    ) or any(_numeric(a) for a in typing.get_args(annotation) if typing.get_args(a))


BUILT_AT_RUN_TIME = {"in_channels", "out_channels", "channels", "image_shape", "total_steps"}


@pytest.mark.parametrize("target", sorted(_targets()))
def test_every_numeric_parameter_of_a_target_has_a_rule(target: str) -> None:
    """glowlab's own targets: every int/float/sequence parameter of the signature; others
    (torch, Lightning): every numeric key the shipped configs set."""
    rules = RULES.get(target, {})
    keys = set(_targets()[target])
    if target.startswith("glowlab."):
        obj = get_object(target)
        function = obj.__init__ if inspect.isclass(obj) else obj
        hints = typing.get_type_hints(function)
        keys |= {name for name, hint in hints.items() if name != "return" and _numeric(hint)}
    missing = sorted(keys - BUILT_AT_RUN_TIME - set(rules))
    assert not missing, f"{target}: no range for {missing}"


@pytest.mark.parametrize("tool", ("train", *TOOLS))
def test_every_numeric_top_level_option_has_a_rule(tool: str) -> None:
    primary = yaml.safe_load((CONF / f"{tool}.yaml").read_text())
    numeric = {
        k for k, v in primary.items() if isinstance(v, int | float) and not isinstance(v, bool)
    }
    numeric |= {k for k, v in primary.items() if v is None and k in TOOL_OPTIONS}
    assert numeric <= set(TOOL_OPTIONS), sorted(numeric - set(TOOL_OPTIONS))


# ------------------------------------------------------------------- the console scripts


@pytest.mark.parametrize(
    ("script", "args", "expected"),
    [
        (
            "glowlab-train",
            ["trainer.gradient_clip_val=-1"],
            "glowlab-train: error: trainer.gradient_clip_val=-1 must be a finite number >= 0",
        ),
        (
            "glowlab-sample",
            ["ckpt=missing.ckpt", "temperatures=[nan]"],
            "glowlab-sample: error: temperatures=[nan] must be a non-empty list",
        ),
        (
            "glowlab-interpolate",
            ["ckpt=missing.ckpt", "temperature=inf"],
            "glowlab-interpolate: error: temperature=inf must be a finite number >= 0",
        ),
    ],
)
def test_console_scripts_refuse_before_any_work(tmp_path: Path, script, args, expected) -> None:
    """One stderr line, exit 1, no traceback; nothing is loaded first (the checkpoint does not
    even exist)."""
    command = [str(Path(sys.executable).parent / script), *args, f"hydra.run.dir={tmp_path}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        command, capture_output=True, text=True, cwd=tmp_path, env=env, timeout=120
    )
    assert result.returncode == 1, result.stderr
    lines = result.stderr.strip().splitlines()
    assert lines == [lines[0]] and lines[0].startswith(expected), result.stderr
    assert "Traceback" not in result.stderr + result.stdout


# ------------------------------------------------------------------- the Python API


def _python_cases():
    from functools import partial

    import torch

    from glowlab import models
    from glowlab.bijections.cnf import CNF, SolverOptions
    from glowlab.bijections.tarflow import TarFlowBlock
    from glowlab.models.parts import PriorChoice
    from glowlab.nets.conditioners import GlowConditioner, ResNetConditioner
    from glowlab.nets.dynamics import ConcatConvDynamics
    from glowlab.nets.transformer import ViTConditioner
    from glowlab.nets.unet import UNet
    from glowlab.objectives import RNODE, FlowMatching
    from glowlab.training.callbacks import ReconstructionMonitor, SampleGrid
    from glowlab.training.schedules import warmup_cosine

    shape = (1, 8, 8)
    block = partial(TarFlowBlock, patch_size=2, layers=1, width=8)
    vit = partial(ViTConditioner, width=8)

    def sgd():
        return torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)

    return [
        ("depth", lambda: models.glow(shape, levels=1, depth=-1)),
        ("width", lambda: models.glow(shape, levels=1, depth=1, width=2.5)),
        ("blocks", lambda: models.realnvp(shape, levels=1, depth=1, width=8, blocks=-1)),
        ("hidden", lambda: GlowConditioner(2, 4, hidden=0)),
        ("blocks", lambda: ResNetConditioner(2, 4, hidden=8, blocks=-1)),
        ("layers", lambda: models.tarflow(shape, blocks=1, block=partial(block, layers=-1))),
        ("mlp_ratio", lambda: models.tarflow(shape, 1, partial(block, mlp_ratio=2.5))),
        ("guidance", lambda: models.tarflow(shape, 1, partial(block, guidance=float("nan")))),
        ("jacobi_tolerance", lambda: TarFlowBlock(shape, 2, 8, 1, jacobi_tolerance=-1)),
        ("depth", lambda: models.jet(shape, 2, couplings=1, conditioner=partial(vit, depth=0))),
        ("couplings", lambda: models.jet(shape, 2, couplings=2.5, conditioner=vit)),
        ("kernel_size", lambda: models.maf(shape, levels=1, depth=1, width=8, kernel_size=3.0)),
        ("time_scale", lambda: models.flow_matching(shape, partial(UNet, time_scale=-1.0))),
        ("channel_mults", lambda: UNet(1, width=8, channel_mults=[1, 2.5])),
        ("rtol", lambda: SolverOptions(rtol=0)),
        ("time_length", lambda: CNF(4, time_length=-1.0)),
        ("hidden", lambda: ConcatConvDynamics(4, hidden=0)),
        ("objective.kinetic_weight", lambda: RNODE(kinetic_weight=-0.01)),
        ("objective.sigma_min", lambda: FlowMatching(sigma_min=2.0)),
        ("prior layers", lambda: PriorChoice("planar", 2.5)),
        ("final_fraction", lambda: warmup_cosine(sgd(), 10, 2, float("nan"))),
        ("n", lambda: SampleGrid("unused", n=0)),
        ("sample temperature", lambda: SampleGrid("unused", temperatures=(float("inf"),))),
        ("n", lambda: ReconstructionMonitor(n=0)),
    ]


@pytest.mark.parametrize("index", range(len(_python_cases())))
def test_the_python_api_refuses_the_same_numbers_in_one_line(index: int) -> None:
    option, build = _python_cases()[index]
    with pytest.raises(ValueError) as raised:
        build()
    message = str(raised.value)
    assert message.startswith(f"{option}=") and "\n" not in message, message
