"""Store failures as answers: which store failed, and a circuit breaker per store.

Every serving call to Milvus or the catalog has a timeout (the stores are opened with
`store_timeout_s`). A call that fails or times out raises a Milvus or SQLAlchemy error, which
`Guard.run` turns into `StoreUnavailable(store)` (HTTP 503 naming it, with Retry-After). After a
failure the store's breaker opens for COOL_DOWN_S: requests that need it answer 503 at once instead of
each waiting for a timeout (so a hung store cannot tie up every worker thread); then one request
tries the store again, and its success closes the breaker. Nothing here needs a restart to recover.

Hand-written (30 lines) rather than pybreaker: pybreaker holds one lock around every protected
call, which would serialise all requests of a process.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Sequence
from typing import TypeVar

import grpc
from pymilvus.exceptions import MilvusException
from sqlalchemy.exc import DBAPIError, SQLAlchemyError

from recsys_tasks.config import ConfigError

T = TypeVar("T")
COOL_DOWN_S = 1.0
MILVUS, CATALOG = "milvus", "catalog"


class StoreUnavailable(RuntimeError):
    """A store did not answer in time or at all (HTTP 503)."""

    def __init__(self, store: str, message: str, retry_after: int = 1) -> None:
        super().__init__(message)
        self.store, self.retry_after = store, retry_after


def failed_store(exc: BaseException) -> str | None:
    """Which store an exception says is unavailable, or None when it is not a store failure."""
    if isinstance(exc, (MilvusException, grpc.RpcError, ConfigError)):
        return MILVUS  # ConfigError: the local milvus-lite server could not be started
    if isinstance(exc, (DBAPIError, SQLAlchemyError)):
        return CATALOG
    if isinstance(exc, TimeoutError):
        return MILVUS  # a search waiting behind another one that timed out
    return None


class Breaker:
    def __init__(self, store: str) -> None:
        self.store = store
        self._lock = threading.Lock()
        self._open_until = -math.inf
        self._probing = False
        self._last = ""

    def enter(self) -> bool:
        """May a request use the store now? Returns whether it is the one probing an open breaker."""
        with self._lock:
            now = time.monotonic()
            if self._open_until == -math.inf:
                return False
            if now < self._open_until or self._probing:
                wait = max(1, math.ceil(self._open_until - now))
                raise StoreUnavailable(self.store, f"{self.store} is unavailable ({self._last}); try again", wait)
            self._probing = True
            return True

    def succeeded(self) -> None:
        with self._lock:
            self._open_until, self._probing = -math.inf, False

    def abandon(self) -> None:
        """The probe did not happen after all: the next request probes."""
        with self._lock:
            self._probing = False

    def failed(self, exc: BaseException) -> None:
        with self._lock:
            self._open_until, self._probing = time.monotonic() + COOL_DOWN_S, False
            self._last = f"{type(exc).__name__}: {str(exc)[:200]}"


class Guard:
    """One breaker per store for one app."""

    def __init__(self) -> None:
        self.breakers = {name: Breaker(name) for name in (MILVUS, CATALOG)}

    def run(self, needs: Sequence[str], fn: Callable[[], T]) -> T:
        """`fn`, with the stores it `needs` checked first; a store failure becomes StoreUnavailable."""
        probes: list[Breaker] = []
        try:
            for name in needs:
                if self.breakers[name].enter():
                    probes.append(self.breakers[name])
        except StoreUnavailable:
            for breaker in probes:
                breaker.abandon()
            raise
        try:
            result = fn()
        except StoreUnavailable:
            raise
        except Exception as exc:
            store = failed_store(exc)
            if store is None:
                for breaker in probes:
                    breaker.succeeded()  # it answered (the request itself was wrong)
                raise
            self.breakers[store].failed(exc)
            for breaker in probes:
                if breaker.store != store:
                    breaker.succeeded()
            raise StoreUnavailable(store, f"{store} did not answer: {type(exc).__name__}: {str(exc)[:200]}",
                                   max(1, math.ceil(COOL_DOWN_S))) from exc
        for breaker in probes:
            breaker.succeeded()
        return result
