"""Recommendations from the live model: vectors and search in Milvus, titles from the catalog.

The alias `movies` says which collection is live; each request resolves it once (`live`) to a
`Served` model, its registry row naming the catalog and the history rule it was evaluated with, and
then reads and searches only that collection with those titles: a promotion in between cannot mix two
models' vectors, or one model's vectors with another snapshot's titles.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from recsys_tasks.config import Settings
from recsys_tasks.errors import InputError
from recsys_tasks.model.rules import history_query
from recsys_tasks.stores.catalog import Catalog
from recsys_tasks.stores.milvus import ALIAS, Hit, VectorStore, version_of

MAX_K = 100
MAX_HISTORY = 200


class NotFound(InputError):
    """A movie the live model does not know (HTTP 404, CLI exit 2)."""


class NoLiveModel(RuntimeError):
    """Nothing is promoted yet (HTTP 503)."""


@dataclass(frozen=True)
class Served:
    """One model version as served: its collection, its catalog (titles) and its history rule."""

    store: VectorStore
    catalog: Catalog
    collection: str
    catalog_id: str
    rule: dict[str, Any]

    @property
    def version(self) -> str:
        return version_of(self.collection)


def served(store: VectorStore, catalog: Catalog, collection: str) -> Served:
    """The model in `collection`, with the catalog and rule its registry row names."""
    row = catalog.version(version_of(collection))
    if row is None or not row.get("catalog_id") or not row.get("rule"):
        raise NoLiveModel(f"{collection} has no registry row with a catalog and a rule (run load_catalog)")
    return Served(store, catalog, collection, str(row["catalog_id"]), dict(row["rule"]))


def live(settings: Settings) -> Served:
    store = VectorStore.from_settings(settings)
    name = store.live_collection()
    if name is None:
        raise NoLiveModel(f"no model is served yet: the Milvus alias {ALIAS!r} does not exist "
                          "(run the pipeline through promote)")
    return served(store, Catalog.from_settings(settings), name)


def _check_k(k: int) -> None:
    if not 1 <= k <= MAX_K:
        raise InputError(f"k must be between 1 and {MAX_K}, got {k}", rule="k range")


def _result(model: Served, hits: Sequence[Hit]) -> dict[str, Any]:
    records = model.catalog.movies_by_id((h.movie_id for h in hits), model.catalog_id)
    empty = {"title": None, "year": None, "genres": None}
    items = [{**empty, **records.get(h.movie_id, {}), "movie_id": h.movie_id, "score": h.score} for h in hits]
    return {"model_version": model.version, "collection": model.collection, "items": items}


def similar_in(model: Served, movie_id: int, k: int) -> dict[str, Any]:
    """The k movies nearest to `movie_id`, without itself."""
    _check_k(k)
    vector = model.store.vectors(model.collection, [movie_id]).get(movie_id)
    if vector is None:
        raise NotFound(f"movie {movie_id} is not in model {model.version}", rule="known movie id")
    hits = [h for h in model.store.search(model.collection, vector[None, :], k + 1)[0] if h.movie_id != movie_id]
    return _result(model, hits[:k])


def history_in(model: Served, movie_ids: Sequence[int], k: int) -> dict[str, Any]:
    """Top k for a history (oldest -> newest) by the model's history rule, the history itself excluded."""
    _check_k(k)
    if not 1 <= len(movie_ids) <= MAX_HISTORY:
        raise InputError(f"history must hold 1 to {MAX_HISTORY} movie ids, got {len(movie_ids)}",
                         rule="history length")
    return _result(model, search_history(model, movie_ids, k))


def search_history(model: Served, movie_ids: Sequence[int], k: int) -> list[Hit]:
    """The served path: the model's rule over the history's vectors, one vector search, the history excluded."""
    found = model.store.vectors(model.collection, set(movie_ids))
    missing = [m for m in dict.fromkeys(movie_ids) if m not in found]
    if missing:
        raise NotFound(f"movies {missing[:10]} are not in model {model.version}", rule="known movie id")
    query = history_query(np.stack([found[m] for m in movie_ids]), model.rule)
    seen = set(movie_ids)
    return [h for h in model.store.search(model.collection, query[None, :], k + len(seen))[0]
            if h.movie_id not in seen][:k]


def recommend_similar(settings: Settings, movie_id: int, k: int) -> dict[str, Any]:
    return similar_in(live(settings), movie_id, k)


def recommend_for_history(settings: Settings, movie_ids: list[int], k: int) -> dict[str, Any]:
    return history_in(live(settings), movie_ids, k)
