"""The metrics by name: ``@register`` a :class:`~glowlab.metrics.base.Metric` class, select it
by name in a config (``module.metrics=[bpd,mean_pixel]``, ``glowlab-eval metrics=[...]``).

A metric defined outside glowlab (a user's module, a test file) is selected as
``package.module:name``: the module is imported, which registers its metrics, and ``name``
is looked up (``module.metrics=[bpd,mylab.metrics:sharpness]``).
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from glowlab.metrics.base import NEEDS, Metric

if TYPE_CHECKING:
    from glowlab.models.multiscale import MultiscaleFlow

REGISTRY: dict[str, type[Metric]] = {}


def register(cls: type[Metric]) -> type[Metric]:
    """Class decorator: make ``cls`` selectable by ``cls.name``. The name must be a plain
    word (it becomes the logged key) and not taken by another class."""
    name = getattr(cls, "name", None)
    if not isinstance(name, str) or not name.isidentifier():
        raise ValueError(f"{cls.__qualname__}.name={name!r} must be a word such as 'mean_pixel'")
    if not isinstance(getattr(cls, "higher_is_better", None), bool):
        raise ValueError(f"{cls.__qualname__}.higher_is_better must be True or False")
    unknown = set(cls.needs) - set(NEEDS)
    if unknown:
        raise ValueError(f"{cls.__qualname__}.needs has {sorted(unknown)}; choose from {NEEDS}")
    held = REGISTRY.get(name)
    if held is not None and _origin(held) != _origin(cls):
        raise ValueError(
            f"metric name {name!r} is taken by {_origin(held)}; give {_origin(cls)} another name"
        )
    REGISTRY[name] = cls
    return cls


def _origin(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def metric_class(spec: str) -> type[Metric]:
    """The class registered as ``spec``: a name, or ``package.module:name`` (imported first)."""
    spec = str(spec)
    module, _, name = spec.rpartition(":")
    if module:
        try:
            importlib.import_module(module)
        except ImportError as error:
            raise ValueError(
                f"metric {spec!r}: cannot import {module!r} ({error}); put the module on "
                "PYTHONPATH or install its package"
            ) from None
    if name not in REGISTRY:
        where = f"{module} registers no metric {name!r}" if module else f"unknown metric {name!r}"
        raise ValueError(
            f"{where}; choose from {sorted(REGISTRY)} or give package.module:name of a class "
            "decorated with @glowlab.metrics.register"
        )
    return REGISTRY[name]


def build_metrics(
    specs: str | Iterable[str],
    model: MultiscaleFlow | None,
    option: str,
    provides: Iterable[str],
    own: Mapping[str, Mapping[str, Any] | None] | None = None,
    **options,
) -> list[Metric]:
    """Build the metrics named by ``specs`` (one name or a list) for ``model``, each with
    those of ``options`` its ``__init__`` takes (e.g. ``per_image=True``: keep per-image
    values) and then its ``own`` options by metric name (``own={"fid": {"n": 5000}}``, from
    ``fid.n=5000``; None values keep the metric's default; a key its ``__init__`` lacks is
    refused). ``option`` names the config key in messages; a metric whose ``needs`` the
    caller does not ``provide`` is refused."""
    specs = [specs] if isinstance(specs, str) else [str(spec) for spec in specs]
    if not specs:
        raise ValueError(f"{option}=[] names no metric; give at least one, e.g. {option}=[bpd]")
    own = own or {}
    metrics = []
    for spec in specs:
        cls = metric_class(spec)
        missing = set(cls.needs) - set(provides)
        if missing:
            raise ValueError(
                f"{option}: metric {cls.name!r} needs {', '.join(sorted(missing))}, which this "
                f"loop does not give (it gives {', '.join(sorted(provides))})"
            )
        accepted = inspect.signature(cls).parameters
        chosen = {k: v for k, v in options.items() if k in accepted}
        for key, value in (own.get(cls.name) or {}).items():
            if key not in accepted or key == "model":
                takes = ", ".join(k for k in accepted if k != "model") or "none"
                raise ValueError(
                    f"{cls.name}.{key} is not an option of metric {cls.name!r}; its options: "
                    f"{takes}"
                )
            if value is not None:
                chosen[key] = value
        metrics.append(cls(model, **chosen))
    keys = [metric.key for metric in metrics]
    if len(set(keys)) < len(keys):
        raise ValueError(f"{option}={specs} names a metric twice; list each once")
    return metrics
