"""Small helpers the tools' Hydra apps share (``run_cli`` lives in ``glowlab.cli``)."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, ListConfig

from glowlab.outputs import write_text
from glowlab.training.checkpoints import folder_message

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
    write_text(path, json.dumps(summary, indent=2) + "\n", what="summary")


def check_device(device: Any) -> str:
    """``device`` if this machine has it (``auto`` always); else ``ValueError`` saying what
    to use instead."""
    device = str(device)
    if device == "auto":
        return device
    try:
        parsed = torch.device(device)
    except RuntimeError:
        raise ValueError(
            f"device={device!r} is not a device; use device=auto, cpu, cuda or cuda:<index>"
        ) from None
    if parsed.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(
                f"device={device} but CUDA is not available on this machine; use device=cpu "
                "(or device=auto)"
            )
        count = torch.cuda.device_count()
        if parsed.index is not None and parsed.index >= count:
            raise ValueError(
                f"device={device} but this machine has {count} CUDA device(s) "
                f"(cuda:0..cuda:{count - 1}); pick one of those or device=cpu"
            )
    elif parsed.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device={device} but MPS is not available here; use device=cpu")
    elif parsed.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"device={device!r} is not supported; use device=auto, cpu or cuda")
    return device


def check_ckpt(ckpt: Any) -> str:
    """``ckpt`` as text; a folder is a ``ValueError`` naming a checkpoint inside it."""
    path = Path(str(ckpt)).expanduser()
    if path.is_dir():
        raise ValueError(folder_message(path))
    return str(ckpt)
