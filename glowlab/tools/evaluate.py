"""``glowlab-eval``: the metrics of a checkpoint on a data split (bits per dim by default), and
its reconstruction error.

Examples::

    glowlab-eval ckpt=logs/train/runs/<time>/checkpoints/last.ckpt
    glowlab-eval ckpt=... split=val samples=16
    glowlab-eval ckpt=... metrics=[bpd]                     # only bpd (default [bpd,iw_bound])
    glowlab-eval ckpt=... data.root=/mnt/fashion-mnist     # the run's data, moved

Writes ``eval.json`` (summary), ``per_image_bpd.csv`` and ``bpd_histogram.png`` to the run dir.
For a model with a variational dequantizer (Flow++) the summary and the CSV also give the
importance-weighted bound (``iw_bound``) over the same ``samples`` draws.
"""

from __future__ import annotations

import csv
import io
import itertools
import logging
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from torch import Tensor

from glowlab.cli import hydra_app, run_cli
from glowlab.console import say
from glowlab.data import ImageDataModule
from glowlab.metrics import IMAGE_LOOP, build_metrics, measure
from glowlab.models.multiscale import MultiscaleFlow
from glowlab.outputs import save_image, write_text
from glowlab.sampling import configure_sampling, sampling_report
from glowlab.tools.cli import check_ckpt, check_device, output_dir, write_json
from glowlab.tools.loading import build_datamodule, load_flow, model_labels, split_loader
from glowlab.tools.plots import histogram
from glowlab.tools.progress import track
from glowlab.tools.sample import SAMPLING_KEYS
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


def evaluate(
    model: MultiscaleFlow,
    datamodule: ImageDataModule,
    split: str = "test",
    samples: int = 4,
    seed: int = 1234,
    max_images: int | None = None,
    progress: bool = False,
    metrics: Sequence[str] = ("bpd", "iw_bound"),
    own: Mapping[str, Mapping[str, Any] | None] | None = None,
    sampling: Mapping[str, Any] | None = None,
    cache_dir: str | Path = "logs/cache",
) -> dict[str, Any]:
    """The ``metrics`` (``glowlab.metrics``) of ``split`` under ``samples`` dequantization draws
    per image, and the reconstruction error.

    ``bpd`` is the model's training bound (uniform dequantization, or the variational bound of
    a variational dequantizer) with ``bpd_sem``, its standard error over images, its parts,
    ``bound`` and ``bound_note``; ``iw_bound`` gives ``importance_weighted_bpd`` from the same
    draws (``null`` without a variational dequantizer; ``importance_weighted_note`` says why).
    A noise-augmented model (``model/dequantization=gaussian``) gets ``noisy_bpd`` and
    ``noisy_bpd_sem`` instead of ``bpd`` and ``bpd_sem``: its density of noisy images is not a
    bpd of the data.

    Sample metrics (``fid``, ``kid``) draw their own samples with ``sampling``
    (``temperature``, ``guidance``, ``denoise``) and compare their features with reference
    statistics of the data (cached under ``cache_dir``); ``own`` gives each metric its options
    by name (``{"fid": {"n": 10000}}``). Without a likelihood metric only one batch is read
    and the reconstruction error is skipped.

    Returns the summary (``split``, ``images``, ``samples``, ``seed``, ``metrics``: their main
    keys, every metric's keys and notes, ``recon_max_abs``, ``recon_pixel_errors``) plus
    ``per_image_<key>``, float64 ``(N,)``, for each metric's per-image values
    (``per_image_bpd``, ...) and ``labels`` ``(N,)``. Batch ``i`` draws its noise from seed
    ``seed + i`` (``glowlab.metrics.measure``), so ``samples=1``, ``seed=1234`` and the run's
    eval batch size reproduce its ``test/bpd``. ``progress`` draws a bar over each pass
    through the batches.
    """
    chosen = build_metrics(
        metrics,
        model,
        "metrics",
        IMAGE_LOOP,
        own,
        per_image=True,
        datamodule=datamodule,
        cache_dir=str(cache_dir),
        progress=progress,
        **(sampling or {}),
    )
    likelihood = any("likelihood" in metric.needs for metric in chosen)
    loader = split_loader(datamodule, split, max_images=max_images)
    batches = loader if likelihood else itertools.islice(loader, 1)
    labels = measure(
        model, track(batches, "metrics", progress and likelihood), chosen, samples, seed
    )
    result: dict[str, Any] = {"split": split}
    if likelihood:  # the split's images were scored
        result.update(images=len(labels), samples=samples)
    result.update(seed=seed, metrics=[metric.key for metric in chosen])
    per_image: dict[str, Any] = {}
    for metric in chosen:
        result.update(metric.compute())
        result.update(metric.describe())
        per_image.update({f"per_image_{k}": v for k, v in metric.per_image().items()})
    if likelihood:
        result.update(reconstruction_error(model, loader, progress))
    return {**result, **per_image, "labels": labels}


