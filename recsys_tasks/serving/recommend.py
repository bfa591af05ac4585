"""Recommendations from the live model: vectors and search in Milvus, titles from the catalog.

The alias `movies` says which collection is live; each request resolves it once and then reads
and searches that one collection, so a promotion in between cannot mix two models' vectors.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from recsys_tasks.config import Settings
from recsys_tasks.errors import InputError
from recsys_tasks.model.rules import DEFAULT_RULE, history_query
from recsys_tasks.stores.catalog import Catalog
from recsys_tasks.stores.milvus import ALIAS, Hit, VectorStore, version_of

MAX_K = 100
MAX_HISTORY = 200


class NotFound(InputError):
    """A movie the live model does not know (HTTP 404, CLI exit 2)."""


class NoLiveModel(RuntimeError):
    """Nothing is promoted yet (HTTP 503)."""


def live(settings: Settings) -> tuple[VectorStore, Catalog, str]:
    store = VectorStore.from_settings(settings)
    name = store.live_collection()
    if name is None:
        raise NoLiveModel(f"no model is served yet: the Milvus alias {ALIAS!r} does not exist "
                          "(run the pipeline through promote)")
    return store, Catalog.from_settings(settings), name


def _check_k(k: int) -> None:
    if not 1 <= k <= MAX_K:
        raise InputError(f"k must be between 1 and {MAX_K}, got {k}", rule="k range")


def _result(catalog: Catalog, collection: str, hits: Sequence[Hit]) -> dict[str, Any]:
    records = catalog.movies_by_id(h.movie_id for h in hits)
    empty = {"title": None, "year": None, "genres": None}
    items = [{**empty, **records.get(h.movie_id, {}), "movie_id": h.movie_id, "score": h.score} for h in hits]
    return {"model_version": version_of(collection), "collection": collection, "items": items}


def similar_in(store: VectorStore, catalog: Catalog, collection: str, movie_id: int, k: int) -> dict[str, Any]:
    """The k movies nearest to `movie_id` in `collection`, without itself."""
    _check_k(k)
    vector = store.vectors(collection, [movie_id]).get(movie_id)
    if vector is None:
        raise NotFound(f"movie {movie_id} is not in model {version_of(collection)}", rule="known movie id")
    hits = [h for h in store.search(collection, vector[None, :], k + 1)[0] if h.movie_id != movie_id]
    return _result(catalog, collection, hits[:k])


def history_in(store: VectorStore, catalog: Catalog, collection: str, movie_ids: Sequence[int], k: int,
               rule: dict[str, Any] | None) -> dict[str, Any]:
    """Top k for a history (oldest -> newest) by the served history rule, the history itself excluded."""
    _check_k(k)
    if not 1 <= len(movie_ids) <= MAX_HISTORY:
        raise InputError(f"history must hold 1 to {MAX_HISTORY} movie ids, got {len(movie_ids)}",
                         rule="history length")
    found = store.vectors(collection, set(movie_ids))
    missing = [m for m in dict.fromkeys(movie_ids) if m not in found]
    if missing:
        raise NotFound(f"movies {missing[:10]} are not in model {version_of(collection)}", rule="known movie id")
    query = history_query(np.stack([found[m] for m in movie_ids]), rule or DEFAULT_RULE)
    seen = set(movie_ids)
    hits = [h for h in store.search(collection, query[None, :], k + len(seen))[0] if h.movie_id not in seen]
    return _result(catalog, collection, hits[:k])


def recommend_similar(settings: Settings, movie_id: int, k: int) -> dict[str, Any]:
    store, catalog, collection = live(settings)
    return similar_in(store, catalog, collection, movie_id, k)


def recommend_for_history(settings: Settings, movie_ids: list[int], k: int) -> dict[str, Any]:
    store, catalog, collection = live(settings)
    rule = ((catalog.version(version_of(collection)) or {}).get("metrics") or {}).get("rule")
    return history_in(store, catalog, collection, movie_ids, k, rule)
