"""The one guard every glowlab file write goes through: atomic, and one line when it fails.

A file is written to ``.<name>.<pid>.tmp`` beside its target, flushed and fsync'ed, then
renamed over the target (and the directory fsync'ed), so a reader never sees half a file, a
failed write (full disk, read-only file system, no permission) leaves the previous file as it
was, and processes writing the same file at once (DDP ranks filling a shared cache) do not
write into each other's temporary file: the last rename wins, whole.
The failure is an :class:`OutputWriteError`, a ``ValueError`` too, so the command-line apps
print it as one ``error:`` line.
"""

from __future__ import annotations

import errno
import os
import sys
import tempfile
from collections.abc import Callable, Iterable
from contextlib import suppress
from pathlib import Path
from typing import IO, Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf
from torchvision.transforms.functional import to_pil_image

REASONS = {
    errno.ENOSPC: "the disk is full",
    errno.EDQUOT: "the disk quota is exceeded",
    errno.EROFS: "the file system is read-only",
    errno.EACCES: "permission denied",
    errno.EPERM: "permission denied",
    errno.ENOTDIR: "a part of the path is a file, not a folder",
    errno.EEXIST: "a part of the path is a file, not a folder",
}


class OutputWriteError(OSError, ValueError):
    """A file could not be written; the previous version of it (if any) is unchanged.

    ``OutputWriteError(errno, message, failure)``: ``str()`` is the message alone (no
    ``[Errno N]``); ``failure`` is its first part, what failed and why, without the advice.
    """

    def __init__(self, errno_: int | None, message: str, failure: str | None = None) -> None:
        super().__init__(errno_, message)
        self.failure = failure or message

    def __str__(self) -> str:
        return self.strerror or super().__str__()


def reason(error: OSError) -> str:
    """``error`` in a few words: ``the disk is full``, ``permission denied``, ..."""
    return REASONS.get(error.errno, error.strerror or str(error))


def write_atomic(
    path: str | Path,
    write: Callable[[IO[bytes]], Any],
    what: str = "file",
    advice: str = "free space or fix permissions, or write elsewhere",
) -> Path:
    """Call ``write(file)`` on a temporary file beside ``path``, then move it over ``path``.

    Raises :class:`OutputWriteError`: ``could not write <what> <path> (<reason>); <advice>``.
    """
    target = Path(path)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as file:
            write(file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp, target)
        _fsync_dir(target.parent)
    except Exception as failure:
        with suppress(OSError):
            tmp.unlink(missing_ok=True)
        error = _os_error(failure)
        if error is None:
            raise
        failed = f"could not write {what} {target} ({reason(error)})"
        raise OutputWriteError(error.errno, f"{failed}; {advice}", failed) from None
    return target


def _os_error(failure: BaseException) -> OSError | None:
    """The ``OSError`` behind ``failure``: itself, or one it was raised from or while handling
    (``torch.save`` turns a full disk into a ``RuntimeError`` raised during the ``OSError``)."""
    seen = set()
    while failure is not None and id(failure) not in seen:
        if isinstance(failure, OSError):
            return failure
        seen.add(id(failure))
        failure = failure.__cause__ or failure.__context__
    return None


def write_text(path: str | Path, text: str, what: str = "file") -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically (:func:`write_atomic`)."""
    return write_atomic(path, lambda file: file.write(text.encode()), what)


def save_image(image: Any, path: str | Path, what: str = "image", **options: Any) -> Path:
    """Save a PIL image, or a float tensor grid ``(C, H, W)`` in ``[0, 1]``, atomically; the
    format follows the file's suffix (``.png``, ``.gif``; ``options`` go to PIL's ``save``)."""
    if not hasattr(image, "save"):
        image = to_pil_image(image.mul(255).add_(0.5).clamp_(0, 255).byte())
    suffix = Path(path).suffix.lstrip(".").upper()
    fmt = {"JPG": "JPEG", "TIF": "TIFF"}.get(suffix, suffix)
    return write_atomic(path, lambda file: image.save(file, format=fmt, **options), what)


def check_writable(directories: Iterable[str | Path], advice: str) -> None:
    """Create each directory and write a probe file there; :class:`OutputWriteError` naming
    the first that fails (``advice`` says which option picks another place)."""
    for directory in dict.fromkeys(str(d) for d in directories if d):
        try:
            Path(directory).mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=directory, prefix=".write-test-") as probe:
                probe.write(b"0")
                probe.flush()
                os.fsync(probe.fileno())
        except OSError as error:
            raise OutputWriteError(
                error.errno,
                f"output directory {directory} is not writable ({reason(error)}); {advice}",
            ) from None


def _fsync_dir(directory: Path) -> None:
    """Persist a rename: fsync the directory (not possible on every platform)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    with suppress(OSError):
        os.fsync(fd)
    os.close(fd)


class WritableRunDir(Callback):
    """A Hydra callback: before Hydra creates the run (or sweep) directory and writes its
    ``.hydra/`` config files there, check that the place is writable; if not, one line
    ``glowlab-<app>: error: ...`` and exit status 1 (instead of Hydra's traceback)."""

    def on_run_start(self, config: DictConfig, config_name: str | None = None, **_: Any) -> None:
        self._check(config, "hydra.run.dir", config_name)

    def on_multirun_start(
        self, config: DictConfig, config_name: str | None = None, **_: Any
    ) -> None:
        self._check(config, "hydra.sweep.dir", config_name)

    @staticmethod
    def _check(config: DictConfig, key: str, config_name: str | None) -> None:
        try:
            check_writable(
                [str(OmegaConf.select(config, key))],
                f"pick a writable place with {key}=<dir> or paths.root_dir=<dir>",
            )
        except OutputWriteError as error:
            sys.exit(f"glowlab-{config_name or 'train'}: error: {error}")
