"""Throughput and memory of a flow: one JSON line per measurement.

    python scripts/benchmark.py                                  # the CPU default model
    python scripts/benchmark.py --preset glow_cifar10 --device cuda --batch-size 64
    python scripts/benchmark.py --preset fmnist_small --depths 4 8 16    # step time vs K
    torchrun --nproc_per_node 8 scripts/benchmark.py --preset glow_cifar10 --device cuda  # DDP

Training throughput: images/s of a full step (forward, bpd, backward, optimizer step), the
median of ``--steps`` timed steps after ``--warmup``. Sampling: images/s at T=1 in eval mode.
Peak memory: CUDA ``max_memory_allocated`` or the process's max RSS on the CPU; saved
activations: the bytes autograd keeps for backward in one step (device-independent).
Under ``torchrun`` each process trains a DDP replica on its own batch (gloo on the CPU, NCCL
on GPUs; rank r uses cuda:r) and rank 0 prints per-process and total throughput, so scaling
efficiency = per-process images/s with N processes ÷ images/s of a single process.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import resource
import statistics
import time
from collections.abc import Callable

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

import glowlab
from glowlab.bijections.base import MEMORY_SAVING
from glowlab.compilation import COMPILE_MODES, compile_levels
from glowlab.profiling import saved_activation_bytes
from glowlab.transforms import Affine

# Adam's update kernel: training's default (conf/optimizer/adam.yaml) is fused
ADAM_KERNELS = {
    "fused": {"fused": True},
    "foreach": {"foreach": True},
    "single": {"foreach": False},
}
PRESETS: dict[str, tuple[str, tuple[int, int, int], dict]] = {
    # the main job's model (conf/experiment/fmnist_glow_cpu.yaml)
    "fmnist_default": (
        "glow",
        (1, 28, 28),
        {
            "levels": 2,
            "depth": 4,
            "width": 64,
            "preprocess": "logit",
            "transform": functools.partial(Affine, scale="exp_tanh"),
        },
    ),
    # conf/model/glow_small.yaml and realnvp_small.yaml on Fashion-MNIST
    "glow_small": ("glow", (1, 28, 28), {"levels": 2, "depth": 8, "width": 128}),
    "realnvp_small": ("realnvp", (1, 28, 28), {"levels": 2, "width": 32, "blocks": 2}),
    # issue-5 'small' CPU reference: 1×32×32, L=3, K=8, width 128
    "small": ("glow", (1, 32, 32), {"levels": 3, "depth": 8, "width": 128}),
    # Glow CIFAR-10 paper model: L=3, K=32, width 512, affine, LU, learned priors
    "glow_cifar10": ("glow", (3, 32, 32), {"levels": 3, "depth": 32, "width": 512}),
}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _median_seconds(
    fn: Callable[[], None], device: torch.device, warmup: int, steps: int
) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(steps):
        _sync(device)
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


class _MeanBpd(nn.Module):
    """The training loss as a module, so DDP can wrap it: integer images -> mean bpd."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.bits_per_dim(x).mean()


def _init_distributed(device: torch.device) -> torch.device:
    """Join the torchrun process group if launched by torchrun; return this rank's device."""
    if "WORLD_SIZE" not in os.environ:
        return device
    rank = int(os.environ["LOCAL_RANK"])
    if device.type == "cuda":
        device = torch.device("cuda", rank)
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return device


def _gather_throughput(result: dict) -> dict | None:
    """Under DDP: rank 0's result with every rank's images/s added; None on other ranks."""
    if not dist.is_initialized():
        return result
    rates = [None] * dist.get_world_size()
    dist.all_gather_object(rates, result["train_images_per_s"])
    if dist.get_rank():
        return None
    return {
        **result,
        "world_size": len(rates),
        "train_images_per_s_per_process": rates,
        "train_images_per_s_total": round(sum(rates), 1),
    }


