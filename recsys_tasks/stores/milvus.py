"""Movie vectors in Milvus: one collection per model version, served through the alias `movies`.

The URI is configuration. Unset, every process on the host shares one local `milvus-lite server` for
the home's data folder, started on first use and stopped once unused (`milvus_local`). A local path
ending in `.db` opens Milvus Lite inside this process (one process per data folder: for tests and
single-process use); `http://host:port[/db]` reaches a `milvus-lite server` or a real Milvus.

One client per URI per process (a gRPC channel, safe for concurrent calls). A `VectorStore` made with a
`timeout` passes it to every call (the serving path); without one, calls wait as long as Milvus takes
(loads and index builds). Concurrent single-query searches of one collection with the same filter go to
Milvus as one call (`_Coalescer`).
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from pymilvus import DataType, MilvusClient, MilvusException
from pymilvus.exceptions import ConnectionConfigException

from recsys_tasks.config import ConfigError, Settings
from recsys_tasks.errors import InputError
from recsys_tasks.logs import get_logger

log = get_logger(__name__)
T = TypeVar("T")

ALIAS = "movies"
PREFIX = "movies_"
VECTOR = "vector"
VERIFIED = "recsys.verified"  # collection property set once loaded, indexed and self-search checked
SOURCE = "recsys.source"  # the export step key the collection was built from
GENRES = "recsys.genres"  # JSON list: bit i of genre_mask is genres[i]
SCALARS = ["movie_id", "year", "genre_mask"]
MAX_BATCH = 32  # queries per coalesced search call
QUERY_MAX = 16384  # Milvus's largest query limit; bigger collections are read with an iterator
HNSW = {"M": 16, "efConstruction": 200}
INDEX_TIMEOUT_S = 600
_REMOTE = ("http://", "https://", "tcp://", "unix:")

# how every MilvusClient of this project connects (see _client)
CONNECTION: dict[str, Any] = {"dedicated": True, "grpc_options": {"grpc.keepalive_permit_without_calls": 0,
                                                                  "grpc.use_local_subchannel_pool": 1}}
_clients: dict[str, MilvusClient] = {}
_loaded: dict[str, set[str]] = {}  # per URI: collections this process has seen loaded
_alias_moves: dict[str, int] = {}
_lock = threading.Lock()
NOT_LOADED = 101  # Milvus's error code for a search/get on a released collection
NOT_FOUND = 100  # ... and for a collection that does not exist (dropped since)


class CollectionMissing(LookupError):
    """The collection a reader named is gone (retention dropped a retired one): resolve the alias again."""


def collection_name(model_version: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9_]{1,200}", model_version):
        raise InputError(f"model version {model_version!r} cannot name a Milvus collection",
                         rule="model_version is letters, digits and _")
    return f"{PREFIX}{model_version}"


def version_of(collection: str) -> str:
    return collection.removeprefix(PREFIX)


def _client(uri: str, token: str = "", timeout: float | None = None) -> MilvusClient:
    with _lock:
        if uri not in _clients:
            if not uri.startswith(_REMOTE):
                if not uri.endswith(".db"):
                    raise ConfigError(f"milvus_uri: {uri!r} must be http(s)://host:port or a local path "
                                      "ending in .db (Milvus Lite)")
                Path(uri).parent.mkdir(parents=True, exist_ok=True)
                try:
                    _clients[uri] = MilvusClient(uri=uri)
                except ConnectionConfigException as exc:
                    raise ConfigError(
                        f"milvus_uri: cannot open Milvus Lite at {uri} ({exc.message}); it admits one process "
                        f"at a time: run `milvus-lite server --data-dir {uri} --port 19530` and set "
                        "RECSYS_MILVUS_URI=http://127.0.0.1:19530 in every process") from exc
            else:
                # A connection of this client's own: pymilvus shares one per host:port across clients, and
                # gRPC its subchannels across channels, so a new server on a port an old one used would
                # inherit that one's broken connection (in reconnect backoff). No keepalive pings while
                # idle: a gRPC server's defaults (milvus-lite server's) answer an idle client's pings with
                # GOAWAY "too many pings", which then fails the next call.
                _clients[uri] = MilvusClient(uri=uri, token=token, timeout=timeout, **CONNECTION)
        return _clients[uri]


def alias_moves(uri: str) -> int:
    """How often this process moved the alias of `uri` (readers that cache the alias compare it)."""
    return _alias_moves.get(uri, 0)


def release(uri: str) -> None:
    """Close this process's client for `uri` (and stop its in-process Milvus Lite server, if any). For the
    data folder of a shared local server: close the client and drop this process's lease."""
    from recsys_tasks.stores import milvus_local

    local = milvus_local.attached_uri(uri)
    if local is not None:
        _close(local)
        milvus_local.detach(uri)
        return
    if _close(uri) and not uri.startswith(_REMOTE):
        from milvus_lite.server_manager import server_manager_instance

        server_manager_instance.release_server(uri)


