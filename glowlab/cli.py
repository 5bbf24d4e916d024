"""What every glowlab Hydra app shares: a bad input ends in one ``prog: error: ...`` line."""

from __future__ import annotations

import collections.abc
import functools
import inspect
import logging
import numbers
import re
import sys
import types
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any

import hydra
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import InstantiationException
from hydra.utils import get_object
from lightning.fabric.utilities.exceptions import MisconfigurationException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue

from glowlab import sweeps
from glowlab.conf import CONFIG_DIR
from glowlab.console import FILE_ONLY, quiet_third_party
from glowlab.migration import check_model_config, guard_command_line
from glowlab.options import check_options
from glowlab.overrides import did_you_mean, key_of

USER_ERRORS = (
    ValueError,
    FileNotFoundError,
    FloatingPointError,
    MissingMandatoryValue,
    MisconfigurationException,
)
log = logging.getLogger("glowlab")


def user_error(error: BaseException) -> BaseException | None:
    """The user-facing cause of ``error`` (Hydra's instantiation wrapper removed), or None
    when ``error`` is not a bad input but a bug, which should keep its traceback."""
    if isinstance(error, InstantiationException) and isinstance(error.__cause__, USER_ERRORS):
        error = error.__cause__
    return error if isinstance(error, USER_ERRORS) else None


def _message(error: BaseException) -> str:
    if isinstance(error, MissingMandatoryValue):
        return f"{error.full_key} is required; pass {error.full_key}=<value>"
    return str(error)


def _instantiation_type_error(
    error: BaseException, cfg: DictConfig | None = None
) -> ValueError | None:
    """A ``TypeError`` raised while instantiating a config node the user changed on the
    command line, as a ``ValueError`` naming the node and those overrides (None otherwise:
    without such overrides it is a bug and keeps its traceback). ``cfg``, the composed config,
    adds the node's keys to the names suggested for an unexpected keyword."""
    if not isinstance(error, InstantiationException) or not HydraConfig.initialized():
        return None
    if not isinstance(error.__cause__, TypeError):
        return None
    match = re.search(r"full_key: (\S+)", str(error))
    node = match.group(1) if match else ""
    changed = [
        text
        for text in HydraConfig.get().overrides.task
        if node and key_of(text).startswith(f"{node}.")
    ]
    if not changed:
        return None
    unknown = re.search(r"unexpected keyword argument '(\w+)'", str(error.__cause__))
    target = re.search(r"call to target '([^']+)'", str(error))
    if unknown is not None and target is not None:
        keys = OmegaConf.select(cfg, node) if cfg is not None else None
        keys = [str(k) for k in keys] if isinstance(keys, DictConfig) else []
        return ValueError(_not_a_parameter(node, unknown.group(1), target.group(1), keys))
    return ValueError(
        f"{node}: a value has the wrong type ({error.__cause__}); check what you passed: "
        f"{' '.join(changed)}"
    )


def _not_a_parameter(node: str, name: str, target: str, keys: list[str]) -> str:
    """``model.dpth is not a parameter of model (glowlab.models.glow); did you mean
    model.depth? (options: ...)``: a key added with ``+`` that the target does not take. The
    options are the node's ``keys`` and the target's named parameters."""
    obj = get_object(target)
    signature = inspect.signature(obj.__init__ if inspect.isclass(obj) else obj)
    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    named = [p.name for p in signature.parameters.values() if p.kind in kinds]
    names = [n for n in dict.fromkeys([*keys, *named]) if n not in (name, "self")]
    names = [n for n in names if not (n.startswith("_") and n.endswith("_"))]
    return (
        f"{node}.{name} is not a parameter of {node} ({target}); "
        f"{did_you_mean(name, names, f'{node}.')}"
    )


def config_error(error: BaseException, cfg: DictConfig | None = None) -> str | None:
    """The one-line message of a user error (bad input) with config ``cfg``, or None for a
    bug."""
    cause = user_error(error) or _instantiation_type_error(error, cfg)
    return None if cause is None else _message(cause)


def check_config(cfg: DictConfig) -> None:
    """The checks a composed config passes before anything is built (also run on every job of
    a sweep before any job starts, by ``glowlab.sweep_check.SweepCallback``): value types of
    the command line, numbers' ranges (``glowlab.options``), moved model keys."""
    check_override_types(cfg)
    check_options(cfg)
    if isinstance(cfg.get("model"), DictConfig):
        check_model_config(cfg.model)


def run_cli(prog: str, run: Callable[[DictConfig], Any], cfg: DictConfig) -> Any:
    """Return ``run(cfg)``; on a user error exit 1 with ``{prog}: error: <message>`` (also
    in the run's log file, printed once).

    Command-line values of the wrong type (``model.depth=abc``) are user errors too
    (`check_override_types`). In a ``-m`` sweep a failed job writes ``failed.json`` and
    returns None, so the sweep goes on (``glowlab.sweeps``)."""
    quiet_third_party()
    if sweeps.in_sweep() and sweeps.refused_before_launch():
        return None
    try:
        check_config(cfg)
        return run(cfg)
    except Exception as error:  # noqa: BLE001 - bad input becomes one line, bugs re-raise
        message = config_error(error, cfg)
        if sweeps.in_sweep():
            sweeps.record_failure(prog, message or f"{type(error).__name__}: {error}")
            if message is None:
                raise
            return None
        if message is None:
            raise
        log.error("%s: error: %s", prog, message, extra=FILE_ONLY)
        sys.exit(f"{prog}: error: {message}")


