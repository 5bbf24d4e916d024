"""Configs and checkpoints from before the composable-parts change (flat model options).

Until glowlab 0.1 a model config was one flat namespace (``model.coupling=spline
model.spline_bins=16 model.width=128``). The parts now have config groups of their own:
``model/transform``, ``model/conditioner``, ``model/prior``, ``model/dequantization``, each node
holding only its options (``model/transform=spline model.transform.bins=16``). So that a saved
command never changes meaning silently:

- ``check_overrides`` stops a command line that sets a key that went away, naming its new key;
- ``check_model_config`` does the same for a composed config (experiment files, ``+key=``) and
  refuses a part group replaced by a plain string (``model.prior=planar``: the preset's part
  options would be dropped silently; ``model/prior=planar`` is meant);
- ``translate_checkpoint`` rewrites the saved config and weights of an old checkpoint so the
  tools load it with the same numbers; resuming training from one is refused
  (``check_resumable``), since its optimizer state is laid out for the old parameters.

Since then (families from parts) the networks live in ``glowlab.nets`` and ``n_bits`` is the
data's alone (``data.n_bits``, given to the model at build time): ``translate_networks`` and
``drop_model_n_bits`` rewrite a saved model config of any format, ``check_model_config`` and
``check_overrides`` stop a ``model.n_bits`` naming ``data.n_bits``.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from glowlab.overrides import explain, key_of, sweep_jobs, swept_keys

CHECKPOINT_FORMAT = 2
"""``checkpoint["glowlab"]["format"]``: 2 since the composable parts; absent before."""

PART_GROUPS = ("transform", "conditioner", "prior", "dequantization")
COUPLING_RECIPES = ("glowlab.models.glow", "glowlab.models.realnvp", "glowlab.models.nice")
RECIPES_0_1 = (
    *COUPLING_RECIPES,
    "glowlab.models.maf",
    "glowlab.models.resflow",
    "glowlab.models.ffjord",
)
"""The recipes of glowlab 0.1, whose flat configs ``translate_model_config`` knows."""

MOVED_EVERYWHERE = {
    "coupling": "model/transform=<affine|additive|spline|mixture>",
    "scale": "model.transform.scale (model/transform=affine or affine_tanh)",
    "spline_bins": "model/transform=spline model.transform.bins=<n>",
    "tail_bound": "model/transform=spline model.transform.bound=<b>",
    "mixture_components": "model/transform=mixture model.transform.components=<n>",
    "planar_layers": "model/prior=planar model.prior.layers=<n>",
    "dequantizer_width": "model/dequantization=variational model.dequantization.width=<n>",
    "dequantizer_depth": "model/dequantization=variational model.dequantization.depth=<n>",
    "max_log_scale": "model.transform.bound (model/transform=affine_centred)",
}
MOVED_FOR_COUPLINGS = {
    "width": "model.conditioner.hidden",
    "blocks": "model.conditioner.blocks",
    "heads": "model.conditioner.heads",
    "attention": "model.conditioner.attention",
}


MOVED_TO_DATA = ("n_bits",)
"""Model keys that are the data's now: the model is built for ``data.<key>``."""


def _moved_to_data_message(key: str, value: Any) -> str:
    return (
        f"model.{key} is no longer an option: the model is built for the data's {key}; set "
        f"data.{key}={value} instead"
    )


def _moved_message(key: str, new: str) -> str:
    return (
        f"model.{key} is no longer an option: the parts of a flow step have config groups now; "
        f"use {new} (see README, 'Composing a model')"
    )


def check_model_config(model: Mapping[str, Any]) -> None:
    """Raise ``ValueError`` naming the new key for a flat pre-0.2 key or a string-valued part
    group in a composed model config."""
    check_family_config(model)
    target = model.get("_target_", "")
    moved = dict(MOVED_EVERYWHERE)
    if target in COUPLING_RECIPES:
        moved.update(MOVED_FOR_COUPLINGS)
    for key, new in moved.items():
        if key in model:
            raise ValueError(_moved_message(key, new))
    for key in MOVED_TO_DATA:
        if key in model:
            raise ValueError(_moved_to_data_message(key, model[key]))
    for group in PART_GROUPS:
        if isinstance(model.get(group), str):
            raise ValueError(
                f"model.{group}={model[group]} replaces the whole {group} node with a string; "
                f"choose the part with model/{group}={model[group]} (its options then live "
                f"under model.{group}.*)"
            )