def _close(uri: str) -> bool:
    with _lock:
        client = _clients.pop(uri, None)
        _loaded.pop(uri, None)
    if client is not None:
        client.close()
    return client is not None


@dataclass(frozen=True)
class Hit:
    movie_id: int
    score: float


@dataclass(frozen=True)
class Rows:
    """Every row of a collection: ids, vectors and the scalar fields (year -1 where unknown)."""

    ids: np.ndarray
    vectors: np.ndarray
    year: np.ndarray
    genre_mask: np.ndarray


class VectorStore:
    """The operations the pipeline and the serving path need, over one MilvusClient."""

    def __init__(self, uri: str, token: str = "", timeout: float | None = None) -> None:
        self.uri, self.token, self.timeout = uri, token, timeout
        self._coalescer = _coalescers.setdefault(uri, _Coalescer())
        _client(uri, token, timeout)  # fail here if the URI is wrong

    @property
    def client(self) -> MilvusClient:
        return _client(self.uri, self.token, self.timeout)  # this process's one client (made again after release)

    @property
    def _loaded(self) -> set[str]:
        return _loaded.setdefault(self.uri, set())

    @classmethod
    def from_settings(cls, settings: Settings, timeout: float | None = None) -> VectorStore:
        uri = settings.milvus_uri
        if not uri:
            from recsys_tasks.stores import milvus_local

            before = milvus_local.attached_uri(settings.resolved_milvus_uri)
            uri = milvus_local.attach(settings.resolved_milvus_uri, settings.milvus_linger_s)
            if before not in (None, uri):
                _close(before)  # the server it reached died; pymilvus would keep recovering towards it
        return cls(uri, settings.milvus_token, timeout)

    def _t(self) -> dict[str, Any]:
        return {"timeout": self.timeout}

    # --- collections -------------------------------------------------------------------------
    def collections(self) -> list[str]:
        return sorted(n for n in self.client.list_collections(**self._t()) if n.startswith(PREFIX))

    def exists(self, name: str) -> bool:
        return bool(self.client.has_collection(name, **self._t()))

    def create(self, name: str, dim: int, *, source: str, genres: Sequence[str] = ()) -> None:
        schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field("movie_id", DataType.INT64, is_primary=True)
        schema.add_field(VECTOR, DataType.FLOAT_VECTOR, dim=dim)
        schema.add_field("year", DataType.INT32, nullable=True)
        schema.add_field("genre_mask", DataType.INT64)
        self.client.create_collection(name, schema=schema, properties={SOURCE: source, GENRES: json.dumps(list(genres))},
                                      **self._t())

    def insert(self, name: str, rows: Sequence[dict[str, Any]]) -> None:
        self.client.insert(name, list(rows), **self._t())

    def finish(self, name: str, metric: str) -> None:
        """Flush, build the HNSW index and load: the collection becomes searchable."""
        self.client.flush(name)
        index = MilvusClient.prepare_index_params()
        index.add_index(field_name=VECTOR, index_type="HNSW", metric_type=metric, params=HNSW)
        # sync=False: pymilvus's own wait polls every 0.5 s (and Milvus Lite lacks the RPC it starts with)
        self.client.create_index(name, index, sync=False)
        deadline = time.monotonic() + INDEX_TIMEOUT_S
        while not self.index_ready(name):
            if time.monotonic() > deadline:
                raise TimeoutError(f"index on {name} not built after {INDEX_TIMEOUT_S} s")
            time.sleep(0.05)
        self.load(name)

    def load(self, name: str) -> None:
        self.client.load_collection(name, **self._t())
        self._loaded.add(name)

    def ensure_loaded(self, name: str) -> None:
        # a restarted server keeps the data but not the load state
        if name not in self._loaded:
            if str(self.client.get_load_state(name, **self._t()).get("state")) != "Loaded":
                self.client.load_collection(name, **self._t())
            self._loaded.add(name)

    def _read(self, name: str, call: Callable[[], T]) -> T:
        """Run a read; if the server has released the collection since (a restart), load it and retry once."""
        try:
            self.ensure_loaded(name)
            return call()
        except MilvusException as exc:
            if exc.code == NOT_FOUND:
                raise CollectionMissing(f"collection {name} does not exist") from exc
            if exc.code != NOT_LOADED:
                raise
            log.warning("%s was not loaded (server restarted?); loading it", name)
            self._loaded.discard(name)
            self.ensure_loaded(name)
            return call()

    def row_count(self, name: str) -> int:
        return int(self.client.get_collection_stats(name, **self._t())["row_count"])

    def properties(self, name: str) -> dict[str, str]:
        return dict(self.client.describe_collection(name, **self._t()).get("properties") or {})

    def genres(self, name: str) -> list[str] | None:
        """The genre names of genre_mask's bits, or None for a collection loaded before they were recorded."""
        raw = self.properties(name).get(GENRES)
        return list(json.loads(raw)) if raw else None

    def index_ready(self, name: str) -> bool:
        if VECTOR not in self.client.list_indexes(name, field_name=VECTOR, **self._t()):
            return False
        info = self.client.describe_index(name, VECTOR, **self._t())
        return info.get("state") == "Finished" and int(info.get("pending_index_rows", 0)) == 0

    def mark_verified(self, name: str) -> None:
        self.client.alter_collection_properties(name, {VERIFIED: "true"}, **self._t())

    def is_complete(self, name: str, expected_rows: int) -> bool:
        """Built to the end (verified marker), with every row and a finished index."""
        return (self.exists(name) and self.properties(name).get(VERIFIED) == "true"
                and self.row_count(name) == expected_rows and self.index_ready(name))

    def drop(self, name: str) -> None:
        if name == self.live_collection():
            raise RuntimeError(f"refusing to drop {name}: the alias {ALIAS!r} serves it")
        self.client.drop_collection(name, **self._t())
        self._loaded.discard(name)

    # --- the alias ---------------------------------------------------------------------------
    def live_collection(self) -> str | None:
        # list first: describe_alias on a missing alias raises (and logs an RPC error)
        if ALIAS not in self.client.list_aliases(**self._t()).get("aliases", []):
            return None
        return str(self.client.describe_alias(ALIAS, **self._t())["collection_name"])

    def point_alias(self, name: str) -> None:
        """Serve `name`: one atomic alias switch (created the first time)."""
        if self.live_collection() is None:
            self.client.create_alias(name, ALIAS, **self._t())
        else:
            self.client.alter_alias(name, ALIAS, **self._t())
        with _lock:
            _alias_moves[self.uri] = _alias_moves.get(self.uri, 0) + 1

    # --- reads -------------------------------------------------------------------------------
    def vectors(self, name: str, ids: Iterable[int]) -> dict[int, np.ndarray]:
        """{movie_id: vector} for the ids present in the collection."""
        rows = self._read(name, lambda: self.client.get(name, ids=[int(i) for i in ids],
                                                        output_fields=["movie_id", VECTOR], **self._t()))
        return {int(r["movie_id"]): np.asarray(r[VECTOR], dtype=np.float32) for r in rows}

    def scan(self, name: str, batch: int = 2000) -> Rows:
        """Every row, sorted by movie id (a collection is written once, so a reader may keep this)."""
        def fetch() -> list[dict[str, Any]]:
            if self.row_count(name) <= QUERY_MAX:
                return list(self.client.query(name, filter="", limit=QUERY_MAX, output_fields=[*SCALARS, VECTOR],
                                              **self._t()))
            out: list[dict[str, Any]] = []
            pages = self.client.query_iterator(name, batch_size=batch, output_fields=[*SCALARS, VECTOR], **self._t())
            try:
                while page := pages.next():
                    out.extend(page)
            finally:
                pages.close()
            return out

        rows = sorted(self._read(name, fetch), key=lambda r: int(r["movie_id"]))
        dim = len(rows[0][VECTOR]) if rows else 0
        return Rows(ids=np.asarray([r["movie_id"] for r in rows], dtype=np.int64),
                    vectors=np.asarray([r[VECTOR] for r in rows], dtype=np.float32).reshape(len(rows), dim),
                    year=np.asarray([-1 if r["year"] is None else r["year"] for r in rows], dtype=np.int64),
                    genre_mask=np.asarray([r["genre_mask"] for r in rows], dtype=np.int64))

    def search(self, name: str, queries: np.ndarray, k: int, *, filter: str = "",
               ef: int | None = None) -> list[list[Hit]]:
        """Top k per query (inner product), among the rows `filter` (a Milvus expression) admits."""
        data = np.asarray(queries, dtype=np.float32)
        params = {"params": {"ef": max(ef or 64, k)}}

        def call(batch: list[list[float]], limit: int) -> list[list[Hit]]:
            result = self._read(name, lambda: self.client.search(
                name, data=batch, limit=limit, filter=filter, search_params=params, output_fields=["movie_id"],
                **self._t()))
            return [[Hit(int(h["movie_id"]), float(h["distance"])) for h in hits] for hits in result]

        if data.shape[0] != 1:
            return call(data.tolist(), k)
        return [self._coalescer.run((name, filter, params["params"]["ef"]), data[0].tolist(), k, call,
                                    wait_s=None if self.timeout is None else 4 * self.timeout)]


