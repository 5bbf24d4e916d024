"""Loading glowlab checkpoints safely, with clear errors for anything else."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a glowlab Lightning checkpoint with ``torch.load(weights_only=True)``.

    Raises ``FileNotFoundError`` / ``ValueError`` that say what was wrong and what to pass.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"checkpoint {path} does not exist; pass the path of a glowlab checkpoint, "
            "e.g. logs/train/runs/<time>/checkpoints/last.ckpt"
        )
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many types for foreign or corrupt files
        raise ValueError(
            f"{path} is not a readable glowlab checkpoint ({type(error).__name__}: "
            f"{str(error).splitlines()[0][:200]}); pass a .ckpt written by glowlab-train"
        ) from None
    if not isinstance(checkpoint, dict) or "glowlab" not in checkpoint:
        raise ValueError(
            f"{path} is not a glowlab checkpoint (no 'glowlab' entry); "
            "pass a .ckpt written by glowlab-train"
        )
    return checkpoint
