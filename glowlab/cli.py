"""What every glowlab Hydra app shares: a bad input ends in one ``prog: error: ...`` line."""

from __future__ import annotations

import collections.abc
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

import torch
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import InstantiationException
from hydra.utils import get_object
from lightning.fabric.utilities.exceptions import MisconfigurationException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue

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


def _instantiation_type_error(error: BaseException) -> ValueError | None:
    """A ``TypeError`` raised while instantiating a config node the user changed on the
    command line, as a ``ValueError`` naming the node and those overrides (None otherwise:
    without such overrides it is a bug and keeps its traceback)."""
    if not isinstance(error, InstantiationException) or not HydraConfig.initialized():
        return None
    if not isinstance(error.__cause__, TypeError):
        return None
    match = re.search(r"full_key: (\S+)", str(error))
    node = match.group(1) if match else ""
    changed = [
        text
        for text in HydraConfig.get().overrides.task
        if node and text.lstrip("+~").split("=")[0].startswith(f"{node}.")
    ]
    if not changed:
        return None
    return ValueError(
        f"{node}: a value has the wrong type ({error.__cause__}); check what you passed: "
        f"{' '.join(changed)}"
    )


def run_cli(prog: str, run: Callable[[DictConfig], Any], cfg: DictConfig) -> Any:
    """Return ``run(cfg)``; on a user error exit 1 with ``{prog}: error: <message>``.

    Command-line values of the wrong type (``model.depth=abc``) are user errors too
    (`check_override_types`)."""
    try:
        check_override_types(cfg)
        return run(cfg)
    except Exception as error:  # noqa: BLE001 - bad input becomes one line, bugs re-raise
        cause = user_error(error) or _instantiation_type_error(error)
        if cause is None:
            raise
        log.error("%s", _message(cause))
        sys.exit(f"{prog}: error: {_message(cause)}")


# ----------------------------------------------------------------- override value types

CONF_DIR = Path(__file__).resolve().parent / "conf"
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
    path = CONF_DIR / f"{config_name}.yaml"
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
