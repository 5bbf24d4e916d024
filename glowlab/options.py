"""Every number a user can set, checked in one place before anything is built.

``RULES`` maps a config node's ``_target_`` (a model recipe, a part, an objective, the data
module, the optimizer, the schedule, Lightning's ``Trainer``, a callback, a logger) to the
valid range of each of its numeric parameters; ``TOOL_OPTIONS`` does the same for the
top-level options of ``glowlab-train`` and the tools (``seed``, ``n``, ``temperatures``, ...).
``check_options`` walks a composed config and raises one ``ValueError`` naming the full key
and its valid range (``model.depth=-1 must be an integer >= 1``) for the first value out of
range, and for any NaN or infinite number anywhere, before a model, a data loader or a trainer
sees it. A node is checked where it is set: one that only refers to another
(``module.objective: ${objective}``) is not walked again, so the error names the key to change.

The constructors keep their own checks for Python users, with the same helpers
(``glowlab.validation``), so a notebook gets the same one-line errors.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from glowlab.validation import AnyOf, ListOf, Range, Spec, is_number, shown


def optional(spec: Range) -> Range:
    """``spec`` that also accepts null."""
    return replace(spec, optional=True)


COUNT = Range(int, 1)
COUNT0 = Range(int, 0)
POSITIVE = Range(float, 0, low_open=True)
NON_NEGATIVE = Range(float, 0)
FINITE = Range(float)
OPEN_UNIT = Range(float, 0, 1, low_open=True, high_open=True)  # (0, 1)
PROBABILITY = Range(float, 0, 1, high_open=True)  # [0, 1)
FRACTION = Range(float, 0, 1)  # [0, 1]
SEED = Range(int, 0, 2**32 - 1)
N_BITS = Range(int, 1, 8, note="8 for ordinary images")
TOLERANCE = Range(float, 0, low_open=True, example=1e-5)
TEMPERATURE = Range(float, 0, note="1 samples the model, 0 gives the mode")
CLASS_INDEX = Range(int, 0)

# ------------------------------------------------------------------------------ models
MODEL_COMMON: dict[str, Spec] = {  # glowlab.models.options.ModelOptions, a recipe's **shared
    "logit_alpha": Range(float, 0, 0.5, high_open=True, note="RealNVP uses 0.05"),
    "num_classes": optional(Range(int, 0, note="0 or null: unconditional")),
    "label_dropout": replace(PROBABILITY, note="0.1 is usual"),
}
LEVELS = {"levels": COUNT, "depth": COUNT}
MULTISCALE = {**LEVELS, "width": COUNT}
MODELS: dict[str, dict[str, Spec]] = {
    "glowlab.models.glow": {**MODEL_COMMON, **MULTISCALE, "blocks": COUNT, "seed": SEED},
    "glowlab.models.realnvp": {**MODEL_COMMON, **MULTISCALE, "blocks": COUNT},
    "glowlab.models.nice": {**MODEL_COMMON, **MULTISCALE, "blocks": COUNT},
    "glowlab.models.resflow": {
        **MODEL_COMMON,
        **MULTISCALE,
        "coeff": replace(OPEN_UNIT, note="the Lipschitz bound of each block", example=0.97),
        "n_power_iterations": COUNT,
        "exact_terms": COUNT,
        "eval_exact_terms": COUNT,
    },
    "glowlab.models.ffjord": {**MODEL_COMMON, **LEVELS},
    "glowlab.models.maf": {
        **MODEL_COMMON,
        **MULTISCALE,
        "kernel_size": Range(int, 1, note="odd", example=3),
        "hidden_layers": COUNT0,
    },
    "glowlab.models.tarflow": {**MODEL_COMMON, "blocks": COUNT},
    "glowlab.models.jet": {
        **MODEL_COMMON,
        "patch_size": COUNT,
        "couplings": COUNT,
        "channel_couplings": replace(COUNT0, note="0: spatial couplings only"),
        "seed": SEED,
    },
    "glowlab.models.flow_matching": MODEL_COMMON,
}
LAYER_CLASSES = {  # a layer's own; its recipe passes the model's num_classes/label_dropout
    "num_classes": optional(COUNT),
    "label_dropout": MODEL_COMMON["label_dropout"],
}
TRANSFORMER = {"width": COUNT, "heads": COUNT, "mlp_ratio": COUNT}
PARTS: dict[str, dict[str, Spec]] = {
    "glowlab.models.parts.PriorChoice": {"layers": COUNT},
    "glowlab.models.parts.DequantizationChoice": {
        "width": COUNT,
        "depth": COUNT,
        "sigma": replace(POSITIVE, example=0.05),
    },
    "glowlab.nets.conditioners.GlowConditioner": {
        "hidden": COUNT,
        "readout_reference": COUNT,
    },
    "glowlab.nets.conditioners.ResNetConditioner": {"hidden": COUNT, "blocks": COUNT},
    "glowlab.nets.conditioners.FlowPPConditioner": {
        "hidden": COUNT,
        "blocks": COUNT,
        "heads": COUNT,
        "dropout": PROBABILITY,
    },
    "glowlab.bijections.tarflow.TarFlowBlock": {  # tarflow's model.block
        **TRANSFORMER,
        **LAYER_CLASSES,
        "patch_size": COUNT,
        "layers": COUNT,
        "guidance": FINITE,
        "jacobi_tolerance": replace(NON_NEGATIVE, example=1e-5),
        "jacobi_max_iterations": optional(COUNT),
    },
    "glowlab.nets.transformer.ViTConditioner": {  # jet's model.conditioner
        **TRANSFORMER,
        "depth": COUNT,
        "patch_size": COUNT,
    },
    "glowlab.nets.unet.UNet": {  # flow_matching's model.field
        "width": COUNT,
        "channel_mults": ListOf(COUNT, example=[1, 2, 2]),
        "blocks": COUNT,
        "attention_levels": ListOf(Range(int, 0), min_items=0),
        "heads": COUNT,
        "dropout": PROBABILITY,
        "num_classes": LAYER_CLASSES["num_classes"],
        "time_scale": POSITIVE,
    },
    "glowlab.nets.dynamics.ConcatConvDynamics": {"hidden": COUNT, "layers": COUNT},  # ffjord's
    "glowlab.bijections.cnf.SolverOptions": {  # model.solver, model.sample_solver
        "rtol": TOLERANCE,
        "atol": TOLERANCE,
        "step_size": optional(replace(POSITIVE, example=0.1)),
    },
    "glowlab.bijections.cnf.ODEFlow": {"t_data": FINITE, "t_latent": FINITE},  # fm's model.ode
    "glowlab.bijections.cnf.CNF": {"time_length": POSITIVE},  # ffjord's model.block
    "glowlab.transforms.Affine": {"bound": replace(POSITIVE, example=3.0)},
    "glowlab.transforms.Spline": {
        "bins": Range(int, 2, note="8 in the NSF paper"),
        "bound": replace(POSITIVE, example=3.0),
    },
    "glowlab.transforms.LogisticMixture": {"components": COUNT},
}
OBJECTIVES: dict[str, dict[str, Spec]] = {  # the top-level objective node
    "glowlab.objectives.RNODE": {"kinetic_weight": NON_NEGATIVE, "jacobian_weight": NON_NEGATIVE},
    "glowlab.objectives.FlowMatching": {"sigma_min": replace(PROBABILITY, example=1e-4)},
}

# ------------------------------------------------------------------------------ training
DATA: dict[str, Spec] = {
    "image_size": optional(COUNT),
    "channels": optional(COUNT),
    "n_bits": N_BITS,
    "batch_size": COUNT,
    "eval_batch_size": optional(COUNT),
    "val_size": Range(int, 0, note="images held out for validation"),
    "train_subset": optional(COUNT),
    "num_workers": COUNT0,
    "seed": SEED,
}
ADAM = {
    "lr": replace(POSITIVE, example=1e-3),
    "betas": ListOf(PROBABILITY, min_items=2, example=[0.9, 0.999]),
    "eps": POSITIVE,
    "weight_decay": NON_NEGATIVE,
}
BATCH_LIMIT = AnyOf(
    (Range(int, 0), FRACTION), optional=True, example=1.0
)  # Lightning: a count or a fraction
TRAINER: dict[str, Spec] = {
    "max_epochs": optional(
        AnyOf((Range(int, 1), Range(int, -1, -1, note="no limit")), example=10)
    ),
    "min_epochs": optional(COUNT0),
    "max_steps": AnyOf((Range(int, 1), Range(int, -1, -1, note="no limit")), example=1000),
    "min_steps": optional(COUNT0),
    "gradient_clip_val": optional(
        replace(NON_NEGATIVE, note="the gradient norm; 0 or null: no clipping", example=1.0)
    ),
    "check_val_every_n_epoch": optional(COUNT),
    "val_check_interval": AnyOf(
        (Range(int, 1, note="batches"), Range(float, 0, 1, low_open=True, note="of an epoch")),
        text="a time such as '00:00:10:00'",
        optional=True,
    ),
    "log_every_n_steps": optional(replace(COUNT0, note="0: no step logging")),
    "num_sanity_val_steps": optional(Range(int, -1, note="-1: all")),
    "accumulate_grad_batches": COUNT,
    "limit_train_batches": AnyOf(
        (Range(int, 1), Range(float, 0, 1, low_open=True, note="of the batches")), optional=True
    ),
    "limit_val_batches": BATCH_LIMIT,
    "limit_test_batches": BATCH_LIMIT,
    "limit_predict_batches": BATCH_LIMIT,
    "overfit_batches": AnyOf((Range(int, 0), FRACTION)),
    "reload_dataloaders_every_n_epochs": COUNT0,
    "num_nodes": COUNT,
    "devices": AnyOf(
        (Range(int, 1), Range(int, -1, -1, note="all"), ListOf(Range(int, 0))),
        text="'auto' or a text list such as '0,1'",
    ),
    "fast_dev_run": AnyOf((Range(int, 0, note="batches"),), flag=True),
}
CALLBACKS: dict[str, dict[str, Spec]] = {
    "glowlab.training.callbacks.GuardedModelCheckpoint": {
        "save_top_k": Range(int, -1, note="-1: all"),
        "last_every_n_steps": optional(COUNT),
        "every_n_train_steps": optional(COUNT0),
        "every_n_epochs": optional(COUNT0),
    },
    "glowlab.training.callbacks.SampleGrid": {
        "n": COUNT,
        "temperatures": ListOf(TEMPERATURE, example=[0.5, 0.7, 1.0]),
        "seed": SEED,
    },
    "glowlab.training.callbacks.ReconstructionMonitor": {"n": COUNT},
    "glowlab.training.sample_quality.SampleQualityMonitor": {
        "every_n_validations": optional(replace(COUNT, note="null: only after the test")),
        "n": Range(int, 2, note="samples, and real images"),
        "seed": SEED,
        "temperature": TEMPERATURE,
    },
    "glowlab.training.callbacks.EMA": {
        "decay": replace(PROBABILITY, note="0.999 is usual, 0 keeps the last weights"),
        "update_every_n_steps": COUNT,
        "update_starting_at_step": optional(COUNT0),
    },
    "glowlab.console.ProgressBar": {"refresh_rate": COUNT0},
    "lightning.pytorch.callbacks.RichProgressBar": {"refresh_rate": COUNT0},
    "lightning.pytorch.callbacks.TQDMProgressBar": {"refresh_rate": COUNT0},
    "lightning.pytorch.loggers.CSVLogger": {"flush_logs_every_n_steps": COUNT},
}
DECAY_SCHEDULE: dict[str, Spec] = {
    "warmup_steps": COUNT0,
    "final_fraction": replace(FRACTION, note="of the peak learning rate at the end"),
}
TRAINING: dict[str, dict[str, Spec]] = {
    "glowlab.data.ImageDataModule": DATA,
    "glowlab.training.FlowModule": {"init_batch_size": COUNT, "eval_seed": SEED},
    "torch.optim.Adam": ADAM,
    "torch.optim.AdamW": ADAM,
    "torch.optim.Adamax": ADAM,
    "glowlab.training.schedules.warmup_constant": {"warmup_steps": COUNT0},
    "glowlab.training.schedules.warmup_cosine": DECAY_SCHEDULE,
    "glowlab.training.schedules.warmup_linear": DECAY_SCHEDULE,
    "lightning.Trainer": TRAINER,
    "lightning.pytorch.Trainer": TRAINER,
}
RULES: dict[str, dict[str, Spec]] = {**MODELS, **PARTS, **OBJECTIVES, **TRAINING, **CALLBACKS}
"""``_target_`` -> {parameter: valid range}."""

# ------------------------------------------------------------------------------ the apps
TOOL_OPTIONS: dict[str, Spec] = {
    "seed": SEED,
    "n": replace(COUNT, note="samples per temperature"),  # glowlab-sample
    "temperatures": ListOf(TEMPERATURE, single=True, example=[0.5, 0.7, 1.0]),
    "batch_size": COUNT,
    "guidance": optional(FINITE),
    "jacobi_tolerance": optional(replace(NON_NEGATIVE, example=1e-5)),
    "y": AnyOf((CLASS_INDEX,), words=("all",), optional=True),
    "samples": replace(COUNT, note="noise draws per image"),  # glowlab-eval, glowlab-score
    "max_images": optional(COUNT),
    "bins": replace(COUNT, note="histogram bins"),
    "train_images": COUNT,  # glowlab-score
    "steps": Range(int, 2, note="frames, both ends included"),  # glowlab-interpolate
    "temperature": TEMPERATURE,
    "a": AnyOf((CLASS_INDEX,), text="an image file", optional=True),
    "b": AnyOf((CLASS_INDEX,), text="an image file", optional=True),
    "class_a": CLASS_INDEX,  # glowlab-manipulate
    "class_b": CLASS_INDEX,
    "indices": ListOf(Range(int, 0), single=True, example=[0, 1, 2, 3]),
    "alphas": ListOf(FINITE, single=True, example=[-1, 0, 1]),
    "num_workers": COUNT,  # glowlab-prepare: processes writing litdata chunks
}
"""Top-level options of ``glowlab-train`` and the tools (the same name means the same thing
in every app)."""

UNTARGETED = {"data": DATA}
"""Nodes without a ``_target_`` whose keys are known: a tool's ``data`` node (its nulls keep
the checkpoint's values)."""


