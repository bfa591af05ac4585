"""Movie vectors in Milvus: one collection per model version, served through the alias `movies`.

The URI is configuration: a local path ending in `.db` opens Milvus Lite inside this process (it
keeps one process per data folder, a lock); `http://host:port[/db]` reaches a shared
`milvus-lite server --data-dir D --port P` or a real Milvus. One client per URI per process.
"""

from __future__ import annotations

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
HNSW = {"M": 16, "efConstruction": 200}
INDEX_TIMEOUT_S = 600
_REMOTE = ("http://", "https://", "tcp://", "unix:")

_clients: dict[str, MilvusClient] = {}
_loaded: dict[str, set[str]] = {}  # per URI: collections this process has seen loaded
_lock = threading.Lock()
NOT_LOADED = 101  # Milvus's error code for a search/get on a released collection


def collection_name(model_version: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9_]{1,200}", model_version):
        raise InputError(f"model version {model_version!r} cannot name a Milvus collection",
                         rule="model_version is letters, digits and _")
    return f"{PREFIX}{model_version}"


def version_of(collection: str) -> str:
    return collection.removeprefix(PREFIX)


def _client(uri: str, token: str = "") -> MilvusClient:
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
                _clients[uri] = MilvusClient(uri=uri, token=token)
        return _clients[uri]


def release(uri: str) -> None:
    """Close this process's client for `uri` (and stop its in-process Milvus Lite server, if any)."""
    with _lock:
        client = _clients.pop(uri, None)
        _loaded.pop(uri, None)
    if client is None:
        return
    client.close()
    if not uri.startswith(_REMOTE):
        from milvus_lite.server_manager import server_manager_instance

        server_manager_instance.release_server(uri)


@dataclass(frozen=True)
class Hit:
    movie_id: int
    score: float


class VectorStore:
    """The operations the pipeline and the serving path need, over one MilvusClient."""

    def __init__(self, uri: str, token: str = "") -> None:
        self.uri = uri
        self.client = _client(uri, token)
        self._loaded = _loaded.setdefault(uri, set())

    @classmethod
    def from_settings(cls, settings: Settings) -> VectorStore:
        return cls(settings.resolved_milvus_uri, settings.milvus_token)

    # --- collections -------------------------------------------------------------------------
    def collections(self) -> list[str]:
        return sorted(n for n in self.client.list_collections() if n.startswith(PREFIX))

    def exists(self, name: str) -> bool:
        return bool(self.client.has_collection(name))

    def create(self, name: str, dim: int, *, source: str) -> None:
        schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field("movie_id", DataType.INT64, is_primary=True)
        schema.add_field(VECTOR, DataType.FLOAT_VECTOR, dim=dim)
        schema.add_field("year", DataType.INT32, nullable=True)
        schema.add_field("genre_mask", DataType.INT64)
        self.client.create_collection(name, schema=schema, properties={SOURCE: source})

    def insert(self, name: str, rows: Sequence[dict[str, Any]]) -> None:
        self.client.insert(name, list(rows))

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
        self.client.load_collection(name)
        self._loaded.add(name)

    def ensure_loaded(self, name: str) -> None:
        # a restarted server keeps the data but not the load state
        if name not in self._loaded:
            if str(self.client.get_load_state(name).get("state")) != "Loaded":
                self.client.load_collection(name)
            self._loaded.add(name)

    def _read(self, name: str, call: Callable[[], T]) -> T:
        """Run a read; if the server has released the collection since (a restart), load it and retry once."""
        self.ensure_loaded(name)
        try:
            return call()
        except MilvusException as exc:
            if exc.code != NOT_LOADED:
                raise
            log.warning("%s was not loaded (server restarted?); loading it", name)
            self._loaded.discard(name)
            self.ensure_loaded(name)
            return call()

    def row_count(self, name: str) -> int:
        return int(self.client.get_collection_stats(name)["row_count"])

    def properties(self, name: str) -> dict[str, str]:
        return dict(self.client.describe_collection(name).get("properties") or {})

    def index_ready(self, name: str) -> bool:
        if VECTOR not in self.client.list_indexes(name, field_name=VECTOR):
            return False
        info = self.client.describe_index(name, VECTOR)
        return info.get("state") == "Finished" and int(info.get("pending_index_rows", 0)) == 0

    def mark_verified(self, name: str) -> None:
        self.client.alter_collection_properties(name, {VERIFIED: "true"})

    def is_complete(self, name: str, expected_rows: int) -> bool:
        """Built to the end (verified marker), with every row and a finished index."""
        return (self.exists(name) and self.properties(name).get(VERIFIED) == "true"
                and self.row_count(name) == expected_rows and self.index_ready(name))

    def drop(self, name: str) -> None:
        if name == self.live_collection():
            raise RuntimeError(f"refusing to drop {name}: the alias {ALIAS!r} serves it")
        self.client.drop_collection(name)
        self._loaded.discard(name)

    # --- the alias ---------------------------------------------------------------------------
    def live_collection(self) -> str | None:
        # list first: describe_alias on a missing alias raises (and logs an RPC error)
        if ALIAS not in self.client.list_aliases().get("aliases", []):
            return None
        return str(self.client.describe_alias(ALIAS)["collection_name"])

    def point_alias(self, name: str) -> None:
        """Serve `name`: one atomic alias switch (created the first time)."""
        if self.live_collection() is None:
            self.client.create_alias(name, ALIAS)
        else:
            self.client.alter_alias(name, ALIAS)

    # --- reads -------------------------------------------------------------------------------
    def vectors(self, name: str, ids: Iterable[int]) -> dict[int, np.ndarray]:
        """{movie_id: vector} for the ids present in the collection."""
        rows = self._read(name, lambda: self.client.get(name, ids=[int(i) for i in ids],
                                                        output_fields=["movie_id", VECTOR]))
        return {int(r["movie_id"]): np.asarray(r[VECTOR], dtype=np.float32) for r in rows}

    def search(self, name: str, queries: np.ndarray, k: int) -> list[list[Hit]]:
        data = np.asarray(queries, dtype=np.float32).tolist()
        result = self._read(name, lambda: self.client.search(
            name, data=data, limit=k, search_params={"params": {"ef": max(64, k)}}, output_fields=["movie_id"]))
        return [[Hit(int(h["movie_id"]), float(h["distance"])) for h in hits] for hits in result]
