"""What every glowlab Hydra app shares: a bad input ends in one ``prog: error: ...`` line."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from typing import Any

from hydra.errors import InstantiationException
from omegaconf import DictConfig
from omegaconf.errors import MissingMandatoryValue

USER_ERRORS = (ValueError, FileNotFoundError, FloatingPointError, MissingMandatoryValue)
log = logging.getLogger("glowlab")


def user_error(error: BaseException) -> BaseException | None:
    """The user-facing cause of ``error`` (Hydra's instantiation wrapper removed), or None
    when ``error`` is not a bad input but a bug, which should keep its traceback."""
    if isinstance(error, InstantiationException) and isinstance(error.__cause__, USER_ERRORS):
        error = error.__cause__
    return error if isinstance(error, USER_ERRORS) else None


def _message(error: BaseException) -> str:
    if isinstance(error, MissingMandatoryValue):
        return f"{error.full_key} is required; pass {error.full_key}=<value>"
    return str(error)


def run_cli(prog: str, run: Callable[[DictConfig], Any], cfg: DictConfig) -> Any:
    """Return ``run(cfg)``; on a user error exit 1 with ``{prog}: error: <message>``."""
    try:
        return run(cfg)
    except Exception as error:  # noqa: BLE001 - bad input becomes one line, bugs re-raise
        cause = user_error(error)
        if cause is None:
            raise
        log.error("%s", _message(cause))
        sys.exit(f"{prog}: error: {_message(cause)}")
