"""Logging and progress for long work: a tqdm bar on a terminal, periodic log lines elsewhere (Airflow)."""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterable, Iterator
from typing import TypeVar

from tqdm import tqdm

T = TypeVar("T")


def get_logger(name: str) -> logging.Logger:
    logger = logging.getLogger(name)
    if not logging.getLogger().handlers and not logger.handlers:
        logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                            format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return logger


def progress(items: Iterable[T], *, desc: str, total: int | None = None, unit: str = "it") -> Iterator[T]:
    """A bar with rate and ETA; when stderr is not a terminal, one line every 10 seconds instead."""
    interactive = sys.stderr.isatty()
    yield from tqdm(items, desc=desc, total=total, unit=unit, file=sys.stderr, dynamic_ncols=interactive,
                    mininterval=0.5 if interactive else 10.0, ascii=not interactive)


def progress_bar(*, desc: str, total: int | None, unit: str = "it", unit_scale: bool = False) -> tqdm:
    """A manually updated bar (for byte streams and training steps), same policy as `progress`."""
    interactive = sys.stderr.isatty()
    return tqdm(desc=desc, total=total, unit=unit, unit_scale=unit_scale, file=sys.stderr,
                dynamic_ncols=interactive, mininterval=0.5 if interactive else 10.0, ascii=not interactive)