def check_overrides(overrides: Sequence[str], compose_error: Exception | None) -> None:
    """Explain a failed composition caused by an override of a key that moved: raise
    ``ValueError`` with the new key when ``compose_error`` names one of ``overrides``."""
    if compose_error is None:
        return
    check_family_overrides(overrides, compose_error)
    text = str(compose_error)
    for override in overrides:
        key = key_of(override)
        if not key.startswith("model."):
            continue
        name = key.split(".")[1]
        if name in MOVED_TO_DATA and f"'{key}'" in text:
            raise ValueError(_moved_to_data_message(name, override.split("=", 1)[-1]))
        new = MOVED_EVERYWHERE.get(name) or MOVED_FOR_COUPLINGS.get(name)
        if new is not None and f"'{key}'" in text:
            raise ValueError(_moved_message(name, new))


def moved_keys_in(overrides: Sequence[str]) -> list[str]:
    """The overrides among ``overrides`` that set a ``model.<key>`` that moved."""
    moved = set(MOVED_EVERYWHERE) | set(MOVED_FOR_COUPLINGS)
    found = []
    for override in overrides:
        key = key_of(override)
        if key.startswith("model.") and key.split(".")[1] in moved:
            found.append(override)
    return found


SWEEP_FLAGS = ("-m", "--multirun")
VALUE_FLAGS = ("-c", "--cfg", "-p", "--package")
"""Hydra flags that leave the composed config as it is (``--cfg job`` prints it): the guard
checks the overrides beside them. A command line with another flag (``--config-dir DIR``,
``--help``, ``--info``) is left to Hydra."""


def _hydra_overrides(argv: Sequence[str]) -> list[str] | None:
    """The overrides of a Hydra command line, or None when it has a flag the guard leaves to
    Hydra."""
    overrides, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg in VALUE_FLAGS:
            skip = True
        elif arg.startswith("-"):
            if arg not in SWEEP_FLAGS and arg != "--resolve":
                return None
        else:
            overrides.append(arg)
    return overrides


def guard_command_line(prog: str, config_dir: str, config_name: str, argv: Sequence[str]) -> None:
    """Before a Hydra app composes, compose the command line's overrides (each job's, with
    ``-m``) and exit 1 with one line when that fails: a key that moved names its new key, a
    typo or an unknown option its closest valid one (``glowlab.overrides.explain``), instead
    of Hydra's "Key not in struct" advice or its list of every option."""
    overrides = _hydra_overrides(argv)
    if overrides is not None:  # hydra.* keys (a sweeper's params, run dirs) are Hydra's to check
        overrides = [o for o in overrides if not key_of(o).startswith("hydra.")]
    if not overrides:
        return
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    multirun = any(arg in SWEEP_FLAGS for arg in argv)
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir, version_base="1.3"):
            try:
                jobs = sweep_jobs(overrides) if multirun else [overrides]
            except Exception as error:  # noqa: BLE001 - explained below, or left to Hydra
                jobs, message = [], explain(error, overrides, config_name)
                if message:
                    raise SystemExit(f"{prog}: error: {message}") from None
            composed: set[str] = set()
            for number, job in enumerate(jobs):
                if composed.issuperset(job):
                    continue  # each value is composed once: a sweep's size is a sum, not product
                composed.update(job)
                try:
                    compose(config_name, overrides=job)
                except Exception as error:  # noqa: BLE001 - explained below, or left to Hydra
                    try:
                        check_overrides(job, error)
                    except ValueError as moved:
                        message = str(moved)
                    else:
                        message = explain(error, job, config_name)
                    if message is None:
                        return
                    where = ""
                    if multirun:  # the overrides parsed (sweep_jobs) when this runs
                        swept = [o for o in job if key_of(o) in swept_keys(overrides)]
                        where = f"job #{number} ({' '.join(swept or job)}): "
                    raise SystemExit(f"{prog}: error: {where}{message}") from None
    finally:
        GlobalHydra.instance().clear()


