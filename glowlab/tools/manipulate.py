"""``glowlab-manipulate``: Glow-style latent arithmetic along an attribute direction.

The direction of every level is the mean latent of class ``class_a`` minus that of
``class_b`` over the first ``max_images`` images of ``split``; an image moves to
``decode(encode(x) + alpha * direction)`` (Kingma & Dhariwal, "Glow", 2018, section 5.2).

Examples::

    glowlab-manipulate ckpt=... class_a=1 class_b=0 indices=[0,1,2,3]
    glowlab-manipulate ckpt=... class_a=7 class_b=9 alphas=[-2,-1,0,1,2] split=val

Writes ``manipulation.png``: a row per image, a column per alpha (alpha 0 is the input).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch
from omegaconf import DictConfig
from torch import Tensor

from glowlab.cli import hydra_app, run_cli
from glowlab.console import say
from glowlab.models.multiscale import MultiscaleFlow
from glowlab.outputs import save_image
from glowlab.tools.cli import as_list, check_ckpt, check_device, log, output_dir, write_json
from glowlab.tools.loading import (
    build_datamodule,
    images_at,
    load_flow,
    model_labels,
    split_dataset,
    split_loader,
)
from glowlab.tools.plots import labelled_grid
from glowlab.tools.progress import track
from glowlab.validation import check_int


@torch.no_grad()
def attribute_direction(
    model: MultiscaleFlow,
    batches: Iterable[tuple[Tensor, Tensor]],
    class_a: int,
    class_b: int,
    max_images: int = 1000,
    progress: bool = False,
) -> list[Tensor]:
    """Per-level ``mean z | class_a - mean z | class_b``, shapes ``latent_shapes[l]``, from
    the first ``max_images`` images of ``batches`` (``(uint8 (B, C, H, W), long (B,))``)."""
    if max_images < 1:
        raise ValueError(f"max_images={max_images} must be >= 1")
    if class_a == class_b:
        raise ValueError(f"class_a and class_b are both {class_a}; pick two different classes")
    device = next(model.parameters()).device
    sums = {c: [torch.zeros(s, dtype=torch.float64) for s in model.latent_shapes] for c in (0, 1)}
    counts, seen = [0, 0], 0
    for x, labels in track(batches, "class means", progress):
        x, labels = x[: max_images - seen], labels[: max_images - seen]
        seen += len(x)
        zs = model.encode(x.to(device), model_labels(model, labels.to(device)))
        for side, cls in enumerate((class_a, class_b)):
            chosen = (labels == cls).to(device)
            counts[side] += int(chosen.sum())
            for total, z in zip(sums[side], zs, strict=True):
                total += z[chosen].double().sum(0).cpu()
        if seen >= max_images:
            break
    for side, (option, cls) in enumerate((("class_a", class_a), ("class_b", class_b))):
        if counts[side] == 0:
            raise ValueError(
                f"{option}={cls}: no image of class {cls} among the {seen} images used; "
                "pick a class present in the split or raise max_images"
            )
    return [(a / counts[0] - b / counts[1]).float() for a, b in zip(sums[0], sums[1], strict=True)]


@torch.no_grad()
def manipulate(
    model: MultiscaleFlow,
    x: Tensor,
    direction: list[Tensor],
    alphas: Sequence[float] = (-1.0, -0.5, 0.0, 0.5, 1.0),
    y: Tensor | None = None,
) -> Tensor:
    """Integer images ``(N, C, H, W)`` moved by ``alpha * direction`` in every level's latent:
    uint8 ``(N, len(alphas), C, H, W)``; ``alpha = 0`` returns ``x`` exactly."""
    device = next(model.parameters()).device
    x = x.to(device)
    y = None if y is None else y.to(device)
    zs = model.encode(x, y)
    rows = [
        model.decode([z + a * d.to(device) for z, d in zip(zs, direction, strict=True)], y)
        for a in alphas
    ]
    return torch.stack(rows, 1).cpu()


def run(cfg: DictConfig) -> dict[str, Any]:
    """The app: build the direction from ``cfg.split`` and apply it to ``cfg.indices``."""
    for option in ("class_a", "class_b"):
        check_int(option, cfg[option], low=0)
    check_int("max_images", cfg.max_images)
    model, run_config = load_flow(check_ckpt(cfg.ckpt), check_device(cfg.device))
    datamodule = build_datamodule(run_config, cfg.get("data"), model)
    dataset = split_dataset(datamodule, cfg.split)
    if not datamodule.num_classes:
        raise ValueError(
            f"data {datamodule.name!r} has no labels; manipulation needs labelled classes "
            "(pick labelled data with data=<name>)"
        )
    indices, alphas = as_list(cfg.indices), as_list(cfg.alphas)
    if not indices:
        raise ValueError("indices=[] selects no image; pass e.g. indices=[0,1,2,3]")
    if not alphas or not all(isinstance(a, int | float) for a in alphas):
        raise ValueError(f"alphas={alphas} must be a list of numbers, e.g. alphas=[-1,0,1]")
    x, labels = images_at(dataset, indices, model.n_bits, "indices")
    loader = split_loader(datamodule, cfg.split, max_images=cfg.max_images)
    direction = attribute_direction(
        model, loader, cfg.class_a, cfg.class_b, cfg.max_images, cfg.progress
    )
    images = manipulate(model, x, direction, alphas, model_labels(model, labels))
    out = output_dir(cfg)
    row_labels = [f"#{i}" for i in indices]
    grid = labelled_grid(images, model.n_bits, row_labels, [f"{a:g}" for a in alphas])
    save_image(grid, out / "manipulation.png")
    summary = {
        "checkpoint": str(cfg.ckpt),
        "class_a": cfg.class_a,
        "class_b": cfg.class_b,
        "indices": indices,
        "alphas": [float(a) for a in alphas],
        "direction_norms": [float(d.norm()) for d in direction],
        "files": [str(out / "manipulation.png")],
    }
    write_json(out / "manipulate.json", summary)
    say(f"glowlab-manipulate: {len(x)} images x {len(alphas)} alphas | {summary['files'][0]}", log)
    return summary


@hydra_app("glowlab-manipulate", "manipulate")
def main(cfg: DictConfig) -> dict[str, Any]:
    return run_cli("glowlab-manipulate", run, cfg)


if __name__ == "__main__":
    main()
