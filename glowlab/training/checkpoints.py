"""Glowlab checkpoints: safe loading with clear errors, atomic writes, and config checks."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

from glowlab.outputs import write_atomic

# Keys of the data config that change neither the model nor the training data order (the
# readers of data.format give the same batches; tests/test_data_cache.py).
SAFE_DATA_KEYS = frozenset(
    {"root", "download", "num_workers", "eval_batch_size"}
    | {"format", "cache_dir", "cache_fallback", "stream_dir"}
)


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a glowlab Lightning checkpoint with ``torch.load(weights_only=True)``.

    Raises ``FileNotFoundError`` / ``ValueError`` that say what was wrong and what to pass.
    """
    path = Path(path)
    if path.is_dir():
        raise ValueError(folder_message(path))
    if not path.is_file():
        raise FileNotFoundError(
            f"checkpoint {path} does not exist; pass the path of a glowlab checkpoint, "
            "e.g. logs/train/runs/<time>/checkpoints/last.ckpt"
        )
    if path.stat().st_size == 0:
        raise ValueError(
            f"checkpoint {path} is empty (0 bytes; an interrupted copy or a full disk?); "
            "pass another checkpoint of the run, e.g. its best or an earlier last.ckpt"
        )
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many types for foreign or corrupt files
        first_line = next(iter(str(error).splitlines()), "")
        raise ValueError(
            f"{path} is not a readable glowlab checkpoint ({type(error).__name__}: "
            f"{first_line[:200]}); pass a .ckpt written by glowlab-train"
        ) from None
    if not isinstance(checkpoint, dict) or "glowlab" not in checkpoint:
        raise ValueError(
            f"{path} is not a glowlab checkpoint (no 'glowlab' entry); "
            "pass a .ckpt written by glowlab-train"
        )
    return checkpoint


def folder_message(folder: Path) -> str:
    """Why ``folder`` is not a checkpoint, naming one inside it to pass instead (``last.ckpt``
    first, the shallowest first)."""
    found = sorted(
        itertools.islice(folder.rglob("*.ckpt"), 10_000),
        key=lambda p: (p.name != "last.ckpt", len(p.parts), str(p)),
    )
    hint = f"e.g. {found[0]}" if found else "it holds no .ckpt file"
    return f"checkpoint {folder} is a folder, not a file; pass the .ckpt file ({hint})"


class AtomicCheckpointIO(TorchCheckpointIO):
    """Writes every checkpoint atomically through :func:`glowlab.outputs.write_atomic`.

    A CheckpointIO plugin rather than a ModelCheckpoint override because every write goes
    through it: ``ModelCheckpoint`` (best and ``last.ckpt``), ``trainer.save_checkpoint`` at a
    signal, and Lightning's SLURM ``hpc_ckpt_*.ckpt``. A failed write (``ENOSPC``, ``EACCES``)
    leaves the previous checkpoint untouched and raises an ``OutputWriteError`` naming the
    file and how to resume.
    """

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: str | Path, storage_options: Any = None
    ) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options")
        target = Path(path)
        write_atomic(
            target,
            lambda file: torch.save(checkpoint, file),
            what="checkpoint",
            advice=f"the previous checkpoint in {target.parent} is unchanged. Free space or fix "
            "permissions, then resume with ckpt_path=<the last checkpoint there>",
        )


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """Nested dicts -> ``{"a.b.c": leaf}`` (lists stay leaves)."""
    if not isinstance(tree, dict) or not tree:
        return {prefix: tree}
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        flat.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return flat


def config_differences(
    saved: dict[str, Any], current: dict[str, Any], sections: tuple[str, ...] = ("model", "data")
) -> dict[str, tuple[Any, Any]]:
    """``{"model.depth": (saved, current), ...}`` for every differing key of ``sections``,
    except data keys that change neither the model nor the data order (``SAFE_DATA_KEYS``)."""
    diffs: dict[str, tuple[Any, Any]] = {}
    for section in sections:
        old = flatten(saved.get(section) or {}, section)
        new = flatten(current.get(section) or {}, section)
        for key in sorted(old.keys() | new.keys()):
            if section == "data" and key.split(".")[1] in SAFE_DATA_KEYS:
                continue
            missing = "<unset>"
            if old.get(key, missing) != new.get(key, missing):
                diffs[key] = (old.get(key, missing), new.get(key, missing))
    return diffs


def check_config_unchanged(
    checkpoint: dict[str, Any],
    current: dict[str, Any],
    allowed: list[str] | tuple[str, ...] = (),
    what: str = "resume",
    sections: tuple[str, ...] = ("model", "data"),
) -> None:
    """Refuse (``ValueError`` listing the keys) when ``current`` differs from the config saved
    in ``checkpoint`` in its ``sections``, except keys in ``allowed`` (``"*"``: any key)."""
    saved = (checkpoint.get("glowlab") or {}).get("config") or {}
    if not saved or "*" in allowed:
        return
    diffs = {
        k: v
        for k, v in config_differences(saved, current, sections).items()
        if k not in allowed and k.split(".")[0] not in allowed
    }
    if not diffs:
        return
    listed = ", ".join(
        f"{key} ({old!r} in the checkpoint, now {new!r})" for key, (old, new) in diffs.items()
    )
    raise ValueError(
        f"cannot {what}: the config differs from the checkpoint's in {listed}. Drop those "
        f"overrides, or accept the change with allow_config_change=[{','.join(diffs)}]"
    )


def model_weights(checkpoint: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The flow's weights in a checkpoint (its ``model.*`` entries, the prefix removed)."""
    return {
        key.removeprefix("model."): value
        for key, value in checkpoint.get("state_dict", {}).items()
        if key.startswith("model.")
    }


def check_weights_fit(
    checkpoint: dict[str, Any], model: torch.nn.Module, what: str, advice: str
) -> None:
    """Refuse (one ``ValueError`` ending in ``advice``) when the checkpoint's weights do not
    fit ``model``: names missing or extra, or other shapes (an architecture change)."""
    saved = model_weights(checkpoint)
    wanted = model.state_dict()
    missing = [k for k in wanted if k not in saved]
    extra = [k for k in saved if k not in wanted]
    reshaped = [
        f"{k} {tuple(saved[k].shape)} -> {tuple(v.shape)}"
        for k, v in wanted.items()
        if k in saved and tuple(saved[k].shape) != tuple(v.shape)
    ]
    if not (missing or extra or reshaped):
        return
    parts = [
        f"{len(names)} {kind} (e.g. {names[0]})"
        for kind, names in (
            ("missing", missing),
            ("not in this model", extra),
            ("of another shape", reshaped),
        )
        if names
    ]
    raise ValueError(
        f"cannot {what}: its weights do not fit this model ({'; '.join(parts)}), so the "
        f"architecture changed; {advice}"
    )


def load_weights(path: str | Path, model: torch.nn.Module) -> int:
    """Load the ``model.*`` weights of the checkpoint at ``path`` into ``model`` (the EMA
    average where the run kept one) after :func:`check_weights_fit`; returns its step."""
    checkpoint = load_checkpoint(path)
    check_weights_fit(
        checkpoint,
        model,
        f"start from the weights of {path}",
        "init_weights needs a model with the same weight shapes: drop the model overrides",
    )
    model.load_state_dict(model_weights(checkpoint))
    return int(checkpoint.get("global_step", 0))


def checkpoint_step(path: str | Path) -> int | None:
    """The ``global_step`` saved in ``path``, or None when it is missing or unreadable."""
    try:
        return int(load_checkpoint(path).get("global_step"))
    except (OSError, ValueError, TypeError):
        return None
