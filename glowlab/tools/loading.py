"""Rebuild a trained flow and its data from a glowlab checkpoint's saved run config."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Subset

from glowlab.cli import user_error
from glowlab.data import ImageDataModule
from glowlab.data.datamodule import BatchTransform
from glowlab.migration import translate_checkpoint
from glowlab.models.multiscale import MultiscaleFlow
from glowlab.training.checkpoints import load_checkpoint
from glowlab.validation import choose

SPLITS = ("train", "val", "test")


def resolve_device(device: str) -> torch.device:
    """``"auto"`` -> ``cuda`` when available, else ``cpu``; any other name as given."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def _instantiate(config: dict[str, Any], **kwargs: Any) -> Any:
    """``hydra.utils.instantiate``; a bad-input error (``cli.user_error``) is raised unwrapped."""
    try:
        return instantiate(config, **kwargs)
    except InstantiationException as error:
        cause = user_error(error)
        if cause is None:
            raise
        raise cause from None


def load_flow(
    ckpt_path: str | Path, device: str | torch.device = "cpu"
) -> tuple[MultiscaleFlow, dict[str, Any]]:
    """The flow of a glowlab checkpoint, in eval mode on ``device``, and the run's config.

    The model is rebuilt from ``checkpoint["glowlab"]["config"]["model"]`` with the saved
    ``image_shape`` and ``n_bits``, then given the ``model.*`` weights of ``state_dict``.
    """
    checkpoint = translate_checkpoint(load_checkpoint(ckpt_path))
    meta = checkpoint["glowlab"]
    config = meta.get("config") or {}
    if "model" not in config or "state_dict" not in checkpoint:
        raise ValueError(
            f"{ckpt_path} holds no model config or no weights (checkpoint['glowlab']['config']"
            "['model'], checkpoint['state_dict']); pass a .ckpt written by glowlab-train"
        )
    model = _instantiate(config["model"], image_shape=meta["image_shape"], n_bits=meta["n_bits"])
    weights = {
        key.removeprefix("model."): value
        for key, value in checkpoint["state_dict"].items()
        if key.startswith("model.")
    }
    try:
        model.load_state_dict(weights)
    except RuntimeError as error:
        raise ValueError(
            f"the weights in {ckpt_path} do not fit the model rebuilt from its config "
            f"({str(error).splitlines()[0]}); was the checkpoint edited?"
        ) from None
    return model.to(resolve_device(str(device))).eval(), config


def build_datamodule(
    run_config: dict[str, Any],
    overrides: DictConfig | dict[str, Any] | None = None,
    model: MultiscaleFlow | None = None,
) -> ImageDataModule:
    """The run's data module, changed by ``overrides`` (a tool's ``data`` node).

    ``overrides`` with a ``_target_`` (the user picked ``data=<name>``) replaces the saved data
    config; otherwise its non-null keys (``data.root=...``) replace the saved ones. With
    ``model`` given, the data must have the model's image shape and bit depth.
    """
    if isinstance(overrides, DictConfig):
        overrides = OmegaConf.to_container(overrides, resolve=True)
    overrides = overrides or {}
    if "_target_" in overrides:
        config = dict(overrides)
    elif "data" in run_config:
        changed = {key: value for key, value in overrides.items() if value is not None}
        config = {**run_config["data"], **changed}
    else:
        raise ValueError("the checkpoint's config has no data section; pick one with data=<name>")
    datamodule: ImageDataModule = _instantiate(config)
    if model is not None:
        _check_compatible(model, datamodule)
    return datamodule


def _check_compatible(model: MultiscaleFlow, datamodule: ImageDataModule) -> None:
    shape = tuple(datamodule.image_shape)
    if shape != model.image_shape:
        c, h, _ = model.image_shape
        raise ValueError(
            f"data {datamodule.name!r} has images of shape {shape} but the model takes "
            f"{model.image_shape}; choose data of that shape (e.g. data.image_size={h} "
            f"data.channels={c} where the dataset allows it)"
        )
    if datamodule.n_bits != model.n_bits:
        raise ValueError(
            f"data.n_bits={datamodule.n_bits} but the model was trained on "
            f"{model.n_bits}-bit images; set data.n_bits={model.n_bits}"
        )


def split_dataset(datamodule: ImageDataModule, split: str) -> Dataset:
    """The ``train``, ``val`` or ``test`` dataset (set up on first use)."""
    choose("split", split, SPLITS)
    datamodule.setup()
    return getattr(datamodule, f"{split}_set")


def split_loader(
    datamodule: ImageDataModule,
    split: str,
    batch_size: int | None = None,
    max_images: int | None = None,
) -> DataLoader:
    """Batches ``(uint8 (B, C, H, W), long (B,))`` of a split in order, never flipped.

    ``batch_size`` defaults to the data's eval batch size, so ``split="test"`` gives the
    batches the training run was tested on; ``max_images`` keeps the first N images.
    """
    dataset = split_dataset(datamodule, split)
    if max_images is not None:
        if max_images < 1:
            raise ValueError(f"max_images={max_images} must be >= 1 (or null for all images)")
        dataset = Subset(dataset, range(min(max_images, len(dataset))))
    return DataLoader(
        dataset,
        batch_size=batch_size or datamodule.eval_batch_size,
        shuffle=False,
        num_workers=datamodule.num_workers,
        collate_fn=BatchTransform(datamodule.n_bits, hflip=False),
    )


def images_at(
    dataset: Dataset, indices: Sequence[int], n_bits: int, option: str
) -> tuple[Tensor, Tensor]:
    """Items ``indices`` of ``dataset``: uint8 ``(N, C, H, W)`` reduced to ``n_bits``, labels
    ``(N,)``. ``option`` (the config key) is named in the error for a bad index."""
    size = len(dataset)
    for index in indices:
        if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < size:
            raise ValueError(
                f"{option}: index {index!r} is out of range for a split of {size} images; "
                f"use 0..{size - 1}"
            )
    return BatchTransform(n_bits, hflip=False)([dataset[i] for i in indices])


def model_labels(model: MultiscaleFlow, labels: Tensor) -> Tensor | None:
    """``labels`` for a class-conditional model, ``None`` for an unconditional one."""
    return labels if model.num_classes else None


def file_labels(model: MultiscaleFlow, n: int, y: int | None) -> Tensor | None:
    """Labels ``(n,)`` for images read from files: all ``y`` (class-conditional models only)."""
    if not model.num_classes:
        if y is not None:
            raise ValueError(f"y={y!r} but the model is not class-conditional; drop y")
        return None
    if isinstance(y, bool) or not isinstance(y, int) or not 0 <= y < model.num_classes:
        raise ValueError(
            f"the model is class-conditional ({model.num_classes} classes) and image files "
            f"carry no label: pass y=<class index in 0..{model.num_classes - 1}>, got y={y!r}"
        )
    return torch.full((n,), y, dtype=torch.long)
