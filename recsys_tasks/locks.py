"""Named locks that make concurrent runs safe: one builder per step key, one promotion at a time.

Two kinds, one interface (`Locks.hold(name)`):
- `FileLocks`: an OS file lock (flock, via the filelock library) per name in a folder. The whole story
  on one host (the embedded defaults: a local artifact root and a SQLite catalog).
- the catalog database's own advisory locks (`recsys_tasks.stores.catalog.DatabaseLocks`: MySQL
  GET_LOCK, PostgreSQL pg_advisory_lock), which hold across hosts that share the database.

Both are released by the operating system or the server when their process dies, so a killed run
never leaves a lock behind. `pipeline.run_one` installs the settings' locks for the step it runs
(`using`); code called outside the pipeline gets file locks under the artifact root (`current`).
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import Protocol

from filelock import FileLock, Timeout

from recsys_tasks.logs import get_logger

log = get_logger(__name__)
WAIT_LOG_S = 30.0  # while waiting, say so this often


class Locks(Protocol):
    def hold(self, name: str) -> AbstractContextManager[None]:
        """Block until `name` is free, hold it for the `with` block."""


def lock_id(name: str) -> str:
    """A short, filesystem- and server-safe id for a lock name (MySQL caps names at 64 characters)."""
    return "recsys-" + hashlib.sha256(name.encode()).hexdigest()[:32]


class FileLocks:
    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)

    @contextmanager
    def hold(self, name: str) -> Iterator[None]:
        self.folder.mkdir(parents=True, exist_ok=True)
        lock = FileLock(self.folder / f"{lock_id(name)}.lock")
        started = time.monotonic()
        while True:
            try:
                lock.acquire(timeout=WAIT_LOG_S)
                break
            except Timeout:
                log.info("waiting for lock %r (held by another process for %.0fs)", name,
                         time.monotonic() - started)
        try:
            yield
        finally:
            lock.release()


_current: ContextVar[Locks | None] = ContextVar("recsys_locks", default=None)


@contextmanager
def using(locks: Locks) -> Iterator[Locks]:
    """Make `locks` the ones `current` returns inside the block (this thread or task only)."""
    token = _current.set(locks)
    try:
        yield locks
    finally:
        _current.reset(token)


def current(root: Path) -> Locks:
    """The locks installed by `using`, else file locks in `<root>/.locks`."""
    return _current.get() or FileLocks(Path(root) / ".locks")
