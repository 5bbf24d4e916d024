"""``glowlab-sample``: sample grids of a trained checkpoint at several temperatures.

Examples::

    glowlab-sample ckpt=logs/train/runs/<time>/checkpoints/last.ckpt
    glowlab-sample ckpt=... n=16 temperatures=[0,0.5,1.0] seed=3
    glowlab-sample ckpt=... y=all          # class-conditional: one row per class
    glowlab-sample ckpt=... y=3 guidance=1.5   # classifier-free guidance (label dropout)
    glowlab-sample ckpt=... denoise=true   # Tweedie denoising (Gaussian noise augmentation)

Writes ``samples_T<t>.png`` per temperature and ``temperatures.png`` (a row per temperature).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig
from torch import Tensor

from glowlab.cli import hydra_app, run_cli
from glowlab.console import say
from glowlab.images import image_grid
from glowlab.models.multiscale import MultiscaleFlow
from glowlab.outputs import save_image
from glowlab.sampling import check_guidance, configure_sampling, sampling_report
from glowlab.tools.cli import as_list, check_ckpt, check_device, log, output_dir, write_json
from glowlab.tools.loading import load_flow
from glowlab.tools.plots import labelled_grid
from glowlab.tools.progress import track
from glowlab.validation import check_int

Label = int | str | None


def sample_labels(model: MultiscaleFlow, n: int, y: Label) -> Tensor | None:
    """Labels of the samples: ``None`` for an unconditional model; for a class-conditional one
    ``y=None`` cycles through the classes ``(n,)``, ``y=k`` gives ``n`` of class ``k`` and
    ``y="all"`` gives ``n`` of every class, class by class ``(n * num_classes,)``."""
    classes = model.num_classes
    if not classes:
        if y is not None:
            raise ValueError(f"y={y!r} but the model is not class-conditional; drop y")
        return None
    if y is None:
        return torch.arange(n) % classes
    if y == "all":
        return torch.arange(classes).repeat_interleave(n)
    if isinstance(y, bool) or not isinstance(y, int) or not 0 <= y < classes:
        raise ValueError(f"y={y!r} must be a class index in 0..{classes - 1} or y=all")
    return torch.full((n,), y, dtype=torch.long)


def check_temperatures(temperatures: Sequence[float] | float) -> list[float]:
    """``temperatures`` as a non-empty list of floats ``>= 0``."""
    values = as_list(temperatures)
    if not values or any(not isinstance(t, int | float) or t < 0 for t in values):
        raise ValueError(
            f"temperatures={values} must be a non-empty list of numbers >= 0 "
            "(1 samples the model, 0 gives the mode), e.g. temperatures=[0.5,0.7,1.0]"
        )
    return [float(t) for t in values]


@torch.no_grad()
def sample_grids(
    model: MultiscaleFlow,
    n: int = 64,
    temperatures: Sequence[float] = (0.5, 0.7, 0.85, 1.0),
    y: Label = None,
    seed: int = 0,
    batch_size: int = 256,
    progress: bool = False,
    guidance: float | None = None,
    denoise: bool = False,
) -> dict[float, Tensor]:
    """``{temperature: uint8 (N, C, H, W)}`` samples, decoded from one standard-normal draw
    (seeded by ``seed``) shared by every temperature; ``N = n`` (``n * num_classes`` with
    ``y="all"``, see ``sample_labels``). Sampled in chunks of ``batch_size``, with a progress bar
    over the chunks if ``progress``. ``guidance``: classifier-free guidance weight ``w``
    (None: the model's own; ``glowlab.sampling``); ``denoise``: Tweedie denoising for a model
    trained with Gaussian noise augmentation (``MultiscaleFlow.denoise``)."""
    if not isinstance(denoise, bool):
        raise ValueError(f"denoise={denoise!r} must be true or false")
    if denoise:
        model.check_denoise()
    if guidance is not None:
        guidance = check_guidance(model, guidance)
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n={n!r} must be a positive number of samples")
    temperatures = check_temperatures(temperatures)
    labels = sample_labels(model, n, y)
    total = n if labels is None else len(labels)
    device = next(model.parameters()).device
    eps = model.latent_noise(total, seed)
    check_int("batch_size", batch_size)
    grids = {}
    for t in temperatures:
        chunks = []
        starts = range(0, total, batch_size)
        for start in track(starts, f"sampling T={t:g}", progress):
            part = slice(start, start + batch_size)
            y_part = None if labels is None else labels[part].to(device)
            noise = [e[part].to(device) for e in eps]
            images = model.sample(
                len(noise[0]), t, y=y_part, eps=noise, guidance=guidance, denoise=denoise
            )
            chunks.append(images.cpu())
        grids[t] = torch.cat(chunks)
    return grids


def save_sample_figures(
    grids: dict[float, Tensor], n_bits: int, out: Path, nrow: int | None = None, columns: int = 8
) -> list[Path]:
    """Write ``samples_T<t>.png`` per temperature (``nrow`` images a row) and
    ``temperatures.png``: one labelled row per temperature of ``columns`` evenly spaced
    samples. Returns the paths."""
    paths = []
    for t, images in grids.items():
        paths.append(out / f"samples_T{t:g}.png")
        save_image(image_grid(images, n_bits, nrow), paths[-1])
    total = len(next(iter(grids.values())))
    pick = torch.linspace(0, total - 1, min(columns, total)).round().long()
    rows = torch.stack([images[pick] for images in grids.values()])  # (T, K, C, H, W)
    paths.append(out / "temperatures.png")
    save_image(labelled_grid(rows, n_bits, [f"T={t:g}" for t in grids]), paths[-1])
    return paths


SAMPLING_KEYS = ("inversion", "jacobi_tolerance")
"""The tool's keys that are sampling options of the model's layers
(``glowlab.sampling.configure_sampling`` routes them; a model without one refuses it)."""


def run(cfg: DictConfig) -> dict[str, Any]:
    """The app: sample ``cfg.ckpt`` at ``cfg.temperatures`` and write the grids."""
    model, _ = load_flow(check_ckpt(cfg.ckpt), check_device(cfg.device))
    temperatures = check_temperatures(cfg.temperatures)
    y = cfg.y
    guidance, denoise = cfg.get("guidance"), cfg.get("denoise", False)
    options = configure_sampling(model, **{key: cfg.get(key) for key in SAMPLING_KEYS})
    started = time.perf_counter()
    grids = sample_grids(
        model, cfg.n, temperatures, y, cfg.seed, cfg.batch_size, cfg.progress, guidance, denoise
    )
    seconds = time.perf_counter() - started
    out = output_dir(cfg)
    paths = save_sample_figures(grids, model.n_bits, out, cfg.n if y == "all" else None)
    summary = {
        "checkpoint": str(cfg.ckpt),
        "n": cfg.n,
        "temperatures": temperatures,
        "y": y,
        "seed": cfg.seed,
        "guidance": guidance,
        "denoise": denoise,
        "seconds": round(seconds, 3),
        "images_per_s": round(cfg.n * len(temperatures) / seconds, 2),
        "files": [str(p) for p in paths],
    }
    if options:  # the model's sampling options, and what its layers did (last batch)
        summary["sampling"] = {**options, **sampling_report(model)}
    write_json(out / "sample.json", summary)
    say(f"glowlab-sample: {len(temperatures)} grids of {cfg.n} samples | {paths[-1]}", log)
    return summary


@hydra_app("glowlab-sample", "sample")
def main(cfg: DictConfig) -> dict[str, Any]:
    return run_cli("glowlab-sample", run, cfg)


if __name__ == "__main__":
    main()
