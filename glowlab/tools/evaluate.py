"""``glowlab-eval``: bits per dim of a checkpoint on a data split, and its reconstruction error.

Examples::

    glowlab-eval ckpt=logs/train/runs/<time>/checkpoints/last.ckpt
    glowlab-eval ckpt=... split=val samples=16
    glowlab-eval ckpt=... data.root=/mnt/fashion-mnist     # the run's data, moved

Writes ``eval.json`` (summary), ``per_image_bpd.csv`` and ``bpd_histogram.png`` to the run dir.
For a model with a variational dequantizer (Flow++) the summary and the CSV also give the
importance-weighted bound over the same ``samples`` draws.
"""

from __future__ import annotations

import csv
import io
import logging
import math
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig
from torch import Tensor

from glowlab.cli import hydra_app, run_cli
from glowlab.console import say
from glowlab.data import ImageDataModule
from glowlab.models.multiscale import MultiscaleFlow
from glowlab.outputs import save_image, write_text
from glowlab.tools.cli import check_ckpt, check_device, output_dir, write_json
from glowlab.tools.likelihood import (
    IMPORTANCE_WEIGHTED,
    IMPORTANCE_WEIGHTED_ABSENT,
    model_bounds,
    per_image_bounds,
)
from glowlab.tools.loading import build_datamodule, load_flow, model_labels, split_loader
from glowlab.tools.plots import histogram
from glowlab.tools.progress import track
from glowlab.validation import check_int

log = logging.getLogger("glowlab.eval")


@torch.no_grad()
def reconstruction_error(
    model: MultiscaleFlow, batches: Iterable[tuple[Tensor, Tensor]], progress: bool = False
) -> dict[str, float | int]:
    """Invert the flow at the bin centres ``v = (x + 0.5) / 2^n_bits`` of every image.

    Returns ``recon_max_abs`` = ``max |v - invert(flow(v))|`` (in ``[0, 1)`` units) and
    ``recon_pixel_errors`` = how many pixels do not round back to ``x``.
    """
    device = next(model.parameters()).device
    max_abs, errors = 0.0, 0
    for x, labels in track(batches, "reconstruction", progress):
        x = x.to(device)
        y = model_labels(model, labels.to(device))
        v, _ = model.dequantize(x.to(model._dtype()), noise=0.5)
        v_back = model.invert(model.flow(v, y).latents, y)
        max_abs = max(max_abs, (v_back - v).abs().max().item())
        errors += int((model.dequantize.inverse(v_back) != x).sum())
    return {"recon_max_abs": max_abs, "recon_pixel_errors": errors}


def _sem(bpd: Tensor) -> float:
    """Standard error of the mean over images (NaN for a single image)."""
    return bpd.std().item() / math.sqrt(len(bpd)) if len(bpd) > 1 else float("nan")


