"""Reference features of the real data for FID and KID, computed once and cached.

The features of ``n`` images of a split (a seeded subset) under a feature network are saved
under ``cache_dir/reference/`` with an atomic write, keyed by the dataset (name, folder, image
shape, bits, split seed, sizes), the split, ``n``, the subset's seed and the network's
``identity`` (its name and a hash of its weights); a later run with the same key reads them.
"""

from __future__ import annotations

import hashlib
import json
import pickle
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Subset

from glowlab.data import ImageDataModule
from glowlab.data.datamodule import BatchTransform
from glowlab.outputs import write_atomic
from glowlab.tools.progress import track
from glowlab.validation import choose

if TYPE_CHECKING:
    from glowlab.metrics.features import FeatureNetwork

SPLITS = ("train", "val", "test")


def split_batches(
    datamodule: ImageDataModule,
    split: str,
    n: int | None = None,
    seed: int = 0,
    batch_size: int = 500,
) -> DataLoader:
    """Batches ``(uint8 (B, C, H, W), long (B,))`` of ``n`` images of ``split`` chosen at random
    (seeded by ``seed``; all of them when ``n`` is None or the split is smaller), in the
    split's order, never flipped; torch's global RNG is not drawn from."""
    choose("split", split, SPLITS)
    datamodule.setup()
    dataset = getattr(datamodule, f"{split}_set")
    if not len(dataset):
        raise ValueError(f"the {split} split of {datamodule.name} is empty")
    if n is not None and n < len(dataset):
        chosen = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed))
        dataset = Subset(dataset, chosen[:n].sort().values.tolist())
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=False,
        num_workers=datamodule.num_workers,
        collate_fn=BatchTransform(datamodule.n_bits, hflip=False),
        generator=torch.Generator().manual_seed(seed),  # its workers' seeds: not the global RNG
    )


def digest(key: dict) -> str:
    """16 hex digits of the sha256 of ``key`` as JSON (sorted keys)."""
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


def load_cached(path: Path, key: dict) -> dict | None:
    """The dict saved at ``path`` if it exists, reads and was saved under ``key``, else None
    (a miss: the caller rebuilds it and writes it over)."""
    if not path.is_file():
        return None
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, pickle.UnpicklingError, EOFError):
        return None
    return saved if isinstance(saved, dict) and saved.get("key") == key else None


@torch.no_grad()
def reference_features(
    network: FeatureNetwork,
    datamodule: ImageDataModule,
    split: str = "train",
    n: int = 10_000,
    seed: int = 0,
    cache_dir: str | Path = "logs/cache",
    batch_size: int = 500,
    progress: bool = False,
) -> Tensor:
    """float32 features ``(N, d)`` of ``N = min(n, split size)`` images of ``split`` (chosen by
    :func:`split_batches` with ``seed``), computed on the network's device, or read from the
    cache when computed before under the same key (module docstring)."""
    key = {
        "dataset": datamodule.name,
        "root": str(datamodule.root),
        "shape": list(datamodule.image_shape),
        "n_bits": datamodule.n_bits,
        "data_seed": datamodule.seed,
        "val_size": datamodule.val_size,
        "train_subset": datamodule.train_subset,
        "split": split,
        "n": n,
        "seed": seed,
        "network": network.identity,
    }
    path = Path(cache_dir) / "reference" / f"{datamodule.name}_{split}_{n}_{network.name}"
    path = path.with_name(f"{path.name}-{digest(key)}.pt")
    saved = load_cached(path, key)
    if saved is not None:
        return saved["features"]
    device = next(network.parameters(), torch.empty(0)).device
    batches = split_batches(datamodule, split, n, seed, batch_size)
    described = f"{network.name} features of {datamodule.name} {split}"
    chunks = [network(x.to(device)).float().cpu() for x, _ in track(batches, described, progress)]
    features = torch.cat(chunks)
    state = {"key": key, "features": features}
    write_atomic(path, lambda file: torch.save(state, file), "reference statistics")
    return features