def _plain(value):
    """A setting as JSON can hold it: a part factory (``functools.partial``) by its name."""
    if isinstance(value, functools.partial):
        options = ", ".join(f"{k}={v!r}" for k, v in value.keywords.items())
        return f"{value.func.__name__}({options})"
    return value


def benchmark(
    preset: str,
    overrides: dict,
    device: torch.device,
    batch_size: int,
    warmup: int,
    steps: int,
    channels_last: bool = False,
    compile_mode: str | None = None,
    adam: str = "fused",
) -> dict:
    builder, shape, kwargs = PRESETS[preset]
    kwargs = {**kwargs, **overrides}
    torch.manual_seed(0)
    model = getattr(glowlab, builder)(shape, **kwargs).to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    if compile_mode is not None:
        compile_levels(model, compile_mode)
    x = torch.randint(0, 256, (batch_size, *shape), dtype=torch.uint8, device=device)
    model.train()
    with torch.no_grad():
        model(x)  # ActNorm init
    loss_fn: nn.Module = _MeanBpd(model)
    if dist.is_initialized():
        device_ids = [device] if device.type == "cuda" else None
        loss_fn = DistributedDataParallel(loss_fn, device_ids=device_ids)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4, **ADAM_KERNELS[adam])
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    def train_step() -> None:
        loss = loss_fn(x)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    _sync(device)
    start = time.perf_counter()
    train_step()  # includes torch.compile's compilation when --compile is on
    _sync(device)
    first_step_s = time.perf_counter() - start
    train_s = _median_seconds(train_step, device, warmup, steps)
    peak = _peak_memory_mb(device)
    activations = saved_activation_bytes(lambda: model.bits_per_dim(x).mean()) / 2**20
    model.eval()
    sample_s = _median_seconds(lambda: model.sample(batch_size), device, 1, max(3, steps // 3))
    return {
        "preset": preset,
        "settings": {
            "model": builder,
            "image_shape": list(shape),
            **{key: _plain(value) for key, value in kwargs.items()},
            "batch_size": batch_size,
            "channels_last": channels_last,
            "compile": compile_mode,
            "adam": adam,
        },
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "train_images_per_s": round(batch_size / train_s, 1),
        "train_step_ms": round(1000 * train_s, 1),
        "first_step_s": round(first_step_s, 2),
        "sample_images_per_s": round(batch_size / sample_s, 1),
        "peak_memory_mb": round(peak, 1),
        "saved_activations_mb": round(activations, 1),
        "parameters": sum(p.numel() for p in model.parameters()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="fmnist_default", choices=sorted(PRESETS))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--depths", type=int, nargs="*", help="repeat for each depth K")
    parser.add_argument("--coupling", choices=["affine", "additive"])
    parser.add_argument("--permutation", choices=["lu", "conv1x1", "reverse", "shuffle"])
    parser.add_argument("--memory-saving", choices=MEMORY_SAVING[1:], help="recompute activations")
    parser.add_argument("--compile", choices=COMPILE_MODES, help="torch.compile the flow steps")
    parser.add_argument("--bf16-conditioner", action="store_true", help="bf16 coupling nets")
    parser.add_argument("--channels-last", action="store_true", help="NHWC conv weights")
    parser.add_argument(
        "--adam", choices=sorted(ADAM_KERNELS), default="fused", help="Adam's kernel (training's)"
    )
    args = parser.parse_args()
    device = _init_distributed(torch.device(args.device))
    overrides = {
        k: getattr(args, k)
        for k in ("coupling", "permutation", "memory_saving", "bf16_conditioner")
        if getattr(args, k)
    }
    for depth in args.depths or [None]:
        extra = overrides if depth is None else {**overrides, "depth": depth}
        result = benchmark(
            args.preset,
            extra,
            device,
            args.batch_size,
            args.warmup,
            args.steps,
            args.channels_last,
            args.compile,
            args.adam,
        )
        result = _gather_throughput(result)
        if result is not None:
            print(json.dumps(result), flush=True)
    if dist.is_initialized():
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
