"""Logging and progress for long work: a tqdm bar on a terminal, periodic INFO log lines elsewhere.

In an Airflow task (or any log file) a bar is noise, and a bar on stderr even reads as an error, so
away from a terminal the same calls log one line every `LOG_EVERY_S` seconds (count, percentage,
rate, ETA) and a last one when the work ends, through `logging` like everything else.
"""

from __future__ import annotations

import io
import logging
import sys
from collections.abc import Iterable, Iterator
from typing import Any, TypeVar

from tqdm import tqdm

T = TypeVar("T")
LOG_EVERY_S = 30.0
log = logging.getLogger("recsys_tasks.progress")


def get_logger(name: str) -> logging.Logger:
    logger = logging.getLogger(name)
    if not logging.getLogger().handlers and not logger.handlers:
        logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                            format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return logger


def progress(items: Iterable[T], *, desc: str, total: int | None = None, unit: str = "it") -> Iterator[T]:
    """Iterate `items` with a bar (terminal) or periodic log lines (anything else)."""
    with progress_bar(desc=desc, total=total, unit=unit) as bar:
        for item in items:
            yield item
            bar.update(1)


def progress_bar(*, desc: str, total: int | None, unit: str = "it", unit_scale: bool = False) -> tqdm:
    """A manually updated bar (byte streams, training steps): `update(n)`, `set_postfix(...)`, `close()`."""
    if sys.stderr.isatty():
        return tqdm(desc=desc, total=total, unit=unit, unit_scale=unit_scale, file=sys.stderr,
                    dynamic_ncols=True, mininterval=0.5)
    get_logger(log.name)
    return _LoggedProgress(desc=desc, total=total, unit=unit, unit_scale=unit_scale, mininterval=LOG_EVERY_S)


class _LoggedProgress(tqdm):
    """tqdm's counting, rate and ETA, shown as log records instead of a bar (tqdm only writes to streams)."""

    def __init__(self, **kwargs: Any) -> None:
        fmt = "{desc}: {n_fmt}/{total_fmt} ({percentage:.0f}%), {rate_fmt}, ETA {remaining}{postfix}"
        if kwargs.get("total") is None:
            fmt = "{desc}: {n_fmt}, {rate_fmt}, {elapsed} elapsed{postfix}"
        super().__init__(**kwargs, file=io.StringIO(), bar_format=fmt, ascii=True)

    def display(self, msg: str | None = None, pos: int | None = None) -> bool:
        # tqdm calls this at most every `mininterval` seconds, and once more from close() (the totals)
        if self.n:  # nothing to say before the first update
            log.info("%s", msg or self.__str__())
        return True
