"""``glowlab-interpolate``: walk the latent space between two images, every level at once.

Examples::

    glowlab-interpolate ckpt=... a=3 b=17                  # test-split images 3 and 17
    glowlab-interpolate ckpt=... a=cat.png b=dog.png mode=slerp steps=12 gif=true
    glowlab-interpolate ckpt=...                           # two random samples

Images are encoded at the bin centres (deterministic), so the strip's end frames are the
inputs exactly. Writes ``interpolation.png`` (a strip) and, with ``gif=true``,
``interpolation.gif`` (forward and back; GIF keeps at most 256 colours).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig
from PIL import Image
from torch import Tensor
from torchvision.transforms.functional import to_pil_image

from glowlab.cli import hydra_app, run_cli
from glowlab.console import say
from glowlab.images import image_grid
from glowlab.models.multiscale import MultiscaleFlow
from glowlab.outputs import save_image
from glowlab.tools.cli import check_ckpt, check_device, log, output_dir, write_json
from glowlab.tools.images import read_images
from glowlab.tools.loading import (
    build_datamodule,
    file_labels,
    images_at,
    load_flow,
    model_labels,
    split_dataset,
)
from glowlab.tools.sample import sample_labels
from glowlab.validation import choose

MODES = ("linear", "slerp")
GIF_SIDE = 128  # GIF frames are enlarged (nearest) to at least this many pixels
GIF_FRAME_MS = 120


def _slerp(za: Tensor, zb: Tensor, t: Tensor) -> Tensor:
    """Spherical interpolation per image: ``za, zb`` ``(1, *S)``, ``t`` ``(T,)`` -> ``(T, *S)``.
    Falls back to linear where the two latents are (anti)parallel."""
    a, b = za.flatten().double(), zb.flatten().double()
    cos = (a @ b / (a.norm() * b.norm()).clamp_min(1e-12)).clamp(-1, 1)
    omega = torch.arccos(cos)
    t = t.double().view(-1, *[1] * (za.dim() - 1))
    if torch.sin(omega) < 1e-6:
        return ((1 - t) * za + t * zb).to(za.dtype)
    wa, wb = torch.sin((1 - t) * omega) / torch.sin(omega), torch.sin(t * omega) / torch.sin(omega)
    return (wa * za + wb * zb).to(za.dtype)


def interpolate_latents(
    za: list[Tensor], zb: list[Tensor], steps: int, mode: str = "linear"
) -> list[Tensor]:
    """Per-level latents ``(1, *S_l)`` of two images -> ``steps`` points per level
    ``(steps, *S_l)``, from exactly ``za`` to exactly ``zb``."""
    choose("mode", mode, MODES)
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 2:
        raise ValueError(f"steps={steps!r} must be an integer >= 2 (the two ends included)")
    t = torch.linspace(0, 1, steps, device=za[0].device)
    if mode == "slerp":
        return [_slerp(a, b, t) for a, b in zip(za, zb, strict=True)]
    w = t.view(-1, *[1] * (za[0].dim() - 1))
    return [(1 - w) * a + w * b for a, b in zip(za, zb, strict=True)]


@torch.no_grad()
def interpolate(
    model: MultiscaleFlow,
    x_a: Tensor,
    x_b: Tensor,
    steps: int = 8,
    mode: str = "linear",
    y_a: int | None = None,
    y_b: int | None = None,
) -> Tensor:
    """Decode ``steps`` points between two integer images ``(C, H, W)``: uint8
    ``(steps, C, H, W)`` with frame 0 = ``x_a`` and the last = ``x_b``. ``y_a``/``y_b``: labels
    for a class-conditional model (each frame decodes with its nearer end's label)."""
    device = next(model.parameters()).device
    x = torch.stack([x_a, x_b]).to(device)
    y = None if y_a is None or y_b is None else torch.tensor([y_a, y_b], device=device)
    zs = model.encode(x, y)
    path = interpolate_latents([z[:1] for z in zs], [z[1:] for z in zs], steps, mode)
    frame_y = None if y is None else y[(torch.linspace(0, 1, steps) >= 0.5).long()]
    return model.decode(path, frame_y).cpu()


def save_gif(frames: Tensor, n_bits: int, path: Path) -> None:
    """uint8 ``(T, C, H, W)`` -> an endless GIF playing forward then back."""
    scale = max(1, math.ceil(GIF_SIDE / min(frames.shape[-2:])))
    floats = frames.float() / (2**n_bits - 1)
    size = (frames.shape[-1] * scale, frames.shape[-2] * scale)
    images = [to_pil_image(f).resize(size, Image.Resampling.NEAREST) for f in floats]
    images += images[-2:0:-1]
    save_image(
        images[0],
        path,
        "GIF",
        save_all=True,
        append_images=images[1:],
        duration=GIF_FRAME_MS,
        loop=0,
    )


def _endpoints(cfg: DictConfig, model: MultiscaleFlow, run_config: dict) -> tuple[Tensor, list]:
    """The two images ``(2, C, H, W)`` and their labels (``[None, None]`` if unconditional)."""
    if cfg.a is None and cfg.b is None:
        labels = sample_labels(model, 2, cfg.y)
        device = next(model.parameters()).device
        eps = [e.to(device) for e in model.latent_noise(2, cfg.seed)]
        y = None if labels is None else labels.to(device)
        x = model.sample(2, cfg.temperature, y=y, eps=eps).cpu()
        return x, [None, None] if labels is None else labels.tolist()
    if cfg.a is None or cfg.b is None:
        raise ValueError(
            "give both a and b (dataset indices or image files), or neither (two random samples)"
        )
    images, labels, dataset = [], [], None
    for option, value in (("a", cfg.a), ("b", cfg.b)):
        if isinstance(value, int) and not isinstance(value, bool):
            if dataset is None:
                datamodule = build_datamodule(run_config, cfg.get("data"), model)
                dataset = split_dataset(datamodule, cfg.split)
            x, y = images_at(dataset, [value], model.n_bits, option)
            images.append(x)
            labels.append(model_labels(model, y))
        else:
            images.append(read_images([str(value)], model.image_shape, model.n_bits))
            labels.append(file_labels(model, 1, cfg.y))
    return torch.cat(images), [None if y is None else int(y) for y in labels]


def run(cfg: DictConfig) -> dict[str, Any]:
    """The app: interpolate between ``cfg.a`` and ``cfg.b`` and write the strip (and GIF)."""
    model, run_config = load_flow(check_ckpt(cfg.ckpt), check_device(cfg.device))
    x, (y_a, y_b) = _endpoints(cfg, model, run_config)
    frames = interpolate(model, x[0], x[1], cfg.steps, cfg.mode, y_a, y_b)
    out = output_dir(cfg)
    files = [out / "interpolation.png"]
    save_image(image_grid(frames, model.n_bits, nrow=len(frames)), files[0])
    if cfg.gif:
        files.append(out / "interpolation.gif")
        save_gif(frames, model.n_bits, files[1])
    summary = {
        "checkpoint": str(cfg.ckpt),
        "a": cfg.a,
        "b": cfg.b,
        "steps": cfg.steps,
        "mode": cfg.mode,
        "endpoints_exact": bool(torch.equal(frames[0], x[0]) and torch.equal(frames[-1], x[1])),
        "files": [str(p) for p in files],
    }
    write_json(out / "interpolate.json", summary)
    say(f"glowlab-interpolate: {cfg.steps} steps ({cfg.mode}) | {files[0]}", log)
    return summary


@hydra_app("glowlab-interpolate", "interpolate")
def main(cfg: DictConfig) -> dict[str, Any]:
    return run_cli("glowlab-interpolate", run, cfg)


if __name__ == "__main__":
    main()
