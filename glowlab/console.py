"""What a glowlab app prints: its own lines, Lightning's progress bar and tables, nothing else.

- `quiet_third_party` drops a short list of third-party lines nobody asked for (Lightning's
  device-availability lines, its litlogger tip, "Seed set to", a ``torch`` ``_pytree``
  deprecation raised inside Lightning, the checkpoint dir change of a resume into a new run
  dir), each matched by its logger or warning text, so every other warning still shows;
- warnings print on one line (no echoed source line);
- `say` prints a line once on the console and also logs it to the run's log file (Hydra's
  ``<job>.log``), through `FILE_ONLY` and the `ConsoleFilter` of ``conf/hydra/job_logging``;
- `ProgressBar` is Lightning's rich bar without "Epoch 10/-2" when ``max_epochs=-1``.
"""

from __future__ import annotations

import logging
import re
import warnings
from pathlib import Path

from lightning.pytorch.callbacks import RichProgressBar

FILE_ONLY = {"console": False}
"""``extra=`` for a log record that goes to the log file but not to the console (the line is
printed once by other means)."""

NOISE = {
    "lightning.pytorch.utilities.rank_zero": (
        r"GPU available: ",
        r"TPU available: ",
        r"💡 Tip: .*litlogger",
        r"Loading `train_dataloader` to estimate number of stepping batches",
        r"`Trainer.fit` stopped: ",  # glowlab's summary gives the steps and any early stop
        r"Time limit reached\. ",  # ... and glowlab's budget line says max_time cut the run
        # glowlab says itself which checkpoint it resumes from and which one it tests
        r"Restoring states from the checkpoint path at ",
        r"Restored all states from the checkpoint at ",
        r"Loaded model weights from the checkpoint at ",
    ),
    "lightning.fabric.utilities.seed": (r"Seed set to ",),
}
"""Per logger, the messages (regular expressions, matched at the start) that are dropped."""

NOISY_WARNINGS = (
    # torch deprecated LeafSpec; Lightning's own _pytree helper still builds one per batch.
    (FutureWarning, r"`isinstance\(treespec, LeafSpec\)` is deprecated"),
    # conf/hydra/launcher/joblib.yaml sets the options of the joblib plugin's schema of the
    # same name on purpose (so that `hydra/launcher=joblib` keeps its name).
    (UserWarning, r"\s*'hydra/launcher/joblib' is validated against ConfigStore schema"),
    # A resume writes into a new run dir by design: its best checkpoint is chosen among its own.
    (UserWarning, r"The dirpath has changed from .* therefore `best_model_score`"),
)
GLOWLAB_DIR = Path(__file__).resolve().parent


class ConsoleFilter(logging.Filter):
    """Drop records logged with ``extra=FILE_ONLY`` (for the console handler)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return getattr(record, "console", True)


class _DropMessages(logging.Filter):
    def __init__(self, patterns: tuple[str, ...]) -> None:
        super().__init__()
        self.pattern = re.compile("|".join(f"(?:{p})" for p in patterns))

    def filter(self, record: logging.LogRecord) -> bool:
        return self.pattern.match(record.getMessage()) is None


def _format_warning(message, category, filename, lineno, line=None) -> str:  # noqa: ANN001
    """One line per warning; glowlab's own as ``glowlab: warning: <message>``."""
    if Path(filename).resolve().is_relative_to(GLOWLAB_DIR):
        return f"glowlab: warning: {message}\n"
    return f"{filename}:{lineno}: {category.__name__}: {message}\n"


def ignore_noisy_warnings() -> None:
    """Ignore :data:`NOISY_WARNINGS` and print the others on one line (also done on import, so
    that a sweep's worker processes, which import glowlab before running a job, do it too)."""
    for category, message in NOISY_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category)
    warnings.formatwarning = _format_warning


def quiet_third_party() -> None:
    """Drop the lines of :data:`NOISE` and :data:`NOISY_WARNINGS`, print warnings on one line.
    Safe to call more than once."""
    for name, patterns in NOISE.items():
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropMessages) for f in logger.filters):
            logger.addFilter(_DropMessages(patterns))
    ignore_noisy_warnings()


def say(line: str, logger: logging.Logger) -> None:
    """Print ``line`` on stdout and log it (INFO) to the log file only."""
    print(line, flush=True)
    logger.info("%s", line, extra=FILE_ONLY)


class ProgressBar(RichProgressBar):
    """Lightning's ``RichProgressBar``; with ``max_epochs=-1`` (a step budget, no epoch limit)
    the bar reads ``Epoch 10`` instead of ``Epoch 10/-2``."""

    def _get_train_description(self, current_epoch: int) -> str:
        if self.trainer.max_epochs is None or self.trainer.max_epochs >= 0:
            return super()._get_train_description(current_epoch)
        return f"{f'Epoch {current_epoch}':{len(self.validation_description)}}"


ignore_noisy_warnings()
