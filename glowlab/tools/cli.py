"""What every tool's Hydra ``main`` shares: bad input becomes one ``error:`` line."""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig
from omegaconf.errors import MissingMandatoryValue

log = logging.getLogger("glowlab.tools")


def run_cli(prog: str, run: Callable[[DictConfig], Any], cfg: DictConfig) -> Any:
    """Return ``run(cfg)``; on a user error exit with ``{prog}: error: <message>``."""
    try:
        return run(cfg)
    except MissingMandatoryValue as error:
        message = f"{error.full_key} is required; pass {error.full_key}=<value>"
    except (ValueError, FileNotFoundError) as error:
        message = str(error)
    log.error("%s", message)
    sys.exit(f"{prog}: error: {message}")


def output_dir(cfg: DictConfig) -> Path:
    """The run's output folder (Hydra's run dir), created if needed."""
    path = Path(cfg.paths.output_dir)
    path.mkdir(parents=True, exist_ok=True)
    return path


def as_list(value: Any) -> list:
    """A config value given as a list (``indices=[0,1]``) or a single item (``indices=3``)."""
    return list(value) if isinstance(value, ListConfig | list | tuple) else [value]


def write_json(path: Path, summary: dict[str, Any]) -> None:
    path.write_text(json.dumps(summary, indent=2) + "\n")
