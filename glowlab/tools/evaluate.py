"""``glowlab-eval``: bits per dim of a checkpoint on a data split, and its reconstruction error.

Examples::

    glowlab-eval ckpt=logs/train/runs/<time>/checkpoints/last.ckpt
    glowlab-eval ckpt=... split=val samples=16
    glowlab-eval ckpt=... data.root=/mnt/fashion-mnist     # the run's data, moved

Writes ``eval.json`` (summary), ``per_image_bpd.csv`` and ``bpd_histogram.png`` to the run dir.
"""

from __future__ import annotations

import csv
import logging
import math
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import hydra
import torch
from omegaconf import DictConfig
from torch import Tensor

from glowlab.cli import run_cli
from glowlab.data import ImageDataModule
from glowlab.models.multiscale import MultiscaleFlow
from glowlab.tools.cli import output_dir, write_json
from glowlab.tools.likelihood import UNIFORM_DEQUANTIZATION, LikelihoodBound, per_image_bpd
from glowlab.tools.loading import build_datamodule, load_flow, model_labels, split_loader
from glowlab.tools.plots import histogram
from glowlab.train import CONFIG_DIR

log = logging.getLogger("glowlab.eval")


@torch.no_grad()
def reconstruction_error(
    model: MultiscaleFlow, batches: Iterable[tuple[Tensor, Tensor]]
) -> dict[str, float | int]:
    """Invert the flow at the bin centres ``v = (x + 0.5) / 2^n_bits`` of every image.

    Returns ``recon_max_abs`` = ``max |v - invert(flow(v))|`` (in ``[0, 1)`` units) and
    ``recon_pixel_errors`` = how many pixels do not round back to ``x``.
    """
    device = next(model.parameters()).device
    max_abs, errors = 0.0, 0
    for x, labels in batches:
        x = x.to(device)
        y = model_labels(model, labels.to(device))
        v, _ = model.dequantize(x.to(model._dtype()), noise=0.5)
        v_back = model.invert(model.flow(v, y).latents, y)
        max_abs = max(max_abs, (v_back - v).abs().max().item())
        errors += int((model.dequantize.inverse(v_back) != x).sum())
    return {"recon_max_abs": max_abs, "recon_pixel_errors": errors}


def evaluate(
    model: MultiscaleFlow,
    datamodule: ImageDataModule,
    split: str = "test",
    samples: int = 4,
    seed: int = 1234,
    max_images: int | None = None,
    bound: LikelihoodBound = UNIFORM_DEQUANTIZATION,
) -> dict[str, Any]:
    """Bits per dim of ``split`` (``bound`` averaged over ``samples`` noise draws per image)
    and the reconstruction error.

    Returns the summary (``bpd``, ``bpd_sem``: standard error over images, ``bound``,
    ``bound_note``, ``recon_max_abs``, ``recon_pixel_errors``, ...) plus ``per_image_bpd``
    float64 ``(N,)`` and ``labels`` ``(N,)`` tensors. Noise seeding: see ``per_image_bpd``.
    """
    loader = split_loader(datamodule, split, max_images=max_images)
    bpd, labels = per_image_bpd(model, loader, samples, seed, bound)
    sem = bpd.std().item() / math.sqrt(len(bpd)) if len(bpd) > 1 else float("nan")
    return {
        "split": split,
        "images": len(bpd),
        "samples": samples,
        "seed": seed,
        "bpd": bpd.mean().item(),
        "bpd_sem": sem,
        "bound": bound.name,
        "bound_note": bound.note,
        "importance_weighted_bpd": None,  # needs a variational dequantizer (none yet)
        **reconstruction_error(model, loader),
        "per_image_bpd": bpd,
        "labels": labels,
    }


def write_per_image_csv(path: Path, bpd: Tensor, labels: Tensor) -> None:
    """``index,label,bpd`` rows, one per image of the split (index = position in the split)."""
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["index", "label", "bpd"])
        writer.writerows(
            [i, int(y), f"{b:.6f}"]
            for i, (y, b) in enumerate(zip(labels, bpd.tolist(), strict=True))
        )


def run(cfg: DictConfig) -> dict[str, Any]:
    """The app: evaluate ``cfg.ckpt`` on ``cfg.split`` and write the outputs to the run dir."""
    started = time.perf_counter()
    model, run_config = load_flow(cfg.ckpt, cfg.device)
    datamodule = build_datamodule(run_config, cfg.get("data"), model)
    result = evaluate(model, datamodule, cfg.split, cfg.samples, cfg.seed, cfg.max_images)
    out = output_dir(cfg)
    bpd, labels = result.pop("per_image_bpd"), result.pop("labels")
    write_per_image_csv(out / "per_image_bpd.csv", bpd, labels)
    title = f"{datamodule.name} {cfg.split}: mean {result['bpd']:.4f} bpd"
    histogram({cfg.split: bpd}, "bits per dim", title, cfg.bins).save(out / "bpd_histogram.png")
    result.update(
        checkpoint=str(cfg.ckpt), data=datamodule.name, wall_time_s=time.perf_counter() - started
    )
    write_json(out / "eval.json", result)
    print(
        f"glowlab-eval: {cfg.split} bpd {result['bpd']:.4f} ± {result['bpd_sem']:.4f} "
        f"({result['bound']}, samples={cfg.samples}, {result['images']} images; "
        f"no variational dequantizer) | reconstruction max |Δv| {result['recon_max_abs']:.2e}, "
        f"{result['recon_pixel_errors']} pixels off | {out / 'eval.json'}"
    )
    return result


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="eval")
def main(cfg: DictConfig) -> dict[str, Any]:
    return run_cli("glowlab-eval", run, cfg)


if __name__ == "__main__":
    main()
