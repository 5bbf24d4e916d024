"""Loader benchmark: raw vs memory-mapped vs litdata on a synthetic ImageNet 64 set.

Writes ``--images`` generated 64x64 images in the real downsampled-ImageNet layout
(``train_data_batch_1..10.npz`` with ``data`` (N, 12288) uint8 and 1-based ``labels``, and
``val_data.npz``) under ``--workdir`` (kept for reruns, never committed), prepares the memmap
cache and the litdata chunks once, and reports per reader:

- time to first batch and each rank's memory with 2 DDP CPU ranks (gloo), both ranks reading
  their shard: peak growth over the rank's own baseline of USS (``Private_Clean +
  Private_Dirty``), anonymous memory (``Anonymous``: heap, not file pages) and PSS, from
  ``/proc/<pid>/smaps_rollup`` sampled every 10 ms;
- loader images/s (one process) with 0, 2 and 4 workers and ``pin_memory=True`` (a no-op
  without CUDA);
- the share of a training step spent waiting for data when each step computes for
  ``--step-ms`` (a sleep standing for the GPU's work, which leaves the CPU to the loader).

Usage::

    python scripts/data_benchmark.py --images 200000 --json bench.json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import sys
import threading
import time
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.utils.data import DataLoader

from glowlab.data.datamodule import BatchTransform, ImageDataModule
from glowlab.training.data_order import EpochPermutationSampler, resumable_loader

FORMATS = ("raw", "memmap", "litdata")
SIDE = 64


def smaps() -> dict[str, int]:
    """This process's ``smaps_rollup`` in bytes: uss, anon, pss, rss."""
    fields = {}
    for line in Path("/proc/self/smaps_rollup").read_text().splitlines()[1:]:
        key, value = line.split(":")
        fields[key] = int(value.split()[0]) * 1024
    uss = fields["Private_Clean"] + fields["Private_Dirty"]
    return {"uss": uss, "anon": fields["Anonymous"], "pss": fields["Pss"], "rss": fields["Rss"]}


class PeakMemory:
    """Peak of each `smaps` field, sampled every 10 ms on a thread while running."""

    def __init__(self) -> None:
        self.peak = smaps()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.01):
            now = smaps()
            self.peak = {k: max(v, now[k]) for k, v in self.peak.items()}

    def __enter__(self) -> PeakMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        now = smaps()
        self.peak = {k: max(v, now[k]) for k, v in self.peak.items()}


# ----------------------------------------------------------------------------- the data set


def write_imagenet64(root: Path, images: int, seed: int = 0) -> int:
    """The synthetic set (skipped when ``root`` already holds one of ``images`` images);
    returns its size in bytes (uncompressed pixels of train + val)."""
    marker = root / "generated.json"
    n_val = max(images // 20, 256)
    if marker.is_file() and json.loads(marker.read_text()).get("images") == images:
        return (images + n_val) * 3 * SIDE * SIDE
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    sizes = [
        (f"train_data_batch_{i + 1}", n)
        for i, n in enumerate(np.diff(np.linspace(0, images, 11).round().astype(int)))
    ]
    for name, n in [*sizes, ("val_data", n_val)]:
        # 8x8 random colour blocks upscaled to 64x64 plus noise: compressible like photos
        coarse = rng.integers(0, 256, (n, 3, 8, 8), dtype=np.uint8)
        data = np.repeat(np.repeat(coarse, 8, axis=2), 8, axis=3)
        data ^= rng.integers(0, 8, data.shape, dtype=np.uint8)
        labels = rng.integers(1, 1001, n)
        np.savez_compressed(root / f"{name}.npz", data=data.reshape(n, -1), labels=labels)
    marker.write_text(json.dumps({"images": images}))
    return (images + n_val) * 3 * SIDE * SIDE


def datamodule(root: Path, fmt: str, args, num_workers: int = 0) -> ImageDataModule:
    return ImageDataModule(
        "imagenet64",
        root=str(root),
        format=fmt,
        cache_dir=str(args.workdir / "prepared"),
        batch_size=args.batch_size,
        val_size=1000,
        num_workers=num_workers,
        hflip=True,
    )


# ----------------------------------------------------------------------------- 2 DDP ranks


def _rank(rank: int, fmt: str, args, port: int, out: dict) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=2)
    base = smaps()
    dist.barrier()
    started = time.perf_counter()
    with PeakMemory() as memory:
        dm = datamodule(args.workdir / "imagenet64", fmt, args)
        dm.setup()
        loader = resumable_loader(dm.train_dataloader(), 0, 2, rank)
        batches = iter(loader)
        next(batches)
        first = time.perf_counter() - started
        for _ in range(args.batches - 1):
            next(batches)
        seconds = time.perf_counter() - started - first
    out[(fmt, rank)] = {
        "first_batch_s": first,
        "images_per_s": (args.batches - 1) * args.batch_size / seconds,
        **{f"{k}_growth": memory.peak[k] - base[k] for k in base},
        **{f"{k}_base": base[k] for k in base},
    }
    dist.barrier()
    dist.destroy_process_group()