class _Coalescer:
    """Concurrent one-query searches with the same (collection, filter, ef) become one call with nq > 1.

    Milvus Lite spends time proportional to the collection's rows in Python on every search call,
    whatever nq is, so under concurrency one call for many queries is what scales (a real Milvus
    batches too). A caller that finds no call in flight for its key makes it, with every query
    waiting for that key (at most MAX_BATCH); the others wait. When a call returns, the first waiting
    caller, if any, makes the next one. So nothing waits on a timer, and alone a caller calls at once.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._waiting: dict[Any, list[_Query]] = {}
        self._busy: set[Any] = set()

    def run(self, key: Any, vector: list[float], k: int, call: Callable[[list[list[float]], int], list[list[Hit]]],
            wait_s: float | None) -> list[Hit]:
        me = _Query(vector, k)
        with self._lock:
            self._waiting.setdefault(key, []).append(me)
            me.leads = key not in self._busy
            self._busy.add(key)
        if not me.leads and not me.done.wait(wait_s):
            with self._lock:
                if not me.leads:  # (a caller handed the next call cannot walk away from it)
                    if me in self._waiting.get(key, []):
                        self._waiting[key].remove(me)
                    raise TimeoutError(f"search of {key[0]} still waiting after {wait_s}s")
        if me.leads:
            self._lead(key, call)
        if me.error is not None:
            raise me.error
        return me.hits

    def _lead(self, key: Any, call: Callable[[list[list[float]], int], list[list[Hit]]]) -> None:
        with self._lock:
            queue = self._waiting.get(key, [])
            batch, self._waiting[key] = queue[:MAX_BATCH], queue[MAX_BATCH:]
        try:
            results = call([q.vector for q in batch], max(q.k for q in batch))
            for q, hits in zip(batch, results):
                q.hits = hits[:q.k]
        except Exception as exc:  # noqa: BLE001 - every query of the call gets the call's error
            for q in batch:
                q.error = exc
        with self._lock:
            rest = self._waiting.get(key, [])
            if rest:
                rest[0].leads = True  # the next call is made by the first one waiting
            else:
                self._busy.discard(key)
                self._waiting.pop(key, None)
        for q in batch:
            if not q.leads:
                q.done.set()
        if rest:
            rest[0].done.set()


class _Query:
    def __init__(self, vector: list[float], k: int) -> None:
        self.vector, self.k = vector, k
        self.leads = False
        self.done = threading.Event()
        self.hits: list[Hit] = []
        self.error: Exception | None = None


_coalescers: dict[str, _Coalescer] = {}
