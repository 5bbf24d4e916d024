"""Checkpoints written at the end of an epoch, made to resume as the start of the next one.

Lightning records where a checkpoint was written by the counters of its loops, and on resume
infers from them what is left to do. Between an epoch's last training batch and the start of
the next epoch (the epoch-end validation, ``on_train_epoch_end``, a signal handled there)
those inferences are wrong for a run bounded by ``max_steps``: the fit loop counts the finished
epoch twice, runs the next epoch with no batches and continues one epoch (and one data order)
ahead, so the resumed run ends with other weights than the straight run.

:func:`start_next_epoch` rewrites such a checkpoint's loop state to what it is at the start of
the next epoch before its first batch: nothing of the finished epoch is left to run there, and
Lightning resumes that state exactly (a fresh epoch for ``max_epochs`` runs; for ``max_steps``
runs one empty restart iteration, then the first batch).
"""

from __future__ import annotations

from typing import Any


def at_epoch_end(checkpoint: dict[str, Any], batches_per_epoch: float) -> bool:
    """True when every training batch of the checkpoint's current epoch has been trained on
    (its optimizer steps taken), whatever of the epoch's end has run since."""
    loops = checkpoint.get("loops")
    if not loops:
        return False
    progress = loops["fit_loop"]["epoch_loop.batch_progress"]["current"]
    return progress["processed"] > 0 and progress["processed"] >= batches_per_epoch


def start_next_epoch(checkpoint: dict[str, Any]) -> None:
    """Rewrite ``checkpoint``'s loop state (in place) to the start of the epoch after its
    current one: that epoch counted as finished, no batch or validation of the next one begun,
    the train loader at the next epoch's first batch. Weights, optimizer, schedule, global
    step and random streams are untouched."""
    loops = checkpoint["loops"]["fit_loop"]
    epoch_progress = loops["epoch_progress"]
    finished = max(epoch_progress["current"].values())
    for tracker in (epoch_progress["total"], epoch_progress["current"]):
        for key in tracker:
            tracker[key] = max(tracker.values())
    _zero(loops["epoch_loop.batch_progress"]["current"])
    loops["epoch_loop.batch_progress"]["is_last_batch"] = False
    _zero(loops["epoch_loop.scheduler_progress"]["current"])
    optimizer = loops["epoch_loop.automatic_optimization.optim_progress"]["optimizer"]
    for part in optimizer.values():
        _zero(part["current"])
    validation = loops["epoch_loop.val_loop.batch_progress"]
    _zero(validation["total"])
    _zero(validation["current"])
    validation["is_last_batch"] = False
    # the loggers' step, stored one below the batches that stepped (= optimizer steps) as
    # Lightning stores it at on_train_epoch_end; the validation-end save stores one more
    loops["epoch_loop.state_dict"]["_batches_that_stepped"] = checkpoint["global_step"] - 1
    for state in loops["state_dict"].get("combined_loader", []):
        if isinstance(state, dict) and set(state) == {"epoch", "batches"}:
            state.update(epoch=finished, batches=0)
    checkpoint["epoch"] = finished


def _zero(tracker: dict[str, int]) -> None:
    for key in tracker:
        tracker[key] = 0