# ---------------------------------------------------------------------- checkpoints
def is_legacy(checkpoint: Mapping[str, Any]) -> bool:
    """True for a checkpoint written before the composable parts: no format number and a
    flat model config (no part group given as a node)."""
    meta = checkpoint.get("glowlab", {})
    if "format" in meta:
        return False
    model = (meta.get("config") or {}).get("model") or {}
    return not any(isinstance(model.get(group), Mapping) for group in PART_GROUPS)


def check_resumable(checkpoint: Mapping[str, Any], path: str) -> None:
    """Refuse to resume training from a pre-0.2 checkpoint, in one line."""
    if is_legacy(checkpoint):
        raise ValueError(
            f"{path} predates glowlab's composable model parts (flat model options): the tools "
            "load it (its config is translated), but training cannot resume from it because "
            "its optimizer state is laid out for the old parameters; start a new run"
        )


def _transform_node(old: Mapping[str, Any], target: str) -> dict[str, Any]:
    if target == "glowlab.models.maf":
        return {
            "_target_": "glowlab.transforms.Affine",
            "_partial_": True,
            "scale": "soft_clamp",
            "centred": True,
            "bound": old.get("max_log_scale", 3.0),
        }
    if target == "glowlab.models.nice":
        return {}
    kind = old.get("coupling", "affine")
    node: dict[str, Any] = {"_partial_": True}
    if kind == "affine":
        default_scale = "exp_tanh" if target == "glowlab.models.realnvp" else "sigmoid"
        node.update(_target_="glowlab.transforms.Affine", scale=old.get("scale", default_scale))
    elif kind == "additive":
        node.update(_target_="glowlab.transforms.Additive")
    elif kind == "spline":
        node.update(
            _target_="glowlab.transforms.Spline",
            bins=old.get("spline_bins", 8),
            bound=old.get("tail_bound", 3.0),
        )
    else:
        node.update(
            _target_="glowlab.transforms.LogisticMixture",
            components=old.get("mixture_components", 4),
        )
    return node


_CONDITIONERS = {
    "glow": ("GlowConditioner", ()),
    "resnet": ("ResNetConditioner", ("blocks",)),
    "flowpp": ("FlowPPConditioner", ("blocks", "heads", "attention")),
}
_DEFAULT_CONDITIONER = {
    "glowlab.models.glow": ("glow", 512, 2),
    "glowlab.models.realnvp": ("resnet", 64, 8),
    "glowlab.models.nice": ("glow", 128, 2),
}


def _conditioner_node(old: Mapping[str, Any], target: str) -> dict[str, Any]:
    kind, width, blocks = _DEFAULT_CONDITIONER[target]
    kind = old.get("conditioner", kind)
    name, options = _CONDITIONERS[kind]
    node = {
        "_target_": f"glowlab.bijections.conditioners.{name}",
        "_partial_": True,
        "hidden": old.get("width", width),
    }
    defaults = {"blocks": blocks, "heads": 4, "attention": True}
    node.update({option: old.get(option, defaults[option]) for option in options})
    return node


def translate_model_config(old: Mapping[str, Any]) -> dict[str, Any]:
    """A pre-0.2 flat model config as the equivalent composed one (a model of another recipe,
    e.g. a user's own target, is returned as is)."""
    target = old.get("_target_", "")
    if target not in RECIPES_0_1:
        return dict(old)
    new = {k: v for k, v in old.items() if k not in MOVED_EVERYWHERE and k not in PART_GROUPS}
    if target in COUPLING_RECIPES:
        for key in MOVED_FOR_COUPLINGS:
            new.pop(key, None)
        new["conditioner"] = _conditioner_node(old, target)
    transform = _transform_node(old, target)
    if transform:
        new["transform"] = transform
    new["prior"] = {
        "_target_": "glowlab.models.parts.PriorChoice",
        "kind": old.get("prior", "learned"),
        "layers": old.get("planar_layers", 4),
    }
    new["dequantization"] = {
        "_target_": "glowlab.models.parts.DequantizationChoice",
        "kind": old.get("dequantization", "uniform"),
        "width": old.get("dequantizer_width", 32),
        "depth": old.get("dequantizer_depth", 4),
    }
    return new