def ddp_memory(fmt: str, args) -> list[dict]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    manager = mp.Manager()
    out = manager.dict()
    mp.spawn(_rank, args=(fmt, args, port, out), nprocs=2, join=True)
    return [dict(out[(fmt, r)]) for r in range(2)]


# ----------------------------------------------------------------------------- throughput


def _loader(dm: ImageDataModule, workers: int, batch_size: int) -> DataLoader:
    train = dm.train_set
    return DataLoader(
        train,
        batch_size=batch_size,
        sampler=EpochPermutationSampler(train, 1, 0, 0),
        num_workers=workers,
        pin_memory=True,
        drop_last=True,
        collate_fn=BatchTransform(8, hflip=True),
        persistent_workers=False,
    )


def throughput(dm: ImageDataModule, workers: int, args) -> dict:
    """Images/s of the train loader (first batch excluded) and the data-wait share of steps
    that each compute for ``args.step_ms``."""
    batches = iter(_loader(dm, workers, args.batch_size))
    next(batches)
    started = time.perf_counter()
    for _ in range(args.batches):
        next(batches)
    rate = args.batches * args.batch_size / (time.perf_counter() - started)
    del batches
    batches = iter(_loader(dm, workers, args.batch_size))
    next(batches)
    waited = 0.0
    started = time.perf_counter()
    for _ in range(args.steps):
        before = time.perf_counter()
        next(batches)
        waited += time.perf_counter() - before
        time.sleep(args.step_ms / 1000)
    return {"images_per_s": rate, "wait_share": waited / (time.perf_counter() - started)}


# ----------------------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=200_000)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/glowlab-data-bench"))
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--batches", type=int, default=40, help="timed batches per reading")
    parser.add_argument("--steps", type=int, default=30, help="steps in the data-wait timing")
    parser.add_argument("--step-ms", type=float, default=50.0)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2, 4])
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    if args.images < 2 * args.batch_size * (args.batches + 1) + 1000:
        sys.exit("data_benchmark: --images is too small for 2 ranks x --batches x --batch-size")
    warnings.filterwarnings("ignore", message=".*pin_memory.*")  # no CUDA on a CPU machine
    warnings.filterwarnings("ignore", message="This DataLoader will create")  # 4 workers, 2 cores
    root = args.workdir / "imagenet64"
    results: dict = {"images": args.images, "batch_size": args.batch_size}

    started = time.perf_counter()
    results["dataset_bytes"] = write_imagenet64(root, args.images)
    results["generate_s"] = time.perf_counter() - started
    print(
        f"dataset: {args.images} images, {results['dataset_bytes'] / 1e9:.2f} GB "
        f"({results['generate_s']:.0f} s)",
        flush=True,
    )
    shutil.rmtree(args.workdir / "prepared", ignore_errors=True)
    for fmt in ("memmap", "litdata"):
        started = time.perf_counter()
        datamodule(root, fmt, args, num_workers=2).prepare_data()
        results[f"prepare_{fmt}_s"] = time.perf_counter() - started
        print(f"prepare {fmt}: {results[f'prepare_{fmt}_s']:.1f} s", flush=True)

    for fmt in FORMATS:
        results[f"ddp_{fmt}"] = ddp_memory(fmt, args)
        r = results[f"ddp_{fmt}"]
        print(
            f"ddp {fmt}: first batch {max(x['first_batch_s'] for x in r):.2f} s, USS growth "
            f"{max(x['uss_growth'] for x in r) / 1e6:.0f} MB, anon growth "
            f"{max(x['anon_growth'] for x in r) / 1e6:.0f} MB",
            flush=True,
        )

    for fmt in FORMATS:
        dm = datamodule(root, fmt, args)
        dm.setup()
        for workers in args.workers:
            key = f"loader_{fmt}_{workers}"
            results[key] = throughput(dm, workers, args)
            print(
                f"loader {fmt} workers={workers}: {results[key]['images_per_s']:.0f} img/s, "
                f"waiting {100 * results[key]['wait_share']:.0f} % of "
                f"{args.step_ms:g} ms steps",
                flush=True,
            )
    print(table(results, args))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


def table(results: dict, args) -> str:
    """The README's Markdown table."""
    size = results["dataset_bytes"]
    rows = [
        "| reader | first batch (s) | USS growth per rank | anon growth | PSS growth "
        + "".join(f"| img/s, {w} workers " for w in args.workers)
        + "".join(f"| wait, {w} workers " for w in args.workers)
        + "|",
        "|---" * (5 + 2 * len(args.workers)) + "|",
    ]
    for fmt in FORMATS:
        ranks = results[f"ddp_{fmt}"]

        def worst(key: str, ranks=ranks) -> str:
            value = max(r[key] for r in ranks)
            return f"{value / 1e6:,.0f} MB ({100 * value / size:.1f} %)"

        cells = [
            fmt,
            f"{max(r['first_batch_s'] for r in ranks):.2f}",
            worst("uss_growth"),
            worst("anon_growth"),
            worst("pss_growth"),
            *(f"{results[f'loader_{fmt}_{w}']['images_per_s']:,.0f}" for w in args.workers),
            *(f"{100 * results[f'loader_{fmt}_{w}']['wait_share']:.0f} %" for w in args.workers),
        ]
        rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows)


if __name__ == "__main__":
    main()