def check_options(cfg: DictConfig) -> None:
    """Raise one ``ValueError`` naming the full key and its valid range for the first number
    in ``cfg`` that is out of range, of the wrong type, NaN or infinite (``hydra`` excluded).
    Missing (``???``) and unresolvable values are left to the code that needs them."""
    for key, value, spec in _values(cfg, "", TOOL_OPTIONS, optional_all=False):
        if spec is not None:
            spec.check(key, value)
        else:
            _check_finite(key, value)


def _values(
    node: DictConfig, prefix: str, rules: dict[str, Spec], optional_all: bool
) -> Iterator[tuple[str, Any, Spec | None]]:
    """``(full key, value, rule or None)`` for every leaf below ``node``."""
    for name in node:
        name = str(name)
        key = f"{prefix}{name}"
        if name.startswith("_") or key == "hydra" or OmegaConf.is_missing(node, name):
            continue
        try:
            value = node[name]
        except Exception:  # noqa: BLE001 - an unresolvable interpolation is not a number
            continue
        if isinstance(value, DictConfig):
            if OmegaConf.is_interpolation(node, name):  # checked where it is set
                continue
            target = value.get("_target_") if "_target_" in value else None
            child = RULES.get(str(target), {}) if target else UNTARGETED.get(key, {})
            yield from _values(value, f"{key}.", child, optional_all=not target and bool(child))
            continue
        spec = rules.get(name)
        if spec is not None and optional_all and value is None:
            continue
        if isinstance(value, ListConfig):
            value = _plain(value)
        yield key, value, spec


def _plain(value: ListConfig) -> list:
    try:
        return OmegaConf.to_container(value, resolve=True)
    except Exception:  # noqa: BLE001 - unresolvable items are not ours to judge
        return []


def _check_finite(key: str, value: Any) -> None:
    """A NaN or infinite number anywhere (also inside a list) is an error."""
    items = value if isinstance(value, list) else [value]
    for item in items:
        if isinstance(item, list | dict):
            continue
        if is_number(item) and not math.isfinite(item):
            raise ValueError(f"{key}={shown(value)} must be finite (not NaN or infinite)")