def translate_checkpoint(checkpoint: dict[str, Any]) -> dict[str, Any]:
    """An old checkpoint as the current code reads it: a pre-0.2 one with its model config
    translated and its weights renamed (the couplings' ``tanh_scale (1, C, 1, 1)`` is now
    ``transform.tanh_scale (C,)``), then any with its networks' targets in ``glowlab.nets``
    and without ``model.n_bits`` (``translate_networks``, ``drop_model_n_bits``)."""
    if is_legacy(checkpoint):
        checkpoint = _translate_0_1(checkpoint)
    return _translate_model_config(
        checkpoint, translate_networks, drop_model_n_bits, translate_family_parts
    )


def _translate_0_1(checkpoint: dict[str, Any]) -> dict[str, Any]:
    checkpoint = copy.copy(checkpoint)
    meta = dict(checkpoint["glowlab"])
    config = dict(meta.get("config") or {})
    if "model" in config:
        config["model"] = translate_model_config(config["model"])
    meta["config"] = config
    checkpoint["glowlab"] = meta
    if "state_dict" in checkpoint:
        checkpoint["state_dict"] = {
            _renamed(key): value.reshape(-1) if key.endswith(".tanh_scale") else value
            for key, value in checkpoint["state_dict"].items()
        }
    return checkpoint


def _translate_model_config(
    checkpoint: dict[str, Any], *steps: Callable[[Mapping[str, Any]], dict[str, Any]]
) -> dict[str, Any]:
    """``checkpoint`` (a shallow copy) with ``steps`` applied in turn to its saved model
    config; unchanged when it saved none."""
    meta = checkpoint.get("glowlab") or {}
    model = (meta.get("config") or {}).get("model")
    if not isinstance(model, Mapping):
        return checkpoint
    for step in steps:
        model = step(model)
    return {**checkpoint, "glowlab": {**meta, "config": {**meta["config"], "model": model}}}


MOVED_NETWORKS = {
    "glowlab.bijections.conditioners.": "glowlab.nets.conditioners.",
    "glowlab.bijections.autoregressive.MaskedConvConditioner": (
        "glowlab.nets.masked.MaskedConvConditioner"
    ),
}
"""Old ``_target_`` (or its module prefix, ending in ``.``) -> where the network lives now."""


def translate_networks(model: Mapping[str, Any]) -> dict[str, Any]:
    """A model config whose ``_target_``s (at any depth) name the networks' new modules:
    ``glowlab.bijections.conditioners.GlowConditioner`` -> ``glowlab.nets.conditioners.
    GlowConditioner`` (the classes and their weights are unchanged)."""

    def walk(node: Any) -> Any:
        if isinstance(node, list):
            return [walk(value) for value in node]
        if not isinstance(node, Mapping):
            return node
        new = {key: walk(value) for key, value in node.items()}
        target = new.get("_target_")
        if isinstance(target, str):
            for old, now in MOVED_NETWORKS.items():
                if target == old or (old.endswith(".") and target.startswith(old)):
                    new["_target_"] = now + target.removeprefix(old)
        return new

    return walk(model)


def drop_model_n_bits(model: Mapping[str, Any]) -> dict[str, Any]:
    """A model config without ``n_bits``: the tools build the model for the checkpoint's
    ``glowlab.n_bits`` (the data's bit depth it was trained on, the same number)."""
    return {key: value for key, value in model.items() if key != "n_bits"}


def _renamed(key: str) -> str:
    if key.endswith(".tanh_scale") and not key.endswith(".transform.tanh_scale"):
        return key.removesuffix("tanh_scale") + "transform.tanh_scale"
    return key