def write_per_image_csv(path: Path, labels: Tensor, columns: dict[str, Tensor]) -> None:
    """``index,label,<key>...`` rows, one per image of the split (index = position in the
    split), a column per metric key with per-image values (``bpd`` or ``noisy_bpd``, and
    ``importance_weighted_bpd`` for a variational dequantizer)."""
    values = [column.tolist() for column in columns.values()]
    text = io.StringIO(newline="")
    writer = csv.writer(text)
    writer.writerow(["index", "label", *columns])
    writer.writerows(
        [i, int(y), *(f"{column[i]:.6f}" for column in values)] for i, y in enumerate(labels)
    )
    write_text(path, text.getvalue(), what="table")


def _summary_line(result: dict[str, Any], cfg: DictConfig) -> str:
    """``test bpd 3.2100 ± 0.0100, ... (<bound>, samples=4, 10000 images) | reconstruction ...
    | fid_... 12.3 (T=1, 2000 images/s)``: the metrics that have a value, with what they
    were measured on."""
    parts = []
    for key in result["metrics"]:
        if result.get(key) is None:
            continue
        sem = result.get(f"{key}_sem")
        parts.append(f"{key} {result[key]:.4f}" + ("" if sem is None else f" ± {sem:.4f}"))
    line = f"{cfg.split} {', '.join(parts) or 'no metric defined for this model'}"
    if "images" in result:
        bound = f"{result['bound']}, " if "bound" in result else ""
        line += (
            f" ({bound}samples={cfg.samples}, {result['images']} images) | reconstruction max "
            f"|Δv| {result['recon_max_abs']:.2e}, {result['recon_pixel_errors']} pixels off"
        )
    if "sampling_images_per_s" in result:
        line += (
            f" | samples at T={result['temperature']:g}, "
            f"{result['sampling_images_per_s']:.0f} images/s"
        )
    return line


SAMPLE_METRIC_NODES = ("fid", "kid")
"""Config nodes of the sample metrics' own options (``fid.n=10000``)."""


def run(cfg: DictConfig) -> dict[str, Any]:
    """The app: evaluate ``cfg.ckpt`` on ``cfg.split`` and write the outputs to the run dir."""
    started = time.perf_counter()
    check_int("max_images", cfg.max_images, optional=True)
    model, run_config = load_flow(check_ckpt(cfg.ckpt), check_device(cfg.device))
    datamodule = build_datamodule(run_config, cfg.get("data"), model)
    options = configure_sampling(model, **{key: cfg.get(key) for key in SAMPLING_KEYS})
    own = {name: OmegaConf.to_container(cfg[name], resolve=True) for name in SAMPLE_METRIC_NODES}
    sampling = {key: cfg.get(key) for key in ("temperature", "guidance", "denoise")}
    result = evaluate(
        model,
        datamodule,
        cfg.split,
        cfg.samples,
        cfg.seed,
        cfg.max_images,
        cfg.progress,
        list(cfg.metrics),
        own,
        sampling,
        cfg.paths.cache_dir,
    )
    out = output_dir(cfg)
    labels = result.pop("labels")
    columns = {
        key.removeprefix("per_image_"): result.pop(key)
        for key in list(result)
        if key.startswith("per_image_")
    }
    if columns:
        write_per_image_csv(out / "per_image_bpd.csv", labels, columns)
        groups = {f"{cfg.split} {key}": values for key, values in columns.items()}
        main = next(iter(columns))
        title = f"{datamodule.name} {cfg.split}: mean {result[main]:.4f} {main}"
        save_image(histogram(groups, "bits per dim", title, cfg.bins), out / "bpd_histogram.png")
    if "sampling_images_per_s" in result:
        result.update(sampling)
        if options:
            result["sampling"] = {**options, **sampling_report(model)}
    result.update(
        checkpoint=str(cfg.ckpt), data=datamodule.name, wall_time_s=time.perf_counter() - started
    )
    write_json(out / "eval.json", result)
    say(f"glowlab-eval: {_summary_line(result, cfg)} | {out / 'eval.json'}", log)
    return result


@hydra_app("glowlab-eval", "eval")
def main(cfg: DictConfig) -> dict[str, Any]:
    return run_cli("glowlab-eval", run, cfg)


if __name__ == "__main__":
    main()