def evaluate(
    model: MultiscaleFlow,
    datamodule: ImageDataModule,
    split: str = "test",
    samples: int = 4,
    seed: int = 1234,
    max_images: int | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Bits per dim of ``split`` under the model's bounds (``samples`` noise draws per image)
    and the reconstruction error.

    ``bpd`` is the model's training bound: uniform dequantization, or the variational bound
    of a variational dequantizer, whose model also gets ``importance_weighted_bpd`` from the
    same draws (``null`` otherwise; ``importance_weighted_note`` says why).

    A noise-augmented model (``model/dequantization=gaussian``) gets ``noisy_bpd`` and
    ``noisy_bpd_sem`` instead of ``bpd`` and ``bpd_sem``: its density of noisy images is not a
    bpd of the data (``glowlab.tools.likelihood.NOISE_AUGMENTED``).

    Returns the summary (``bpd``, ``bpd_sem``: standard error over images, ``bound``,
    ``bound_note``, ``importance_weighted_bpd``, ``importance_weighted_bpd_sem``,
    ``importance_weighted_note``, ``recon_max_abs``, ``recon_pixel_errors``, ...) plus float64
    ``(N,)`` tensors ``per_image_bpd`` and ``per_image_importance_weighted_bpd`` (or None) and
    ``labels`` ``(N,)``. Noise seeding: see ``glowlab.tools.likelihood.per_image_bounds``.
    ``progress`` draws a bar over each pass through the batches.
    """
    loader = split_loader(datamodule, split, max_images=max_images)
    bounds = model_bounds(model)
    per_bound, labels = per_image_bounds(model, loader, bounds, samples, seed, progress)
    bpd = per_bound[bounds[0].name]
    weighted = per_bound.get(IMPORTANCE_WEIGHTED.name)
    name = model.metric_name  # "noisy_bpd" for Gaussian noise augmentation: never "bpd"
    return {
        "split": split,
        "images": len(bpd),
        "samples": samples,
        "seed": seed,
        name: bpd.mean().item(),
        f"{name}_sem": _sem(bpd),
        "bound": bounds[0].name,
        "bound_note": bounds[0].note,
        "importance_weighted_bpd": None if weighted is None else weighted.mean().item(),
        "importance_weighted_bpd_sem": None if weighted is None else _sem(weighted),
        "importance_weighted_note": (
            IMPORTANCE_WEIGHTED_ABSENT if weighted is None else IMPORTANCE_WEIGHTED.note
        ),
        **reconstruction_error(model, loader, progress),
        "per_image_bpd": bpd,
        "per_image_importance_weighted_bpd": weighted,
        "labels": labels,
    }


def write_per_image_csv(
    path: Path,
    bpd: Tensor,
    labels: Tensor,
    importance_weighted: Tensor | None = None,
    column: str = "bpd",
) -> None:
    """``index,label,<column>`` rows (``column``: ``bpd``, or ``noisy_bpd`` for a noise-augmented
    model), one per image of the split (index = position in the split), plus an
    ``importance_weighted_bpd`` column when ``importance_weighted`` is given."""
    header, columns = ["index", "label", column], [bpd.tolist()]
    if importance_weighted is not None:
        header.append("importance_weighted_bpd")
        columns.append(importance_weighted.tolist())
    values_per_image = zip(*columns, strict=True)
    text = io.StringIO(newline="")
    writer = csv.writer(text)
    writer.writerow(header)
    writer.writerows(
        [i, int(y), *(f"{value:.6f}" for value in values)]
        for i, (y, values) in enumerate(zip(labels, values_per_image, strict=True))
    )
    write_text(path, text.getvalue(), what="table")


def run(cfg: DictConfig) -> dict[str, Any]:
    """The app: evaluate ``cfg.ckpt`` on ``cfg.split`` and write the outputs to the run dir."""
    started = time.perf_counter()
    check_int("max_images", cfg.max_images, optional=True)
    model, run_config = load_flow(check_ckpt(cfg.ckpt), check_device(cfg.device))
    datamodule = build_datamodule(run_config, cfg.get("data"), model)
    result = evaluate(
        model, datamodule, cfg.split, cfg.samples, cfg.seed, cfg.max_images, cfg.progress
    )
    out = output_dir(cfg)
    bpd, labels = result.pop("per_image_bpd"), result.pop("labels")
    weighted = result.pop("per_image_importance_weighted_bpd")
    name = model.metric_name  # bpd, or noisy_bpd (Gaussian noise augmentation)
    write_per_image_csv(out / "per_image_bpd.csv", bpd, labels, weighted, column=name)
    title = f"{datamodule.name} {cfg.split}: mean {result[name]:.4f} {name}"
    groups = {cfg.split: bpd}
    if weighted is not None:
        groups = {f"{cfg.split} variational": bpd, f"{cfg.split} importance-weighted": weighted}
    save_image(histogram(groups, "bits per dim", title, cfg.bins), out / "bpd_histogram.png")
    result.update(
        checkpoint=str(cfg.ckpt), data=datamodule.name, wall_time_s=time.perf_counter() - started
    )
    write_json(out / "eval.json", result)
    if weighted is None:
        weighted_text = "no variational dequantizer"
    else:
        weighted_text = (
            f"importance-weighted bpd {result['importance_weighted_bpd']:.4f} ± "
            f"{result['importance_weighted_bpd_sem']:.4f}"
        )
    say(
        f"glowlab-eval: {cfg.split} {name} {result[name]:.4f} ± {result[name + '_sem']:.4f} "
        f"({result['bound']}, samples={cfg.samples}, {result['images']} images; "
        f"{weighted_text}) | reconstruction max |Δv| {result['recon_max_abs']:.2e}, "
        f"{result['recon_pixel_errors']} pixels off | {out / 'eval.json'}",
        log,
    )
    return result


@hydra_app("glowlab-eval", "eval")
def main(cfg: DictConfig) -> dict[str, Any]:
    return run_cli("glowlab-eval", run, cfg)


if __name__ == "__main__":
    main()
