"""A training data order that a checkpoint can resume mid-epoch, bit for bit.

The train loader's shuffling is replaced by :class:`EpochPermutationSampler` (a permutation
seeded by ``seed + epoch``, split over DDP ranks, drawing nothing from the global random
stream), and the loader by :class:`ResumableDataLoader`, whose ``state_dict`` (saved by
Lightning in the checkpoint's loop state) is the epoch and the batches already consumed. On
resume the sampler skips those batches' indices, so the run continues with the next batch.
Bit-exact with ``num_workers=0``; with workers, random augmentation in them (``hflip``) draws
from per-worker streams that restart at a resume.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader, DistributedSampler, RandomSampler


class EpochPermutationSampler(DistributedSampler):
    """Indices of one rank's share of a permutation seeded by ``seed + epoch``.

    ``skip(n)`` drops the first ``n`` indices of the next iteration only (mid-epoch resume);
    ``len`` stays the full epoch's, so Lightning's batch counts are unchanged.
    """

    def __init__(self, dataset: Any, num_replicas: int = 1, rank: int = 0, seed: int = 0) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed)
        self._skip = 0

    def skip(self, n: int) -> None:
        self._skip = n

    def __iter__(self) -> Iterator[int]:
        indices = list(super().__iter__())
        start, self._skip = self._skip, 0
        return iter(indices[start:])


class ResumableDataLoader(DataLoader):
    """A ``DataLoader`` with ``state_dict``/``load_state_dict`` (Lightning's stateful loader
    interface): ``{"epoch": e, "batches": b}``, the batches of epoch ``e`` handed out so far.

    Lightning fetches training batches without prefetching from sized loaders, so the count
    equals the batches trained on when a checkpoint is written (at a step, a validation, the
    end of an epoch or a signal).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._batches = 0
        self._pending: dict[str, int] | None = None

    def _epoch(self) -> int:
        return int(getattr(self.sampler, "epoch", 0))

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self._epoch(), "batches": self._batches}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self._pending = {"epoch": int(state["epoch"]), "batches": int(state["batches"])}
        if hasattr(self.sampler, "set_epoch"):
            self.sampler.set_epoch(self._pending["epoch"])

    def __iter__(self) -> Iterator[Any]:
        if self.generator is not None and isinstance(self.sampler, EpochPermutationSampler):
            # the loader's worker seed comes from here, never from the global random stream
            self.generator.manual_seed(self.sampler.seed * 100_003 + self._epoch())
        skip = self._take_pending_skip()
        if skip and isinstance(self.sampler, EpochPermutationSampler) and self.batch_size:
            self.sampler.skip(skip * self.batch_size)
            return self._count(super().__iter__(), start=skip, drop=0)
        return self._count(super().__iter__(), start=skip, drop=skip)

    def _take_pending_skip(self) -> int:
        pending, self._pending = self._pending, None
        if pending is None or pending["epoch"] != self._epoch():
            return 0
        return pending["batches"]

    def _count(self, batches: Iterator[Any], start: int, drop: int) -> Iterator[Any]:
        """Yield ``batches`` (after discarding ``drop``), counting from ``start``."""
        self._batches = start
        for index, batch in enumerate(batches):
            if index < drop:
                continue
            self._batches += 1
            yield batch


def resumable_loader(loader: DataLoader, seed: int, num_replicas: int, rank: int) -> DataLoader:
    """``loader`` rebuilt as a :class:`ResumableDataLoader` with an
    :class:`EpochPermutationSampler` in place of its random shuffling (same batches, workers
    and collate function); a loader that does not shuffle is returned unchanged."""
    if not isinstance(loader.sampler, RandomSampler) or loader.batch_size is None:
        return loader
    sampler = EpochPermutationSampler(loader.dataset, num_replicas, rank, seed)
    return ResumableDataLoader(
        loader.dataset,
        batch_size=loader.batch_size,
        sampler=sampler,
        num_workers=loader.num_workers,
        collate_fn=loader.collate_fn,
        pin_memory=loader.pin_memory,
        drop_last=loader.drop_last,
        worker_init_fn=loader.worker_init_fn,
        persistent_workers=loader.persistent_workers,
        generator=torch.Generator(),
    )


def make_train_order_resumable(datamodule: Any, seed: int, world: Callable[[], tuple[int, int]]):
    """Wrap ``datamodule.train_dataloader`` so it returns :func:`resumable_loader`'s loader;
    ``world()`` gives ``(num_replicas, rank)`` when the loader is requested (after launch)."""
    build = datamodule.train_dataloader

    def train_dataloader() -> DataLoader:
        num_replicas, rank = world()
        return resumable_loader(build(), seed, num_replicas, rank)

    datamodule.train_dataloader = train_dataloader