# ---------------------------------------------------------------------- families from parts
# TarFlow, Jet, flow matching and FFJORD took their layers' options flat until the layers got
# nodes of their own (``model.block.*``, ``model.conditioner.*``, ``model.field.*``,
# ``model.solver.*``, ``model.ode.*``) and the training losses became objectives
# (``objective.*``). ``translate_family_parts`` rewrites a saved flat config of these recipes;
# ``family_key_message`` names the new key of an old one.

_PART = tuple[str, bool, dict[str, str]]
"""A part node: its ``_target_``, whether it is a ``_partial_`` factory, and old flat key ->
its key in the node."""

_SOLVER: _PART = (
    "glowlab.bijections.cnf.SolverOptions",
    False,
    {"solver": "solver", "rtol": "rtol", "atol": "atol", "step_size": "step_size"},
)
FAMILY_PARTS: dict[str, dict[str, _PART]] = {
    "glowlab.models.tarflow": {
        "block": (
            "glowlab.bijections.tarflow.TarFlowBlock",
            True,
            {
                k: k
                for k in (
                    "patch_size",
                    "layers",
                    "width",
                    "heads",
                    "mlp_ratio",
                    "guidance",
                    "inversion",
                    "jacobi_tolerance",
                    "jacobi_max_iterations",
                    "bf16",
                )
            },
        )
    },
    "glowlab.models.jet": {
        "conditioner": (
            "glowlab.nets.transformer.ViTConditioner",
            True,
            {
                "block_depth": "depth",
                "width": "width",
                "heads": "heads",
                "mlp_ratio": "mlp_ratio",
                "bf16_conditioner": "bf16",
            },
        )
    },
    "glowlab.models.flow_matching": {
        "field": (
            "glowlab.nets.unet.UNet",
            True,
            {
                k: k
                for k in (
                    "width",
                    "channel_mults",
                    "blocks",
                    "attention_levels",
                    "heads",
                    "dropout",
                    "scale_shift",
                    "time_scale",
                )
            },
        ),
        "solver": _SOLVER,
        "ode": (
            "glowlab.bijections.cnf.ODEFlow",
            True,
            {"trace": "trace", "eval_trace": "eval_trace", "noise": "noise"},
        ),
    },
    "glowlab.models.ffjord": {
        "field": (
            "glowlab.nets.dynamics.ConcatConvDynamics",
            True,
            {"width": "hidden", "layers": "layers"},
        ),
        "solver": _SOLVER,
        "block": (
            "glowlab.bijections.cnf.CNF",
            True,
            {k: k for k in ("time_length", "trace", "eval_trace", "noise", "adjoint")},
        ),
    },
}
"""Per recipe: its part nodes and the old flat keys each took over."""

OLD_FAMILY_DEFAULTS = {
    "glowlab.models.tarflow": {"patch_size": 4},
    "glowlab.models.jet": {"width": 128},
}
"""The old recipes' defaults where the layer's own differ (a flat config without the key)."""

SAMPLE_SOLVER_KEYS = ("sample_solver", "sample_rtol", "sample_atol", "sample_step_size")
MOVED_TO_OBJECTIVE = {
    "sigma_min": "objective=flow_matching objective.sigma_min",
    "kinetic_weight": "objective=rnode objective.kinetic_weight",
    "jacobian_weight": "objective=rnode objective.jacobian_weight",
}
_FAMILY_PRESETS = {
    "tarflow": "glowlab.models.tarflow",
    "jet": "glowlab.models.jet",
    "fm": "glowlab.models.flow_matching",
    "ffjord": "glowlab.models.ffjord",
}
"""Preset name prefix -> recipe, for a command line that names its preset."""


def _family_new_key(target: str, key: str) -> str | None:
    """The new spelling of flat key ``key`` of recipe ``target``, or None if it did not move."""
    if key in MOVED_TO_OBJECTIVE and target in (
        "glowlab.models.flow_matching",
        "glowlab.models.ffjord",
    ):
        return MOVED_TO_OBJECTIVE[key]
    if target == "glowlab.models.flow_matching" and key in SAMPLE_SOLVER_KEYS:
        return (
            f"model.sample_solver.{key.removeprefix('sample_')} (model.sample_solver is a "
            "SolverOptions node like model.solver; null samples with model.solver)"
        )
    for node, (_, _, keys) in FAMILY_PARTS.get(target, {}).items():
        if key in keys:
            return f"model.{node}.{keys[key]}"
    return None


