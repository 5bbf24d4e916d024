"""Small helpers the tools' Hydra apps share (``run_cli`` lives in ``glowlab.cli``)."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig

log = logging.getLogger("glowlab.tools")


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
