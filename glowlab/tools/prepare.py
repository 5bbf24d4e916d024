"""``glowlab-prepare``: write a dataset once as memory-mapped arrays or litdata chunks.

Examples::

    glowlab-prepare data=imagenet64 data.root=/data/imagenet64 data.cache_dir=/scratch/prepared
    glowlab-prepare data=cifar10 data.format=litdata data.stream_dir=s3://bucket/cifar10
    glowlab-prepare data=mnist force=true      # rewrite a complete cache

Training with the same ``data.*`` options finds the result complete and only maps or streams
it. Writes ``prepare.json`` (what was written where) into the run folder.
"""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path
from typing import Any

from hydra.utils import instantiate
from omegaconf import DictConfig

from glowlab.cli import hydra_app, run_cli
from glowlab.console import say
from glowlab.data import cache, streaming
from glowlab.data.datamodule import ImageDataModule
from glowlab.outputs import check_writable
from glowlab.tools.cli import output_dir, write_json
from glowlab.validation import check_int

log = logging.getLogger("glowlab.tools")


def _folder_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def prepare(datamodule: ImageDataModule, force: bool = False, num_workers: int = 4) -> dict:
    """Write ``datamodule``'s dataset in its ``format`` (memmap, or litdata built from the
    memmap cache); with ``force`` even when a complete one is there. Returns a summary."""
    if datamodule.format == "raw":
        raise ValueError(
            "data.format=raw reads the source files directly, so there is nothing to prepare; "
            "pass data.format=memmap or data.format=litdata"
        )
    check_int("num_workers", num_workers)
    req = datamodule.request()
    path = cache.cache_path(datamodule.cache_dir, datamodule.name, req)
    if force and (path / cache.MANIFEST).exists():
        check_writable([path], cache.FIX)
        (path / cache.MANIFEST).unlink()
    info = cache.prepare(datamodule.name, req, datamodule.cache_dir, log.info)
    arrays = info.manifest["arrays"]
    summary: dict[str, Any] = {
        "dataset": datamodule.name,
        "shape": info.manifest["shape"],
        "images": {s: arrays[f"{s}_images"]["shape"][0] for s in info.splits},
        "cache": str(info.path),
        "cache_bytes": _folder_bytes(info.path),
    }
    if datamodule.format == "litdata":
        location = datamodule.litdata_location(info)
        if streaming.is_remote(location):
            streaming.write_litdata(info, location, num_workers, log.info)
        else:
            if force and (location / cache.MANIFEST).exists():
                shutil.rmtree(location)
            streaming.prepare_litdata(info, location, num_workers, log.info)
        summary["litdata"] = str(location)
    return summary


def run(cfg: DictConfig) -> dict[str, Any]:
    """The app: instantiate ``cfg.data`` and prepare it."""
    datamodule = instantiate(cfg.data)
    started = time.perf_counter()
    summary = prepare(datamodule, bool(cfg.force), cfg.num_workers)
    summary["seconds"] = round(time.perf_counter() - started, 2)
    write_json(output_dir(cfg) / "prepare.json", summary)
    counts = " + ".join(f"{n:,} {s}" for s, n in summary["images"].items())
    where = summary.get("litdata", summary["cache"])
    say(
        f"glowlab-prepare: {summary['dataset']} {'x'.join(map(str, summary['shape']))}, "
        f"{counts} images | {where}",
        log,
    )
    return summary


@hydra_app("glowlab-prepare", "prepare")
def main(cfg: DictConfig) -> dict[str, Any]:
    return run_cli("glowlab-prepare", run, cfg)


if __name__ == "__main__":
    main()
