"""``glowlab-score``: per-image bits per dim for anomaly / out-of-distribution detection.

Examples::

    glowlab-score ckpt=... inputs=/data/svhn_png                     # a CSV of scores
    glowlab-score ckpt=... inputs=/data/svhn_png reference=test      # + AUROC, histogram
    glowlab-score ckpt=... inputs=val

``inputs`` and ``reference`` are each a split of the checkpoint's data (``train``, ``val``,
``test``; a split name wins over a folder of that name, write ``./test`` for the folder) or
an image folder / file. With a reference, ``inputs`` are the positives (suspected
out-of-distribution) and the report gives the AUROC of two scores: the bpd itself and the
typicality score ``|bpd - mean train bpd|`` (Nalisnick et al., "Detecting out-of-distribution
inputs to deep generative models using typicality", 2019, with batches of one image). An
AUROC below 0.5 for bpd means the inputs get *higher* likelihood than the reference, the
failure that paper describes. Writes ``scores.csv``, ``score.json`` and ``bpd_histogram.png``.
"""

from __future__ import annotations

import csv
import functools
import io
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig
from torch import Tensor

from glowlab.cli import hydra_app, run_cli
from glowlab.console import say
from glowlab.data import ImageDataModule
from glowlab.metrics import AUROC, BitsPerDim, measure
from glowlab.models.multiscale import MultiscaleFlow
from glowlab.outputs import save_image, write_text
from glowlab.tools.cli import check_ckpt, check_device, log, output_dir, write_json
from glowlab.tools.images import image_files, read_images
from glowlab.tools.loading import SPLITS, build_datamodule, file_labels, load_flow, split_loader
from glowlab.tools.plots import histogram
from glowlab.tools.progress import track
from glowlab.validation import check_int


def typicality(bpd: Tensor, train_mean_bpd: float) -> Tensor:
    """``|bpd - train_mean_bpd|``, ``(N,)``: large for atypically likely or unlikely images."""
    return (bpd - train_mean_bpd).abs()


def per_image_bpd(
    model: MultiscaleFlow,
    batches: Iterable[tuple[Tensor, Tensor]],
    samples: int = 1,
    seed: int = 0,
    progress: bool = False,
) -> tuple[Tensor, Tensor]:
    """Bits per dim of every image (the model's bound, ``glowlab.metrics.BitsPerDim``), float64
    ``(N,)``, with the labels ``(N,)``; batch ``i`` draws its noise from seed ``seed + i``."""
    metric = BitsPerDim(model, per_image=True)
    labels = measure(model, track(batches, "bits per dim", progress), [metric], samples, seed)
    return metric.per_image()[metric.key], labels


def _auroc(positive: Tensor, negative: Tensor) -> float:
    metric = AUROC()
    metric.update(positive, positive=True)
    metric.update(negative, positive=False)
    return metric.compute()[AUROC.name]


def ood_report(
    inputs_bpd: Tensor, reference_bpd: Tensor, train_mean_bpd: float
) -> dict[str, float]:
    """AUROC of flagging ``inputs`` (positives) over ``reference`` by bpd and by typicality."""
    return {
        "auroc_bpd": _auroc(inputs_bpd, reference_bpd),
        "auroc_typicality": _auroc(
            typicality(inputs_bpd, train_mean_bpd), typicality(reference_bpd, train_mean_bpd)
        ),
    }


@dataclass
class Scored:
    """Per-image bpd ``(N,)`` of one source (``role``: inputs or reference), with each image's
    name and label."""

    role: str
    source: str
    bpd: Tensor
    names: list[str]
    labels: Tensor


def score_files(
    model: MultiscaleFlow,
    paths: Sequence[str | Path],
    samples: int = 1,
    seed: int = 0,
    batch_size: int = 64,
    y: int | None = None,
    progress: bool = False,
) -> Tensor:
    """Bits per dim, float64 ``(N,)``, of image files (read, resized and converted by
    ``read_images``); ``y`` labels them for a class-conditional model; ``progress`` draws a
    bar over the batches."""
    check_int("batch_size", batch_size)
    x = read_images(paths, model.image_shape, model.n_bits)
    labels = file_labels(model, len(x), y)
    labels = torch.zeros(len(x), dtype=torch.long) if labels is None else labels
    batches = [
        (x[i : i + batch_size], labels[i : i + batch_size]) for i in range(0, len(x), batch_size)
    ]
    return per_image_bpd(model, batches, samples, seed, progress)[0]