def family_key_message(target: str, key: str) -> str | None:
    """One line naming where flat ``model.<key>`` of recipe ``target`` went, or None."""
    new = _family_new_key(target, key)
    if new is None:
        return None
    return (
        f"model.{key} is no longer an option of {target.rsplit('.', 1)[-1]}: the layers' options "
        f"live in their own nodes and the losses are objectives now; use {new}"
    )


def check_family_config(model: Mapping[str, Any]) -> None:
    """Raise ``ValueError`` naming the new key for an old flat key of a TarFlow, Jet, flow
    matching or FFJORD model config."""
    target = model.get("_target_", "")
    nodes = {*FAMILY_PARTS.get(target, {}), "sample_solver"}  # old keys that are nodes now
    for key in model:  # (values read only for the nodes: image_shape may be ??? here)
        if key in nodes and not isinstance(model[key], str):
            continue
        message = family_key_message(target, key)
        if message is not None:
            raise ValueError(message)


def check_family_overrides(overrides: Sequence[str], compose_error: Exception) -> None:
    """Raise ``ValueError`` naming the new key when ``compose_error`` names an override of an
    old flat key of the preset the command line chose (``model=<preset>``)."""
    text = str(compose_error)
    presets = [o.split("=", 1)[1] for o in overrides if key_of(o) == "model" and "=" in o]
    targets = [
        t for prefix, t in _FAMILY_PRESETS.items() if presets and presets[-1].startswith(prefix)
    ]
    for override in overrides:
        key = key_of(override)
        if not key.startswith("model.") or f"'{key}'" not in text:
            continue
        name = key.split(".")[1]
        for target in targets or list(_FAMILY_PRESETS.values()):
            message = family_key_message(target, name)
            if message is not None:
                raise ValueError(message)


def translate_family_parts(model: Mapping[str, Any]) -> dict[str, Any]:
    """A flat TarFlow, Jet, flow-matching or FFJORD model config with its layers' options in
    their nodes (``FAMILY_PARTS``; the old recipes' defaults where a key is absent) and its
    objective's options dropped (the tools need no objective); any other config as it is."""
    target = model.get("_target_", "")
    parts = FAMILY_PARTS.get(target)
    if parts is None or any(isinstance(model.get(node), Mapping) for node in parts):
        return dict(model)
    old = {**OLD_FAMILY_DEFAULTS.get(target, {}), **model}
    new = {k: v for k, v in model.items() if k not in MOVED_TO_OBJECTIVE}
    for node, (node_target, partial, keys) in parts.items():
        values = {keys[k]: old[k] for k in keys if k in old}
        for k in keys:
            new.pop(k, None)
        new[node] = {"_target_": node_target, **({"_partial_": True} if partial else {}), **values}
    if target == "glowlab.models.flow_matching":
        new["sample_solver"] = _sample_solver(old)
        for k in SAMPLE_SOLVER_KEYS[1:]:
            new.pop(k, None)
    return new


def _sample_solver(old: Mapping[str, Any]) -> dict[str, Any] | None:
    """The old ``sample_*`` keys of a flow-matching config as a ``SolverOptions`` node (each
    unset one as for the likelihood; a set ``sample_solver`` takes only ``sample_step_size``),
    or None (sampling solves as the likelihood does)."""
    solver = old.get("sample_solver")
    rtol, atol = old.get("sample_rtol"), old.get("sample_atol")
    if solver is None and rtol is None and atol is None:
        return None
    return {
        "_target_": _SOLVER[0],
        "solver": solver or old.get("solver", "dopri5"),
        "rtol": old.get("rtol", 1e-5) if rtol is None else rtol,
        "atol": old.get("atol", 1e-5) if atol is None else atol,
        "step_size": old.get("sample_step_size") if solver is not None else old.get("step_size"),
    }
