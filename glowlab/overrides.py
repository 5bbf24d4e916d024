"""Hydra's composition errors as one line with the closest valid key or option.

Hydra answers a typo (``model.dpth=4``) with "Key 'dpth' is not in struct ... To append to your
config use +model.dpth=4" (advice that then fails at instantiation), and an unknown group option
(``model=glw``) with a list of every option, one per line. `explain` turns such an error into
``model.dpth is not an option of model (glow_small); did you mean model.depth? (options: ...)``;
`sweep_jobs` expands a ``-m`` command line into its jobs' overrides, as Hydra's basic sweeper
does.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Sequence

from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import ConfigCompositionException, MissingConfigException, OverrideParseException
from omegaconf import DictConfig, OmegaConf

HIDDEN_KEYS = ("_target_", "_partial_", "_recursive_", "_convert_", "_args_")
SECOND_GUESS = 0.75
"""A second suggestion is shown only this similar (``model`` and ``module`` for ``modle``)."""


def _similarity(a: str, b: str) -> float:
    return difflib.SequenceMatcher(None, a, b).ratio()


def did_you_mean(name: str, options: Sequence[str], prefix: str = "") -> str:
    """``did you mean <prefix>a or <prefix>b? (options: a, b, c)`` with the options nearest to
    ``name`` by ``difflib``, or ``options: a, b, c`` when none is near."""
    near = difflib.get_close_matches(name, list(options), n=2, cutoff=0.6)
    near = near[:1] + [n for n in near[1:] if _similarity(name, n) >= SECOND_GUESS]
    listing = f"options: {', '.join(options)}"
    if not near:
        return listing
    return f"did you mean {' or '.join(prefix + n for n in near)}? ({listing})"


def key_of(override: str) -> str:
    """The key of an override (``+model.x=1`` -> ``model.x``)."""
    return override.lstrip("+~").split("=", 1)[0]


def _compose_without(config_name: str, overrides: Sequence[str], key: str) -> DictConfig | None:
    """The config composed with ``overrides`` minus those of ``key`` (None if that fails too)."""
    from hydra import compose

    rest = [o for o in overrides if key_of(o) != key and not key_of(o).startswith("hydra.")]
    try:
        return compose(config_name, overrides=rest, return_hydra_config=True)
    except Exception:  # noqa: BLE001 - another bad override: only the first one is explained
        return None


def _node_options(node: DictConfig) -> list[str]:
    return [str(k) for k in node if str(k) not in HIDDEN_KEYS]


def _missing_key(config_name: str, overrides: Sequence[str], key: str) -> str:
    """``key is not an option of <node> (<choice>); did you mean ...`` for a key not in the
    config."""
    cfg = _compose_without(config_name, overrides, key)
    parent, _, name = key.rpartition(".")
    if cfg is None:
        return f"{key} is not an option of this config"
    if not parent:
        groups = [g for g in cfg.hydra.runtime.choices if "/" not in g and g != "hydra"]
        options = sorted({*_node_options(cfg), *groups} - {"hydra"})
        return f"{key} is not an option of {config_name}; {did_you_mean(name, options)}"
    node = OmegaConf.select(cfg, parent, throw_on_missing=False)
    if not isinstance(node, DictConfig):
        return f"{key}: {parent} has no options (it is {node!r})"
    choice = cfg.hydra.runtime.choices.get(parent.replace(".", "/"))
    label = f"{parent} ({choice})" if choice else parent
    options = _node_options(node)
    return f"{key} is not an option of {label}; {did_you_mean(name, options, f'{parent}.')}"


def _missing_option(error: MissingConfigException, overrides: Sequence[str]) -> str | None:
    """``model=glw is not an option of model; did you mean model=glow? (options: ...)``."""
    if not error.missing_cfg_file or error.options is None:
        return None
    group, _, name = error.missing_cfg_file.rpartition("/")
    keys = [key_of(o) for o in overrides if "=" in o]
    key = next((k for k in keys if k.split("@")[0] == group), group)
    options = sorted(error.options)
    return f"{key}={name} is not an option of {group}; {did_you_mean(name, options, key + '=')}"


def explain(error: Exception, overrides: Sequence[str], config_name: str) -> str | None:
    """One line for a Hydra composition ``error`` of ``config_name`` with ``overrides`` (None
    when it is not one). Hydra's global state must be initialized (``initialize_config_dir``)."""
    if isinstance(error, OverrideParseException):
        grammar = "https://hydra.cc/docs/advanced/override_grammar/basic"
        return f"cannot read an override: {str(error).splitlines()[0]} (see {grammar})"
    if isinstance(error, MissingConfigException):
        return _missing_option(error, overrides)
    if not isinstance(error, ConfigCompositionException):
        return None
    text = str(error)
    if match := re.match(r"Could not override '([^']+)'\.", text):
        key = match.group(1)
        if match := re.search(r"Did you mean to override (\S+)\?", text):
            group = match.group(1)
            options = GlobalHydra.instance().config_loader().get_group_options(group.split("@")[0])
            return f"{key} is chosen as {group}=<option> (options: {', '.join(options)})"
        return _missing_key(config_name, overrides, key)
    if match := re.match(r"Could not append to config\. An item is already at '([^']+)'", text):
        key = match.group(1)
        value = next((o.split("=", 1)[1] for o in overrides if key_of(o) == key and "=" in o), "")
        return f"+{key}: {key} is already an option; set it without the +: {key}={value}"
    if match := re.match(r"Could not delete from config\. '([^']+)' does not exist", text):
        return f"~{_missing_key(config_name, overrides, match.group(1))}"
    if text.startswith("Ambiguous value for argument"):
        first = text.splitlines()[0]
        return f"{first}: write [a,b] for a list, quote it for text, or add -m to sweep over it"
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return "; ".join(lines) or None


def sweep_jobs(overrides: Sequence[str]) -> list[list[str]]:
    """The overrides of each job of a ``-m`` sweep over ``overrides`` (cartesian product of
    the comma lists and ranges, in Hydra's basic sweeper's order)."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper

    parsed = OverridesParser.create().parse_overrides(list(overrides))
    return [list(job) for batch in BasicSweeper.split_arguments(parsed, None) for job in batch]


def swept_keys(overrides: Sequence[str]) -> set[str]:
    """The keys that ``overrides`` sweep over (``model.depth=1,2``, ``seed=range(3)``)."""
    parsed = OverridesParser.create().parse_overrides(list(overrides))
    return {o.key_or_group for o in parsed if o.is_sweep_override()}