def _score(
    cfg: DictConfig,
    model: MultiscaleFlow,
    data: Callable[[], ImageDataModule],
    source: str,
    role: str,
    max_images: int | None,
) -> Scored:
    """Score ``source``: a split of ``data()`` or image files (``role`` names the option)."""
    source = str(source)
    if source in SPLITS:
        loader = split_loader(data(), source, cfg.batch_size, max_images)
        bpd, labels = per_image_bpd(model, loader, cfg.samples, cfg.seed, progress=cfg.progress)
        return Scored(role, source, bpd, [f"{source}[{i}]" for i in range(len(bpd))], labels)
    paths = image_files(source, role)
    bpd = score_files(model, paths, cfg.samples, cfg.seed, cfg.batch_size, cfg.y, cfg.progress)
    labels = torch.full((len(bpd),), -1 if cfg.y is None else cfg.y)
    return Scored(role, source, bpd, [str(p) for p in paths], labels)


def write_scores_csv(path: Path, groups: Sequence[Scored], train_mean: float | None) -> None:
    """``set,name,label,bpd,typicality`` rows; label -1 for image files without ``y``,
    typicality empty without a train mean."""
    text = io.StringIO(newline="")
    writer = csv.writer(text)
    writer.writerow(["set", "name", "label", "bpd", "typicality"])
    for scored in groups:
        rows = zip(scored.names, scored.labels.tolist(), scored.bpd.tolist(), strict=True)
        for name, label, bpd in rows:
            typical = "" if train_mean is None else f"{abs(bpd - train_mean):.6f}"
            writer.writerow([scored.role, name, label, f"{bpd:.6f}", typical])
    write_text(path, text.getvalue(), what="table")


def run(cfg: DictConfig) -> dict[str, Any]:
    """The app: score ``cfg.inputs`` (and ``cfg.reference``) and write the report."""
    check_int("train_images", cfg.train_images)
    check_int("max_images", cfg.max_images, optional=True)
    model, run_config = load_flow(check_ckpt(cfg.ckpt), check_device(cfg.device))
    data = functools.cache(lambda: build_datamodule(run_config, cfg.get("data"), model))
    groups = [_score(cfg, model, data, cfg.inputs, "inputs", cfg.max_images)]
    summary: dict[str, Any] = {
        "checkpoint": str(cfg.ckpt),
        "inputs": str(cfg.inputs),
        "n_inputs": len(groups[0].bpd),
        "mean_bpd_inputs": groups[0].bpd.mean().item(),
    }
    train_mean = None
    if cfg.reference is not None:
        groups.append(_score(cfg, model, data, cfg.reference, "reference", cfg.max_images))
        train_bpd = _score(cfg, model, data, "train", "train", cfg.train_images).bpd
        train_mean = train_bpd.mean().item()
        summary.update(
            reference=str(cfg.reference),
            n_reference=len(groups[1].bpd),
            mean_bpd_reference=groups[1].bpd.mean().item(),
            train_mean_bpd=train_mean,
            train_images=len(train_bpd),
            positives="inputs",
            **ood_report(groups[0].bpd, groups[1].bpd, train_mean),
        )
    out = output_dir(cfg)
    write_scores_csv(out / "scores.csv", groups, train_mean)
    named = {f"{g.role}: {g.source}": g.bpd for g in groups}
    marker = None if train_mean is None else ("train mean", train_mean)
    save_image(
        histogram(named, "bits per dim", bins=cfg.bins, marker=marker), out / "bpd_histogram.png"
    )
    write_json(out / "score.json", summary)
    line = (
        f"glowlab-score: {summary['n_inputs']} inputs, mean bpd {summary['mean_bpd_inputs']:.4f}"
    )
    if train_mean is not None:
        line += (
            f" vs reference {summary['mean_bpd_reference']:.4f} | AUROC bpd "
            f"{summary['auroc_bpd']:.3f}, typicality {summary['auroc_typicality']:.3f}"
        )
    say(f"{line} | {out / 'scores.csv'}", log)
    return summary


@hydra_app("glowlab-score", "score")
def main(cfg: DictConfig) -> dict[str, Any]:
    return run_cli("glowlab-score", run, cfg)


if __name__ == "__main__":
    main()