def hydra_app(prog: str, config_name: str) -> Callable[[Callable[[DictConfig], Any]], Callable]:
    """``@hydra.main`` on ``conf/<config_name>.yaml`` for a glowlab app. The app, called
    without a config, first checks the command line (``migration.guard_command_line``: a typo
    or an unknown option is one line, not Hydra's advice); called with a composed config (as
    tests do) it runs the task on it."""

    def wrap(task: Callable[[DictConfig], Any]) -> Callable:
        app = hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name=config_name)
        hydra_main = app(task)

        @functools.wraps(task)
        def main(cfg: DictConfig | None = None) -> Any:
            if cfg is None:
                quiet_third_party()
                guard_command_line(prog, CONFIG_DIR, config_name, sys.argv[1:])
            return hydra_main(cfg)

        return main

    return wrap


# ----------------------------------------------------------------- override value types

_TYPE_WORDS = {bool: "true or false", int: "an integer", float: "a number", list: "a list"}
_EXAMPLES = {bool: "true", int: "<integer>", float: "<number>", list: "[<item>,<item>]"}


def check_override_types(cfg: DictConfig) -> None:
    """Raise ``ValueError`` naming the key for a command-line ``key=text`` where a number,
    a boolean or a list is expected.

    The expected type of a key in a ``_target_`` node is its parameter's annotation in the
    target's signature (keys whose annotation admits text, or that it cannot tell, pass);
    for a top-level key it is the type of its value in the app's primary config file.
    """
    if not HydraConfig.initialized():
        return
    hydra_cfg = HydraConfig.get()
    defaults = _primary_defaults(hydra_cfg.job.config_name)
    for key in _text_override_keys(cfg, list(hydra_cfg.overrides.task)):
        expected = _expected_type(cfg, key, defaults)
        if expected is not None:
            value = OmegaConf.select(cfg, key)
            default = defaults.get(key) if "." not in key else None
            example = _EXAMPLES[expected] if default is None else _override_text(default)
            raise ValueError(
                f"{key}={value!r} is not {_TYPE_WORDS[expected]}: {key} takes "
                f"{_TYPE_WORDS[expected]}; pass e.g. {key}={example}"
            )


def _override_text(value: Any) -> str:
    """``value`` as it is written on the command line (``true``, ``[0.5,1.0]``, ``8``)."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, list):
        return "[" + ",".join(_override_text(v) for v in value) + "]"
    return str(value)


def _text_override_keys(cfg: DictConfig, overrides: list[str]) -> list[str]:
    """Keys of ``key=value`` overrides whose value in ``cfg`` is text (group choices such as
    ``model=glow`` select a node, not text, and are left out)."""
    keys = []
    for override in OverridesParser.create().parse_overrides(overrides):
        key = override.key_or_group
        if override.is_delete() or key.startswith("hydra"):
            continue
        try:
            value = OmegaConf.select(cfg, key, throw_on_missing=False)
        except Exception:  # noqa: BLE001 - an unresolvable value is not ours to judge
            continue
        if isinstance(value, str):
            keys.append(key)
    return keys


def _primary_defaults(config_name: str | None) -> dict[str, Any]:
    """The app's primary config file as plain, unresolved values (empty when there is none)."""
    path = Path(CONFIG_DIR) / f"{config_name}.yaml"
    if not config_name or not path.is_file():
        return {}
    return OmegaConf.to_container(OmegaConf.load(path), resolve=False)


def _expected_type(cfg: DictConfig, key: str, defaults: dict[str, Any]) -> type | None:
    """The non-text type ``key`` takes, or None when text is fine or nothing tells."""
    parent_key, _, name = key.rpartition(".")
    parent = OmegaConf.select(cfg, parent_key) if parent_key else cfg
    if isinstance(parent, DictConfig) and "_target_" in parent:
        return _annotated_type(str(parent._target_), name)
    if parent_key:
        return None
    kind = type(defaults.get(name))
    return kind if kind in _TYPE_WORDS else None


def _annotated_type(target: str, name: str) -> type | None:
    """The non-text type of parameter ``name`` of ``target`` per its annotation, or None."""
    try:
        obj = get_object(target)
        function = obj.__init__ if inspect.isclass(obj) else obj
        annotation = typing.get_type_hints(function).get(name)
    except Exception:  # noqa: BLE001 - unknown targets or unresolvable hints: no opinion
        return None
    kinds = _annotation_kinds(annotation)
    if kinds is None or str in kinds:
        return None
    for kind in (list, float, int, bool):
        if kind in kinds:
            return kind
    return None


def _annotation_kinds(annotation: Any) -> set[type] | None:
    """The plain types an annotation admits (int, float, bool, str, list, NoneType), or None
    when it admits something this check cannot reason about (Any, Literal, other classes).
    Tensors and ``numbers`` types count as numbers."""
    if annotation is None:
        return None
    if annotation in (int, float, bool, str, type(None)):
        return {annotation}
    if inspect.isclass(annotation) and issubclass(annotation, numbers.Number | torch.Tensor):
        return {float}
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        parts = [_annotation_kinds(arg) for arg in typing.get_args(annotation)]
        return None if any(p is None for p in parts) else set().union(*parts)
    if origin in (list, tuple, collections.abc.Sequence):
        return {list}
    return None
