"""Recommendations from the live model: vector search in Milvus, titles from the catalog, users' histories.

The alias `movies` says which collection is live. `Live.model()` resolves it to a `Served` model, its
registry row naming the catalog, the snapshot and the history rule it was evaluated with; a request
then reads and searches only that collection, with those titles and that snapshot's histories. A
promotion in between cannot mix two models' vectors, or one model's vectors with another snapshot's
titles.

Caching: a served collection and its catalog never change (versions are immutable, catalogs are
content-addressed), so a `Served` keeps its vectors, scalar fields, titles and popularity once read.
The alias is checked again at most every ALIAS_TTL_S seconds (one cheap Milvus call), so each process
serves a newly promoted model within that time, and at once when it moved the alias itself; a
collection that retention dropped meanwhile is noticed at once (`CollectionMissing`) and the alias
resolved again.

Filters (genres, years, excluded ids) go into the vector search as a Milvus filter expression on the
collection's scalar fields, built from integers only. HNSW under a selective filter explores too few
candidates, so `ef` grows as the filter admits fewer rows, and a short answer is asked again with `ef`
at the collection's size: k results whenever k exist.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any, TypeVar

import numpy as np

from recsys_tasks.config import Settings
from recsys_tasks.errors import InputError
from recsys_tasks.logs import get_logger
from recsys_tasks.model.rules import DEFAULT_RULE, history_query
from recsys_tasks.stores.catalog import Catalog
from recsys_tasks.stores.milvus import (
    ALIAS,
    CollectionMissing,
    Hit,
    Rows,
    VectorStore,
    alias_moves,
    version_of,
)

log = get_logger(__name__)
T = TypeVar("T")

MAX_K = 100
MAX_HISTORY = 200
MAX_EXCLUDE = 200
ALIAS_TTL_S = 1.0
OVERSAMPLE_MAX = 100  # up to this many excluded movies are dropped from a longer answer; more go in the filter
MAX_EF = 32768  # Milvus's bound on HNSW's ef


class NotFound(InputError):
    """A movie or user the live model does not know (HTTP 404, CLI exit 2)."""


class NoLiveModel(RuntimeError):
    """Nothing is promoted yet (HTTP 503)."""


@dataclass(frozen=True)
class Filters:
    """What a caller may restrict recommendations to: every genre listed, a year range, ids left out."""

    genres: tuple[str, ...] = ()
    year_min: int | None = None
    year_max: int | None = None
    exclude: frozenset[int] = frozenset()

    def __post_init__(self) -> None:
        if self.year_min is not None and self.year_max is not None and self.year_min > self.year_max:
            raise InputError(f"year_min {self.year_min} is after year_max {self.year_max}", rule="year range")
        if len(self.exclude) > MAX_EXCLUDE:
            raise InputError(f"at most {MAX_EXCLUDE} excluded ids, got {len(self.exclude)}", rule="exclude length")


NO_FILTERS = Filters()


@dataclass(frozen=True, eq=False)
class Served:
    """One model version as served: its collection, its catalog (titles), its snapshot and history rule.
    What it reads from the stores it keeps: none of it changes while the version exists."""

    store: VectorStore
    catalog: Catalog
    collection: str
    catalog_id: str
    rule: dict[str, Any]
    snapshot_id: str | None = None

    @property
    def version(self) -> str:
        return version_of(self.collection)

    @cached_property
    def rows(self) -> Rows:
        return self.store.scan(self.collection)

    @cached_property
    def position(self) -> dict[int, int]:
        return {int(m): i for i, m in enumerate(self.rows.ids)}

    @cached_property
    def genre_names(self) -> list[str] | None:
        return self.store.genres(self.collection)

    @cached_property
    def records(self) -> dict[int, dict[str, Any]]:
        return self.catalog.movies_by_id(self.rows.ids.tolist(), self.catalog_id)

    @cached_property
    def popular(self) -> list[tuple[int, int]]:
        return self.catalog.popularity(self.snapshot_id) if self.snapshot_id else []

    def vector(self, movie_id: int) -> np.ndarray:
        return self.rows.vectors[self.position[movie_id]]


def served(store: VectorStore, catalog: Catalog, collection: str) -> Served:
    """The model in `collection`, with the catalog, snapshot and rule its registry row names."""
    row = catalog.version(version_of(collection))
    if row is None or not row.get("catalog_id") or not row.get("rule"):
        raise NoLiveModel(f"{collection} has no registry row with a catalog and a rule (run load_catalog)")
    return Served(store, catalog, collection, str(row["catalog_id"]), dict(row["rule"]), row.get("snapshot_id"))


class Live:
    """The live model of one setting, the alias checked at most every ALIAS_TTL_S seconds."""

    def __init__(self, settings: Settings, timeout_s: float | None) -> None:
        self.settings, self.timeout_s = settings, timeout_s
        self._lock = threading.Lock()
        self._model: Served | None = None
        self._checked = -math.inf
        self._moves = -1
        self._kept: dict[str, Served] = {}  # the live model and the one before (a rollback flips back)

    def stores(self) -> tuple[VectorStore, Catalog]:
        return (VectorStore.from_settings(self.settings, timeout=self.timeout_s),
                Catalog.from_settings(self.settings, timeout_s=self.timeout_s))

    def _fresh(self, model: Served | None) -> bool:
        return (model is not None and time.monotonic() - self._checked < ALIAS_TTL_S
                and alias_moves(model.store.uri) == self._moves)  # (this process moved the alias: at once)

    def model(self) -> Served:
        model = self._model
        if self._fresh(model):
            return model  # type: ignore[return-value]
        with self._lock:
            if self._fresh(self._model):
                return self._model  # type: ignore[return-value]
            store, catalog = self.stores()
            moves = alias_moves(store.uri)
            name = store.live_collection()
            if name is None:
                raise NoLiveModel(f"no model is served yet: the Milvus alias {ALIAS!r} does not exist "
                                  "(run the pipeline through promote)")
            model = self._kept.get(name)
            if model is None or model.store.uri != store.uri:  # (a restarted local server has a new port)
                model = served(store, catalog, name)
            previous = self._model
            self._kept = {name: model, **({previous.collection: previous} if previous and previous is not model else {})}
            self._model, self._checked, self._moves = model, time.monotonic(), moves
            return model

    def invalidate(self) -> None:
        with self._lock:
            self._checked = -math.inf

    def run(self, fn: Callable[[Served], T]) -> T:
        """`fn` on the live model; if its collection was dropped meanwhile, once more on the new one."""
        try:
            return fn(self.model())
        except CollectionMissing:
            self.invalidate()
            return fn(self.model())


_lives: dict[tuple[str, str, str, float | None], Live] = {}
_lives_lock = threading.Lock()


def live(settings: Settings) -> Served:
    """The model served now."""
    return current(settings).model()


def current(settings: Settings, timeout_s: float | None = None) -> Live:
    """One `Live` per setting per process (the API's workers each have theirs)."""
    key = (settings.milvus_uri or settings.resolved_milvus_uri, settings.resolved_db_url, settings.milvus_token,
           timeout_s)
    with _lives_lock:
        if key not in _lives:
            _lives[key] = Live(settings, timeout_s)
        return _lives[key]


# --- filtered search -----------------------------------------------------------------------------
def _check_k(k: int) -> None:
    if not 1 <= k <= MAX_K:
        raise InputError(f"k must be between 1 and {MAX_K}, got {k}", rule="k range")


def admitted(model: Served, filters: Filters) -> tuple[list[str], np.ndarray]:
    """The filter expression's parts and which rows (of `model.rows`) they admit."""
    rows = model.rows
    admit = np.ones(rows.ids.size, dtype=bool)
    parts: list[str] = []
    if filters.genres:
        names = model.genre_names
        if names is None:
            raise InputError(f"model {model.version}'s collection does not record its genres (loaded by an older "
                             "release), so it cannot filter by genre", rule="genre filter available")
        lookup = {n.lower(): i for i, n in enumerate(names)}
        unknown = [g for g in filters.genres if g.lower() not in lookup]
        if unknown:
            raise InputError(f"unknown genre {unknown[0]!r}; the model knows {', '.join(names)}", rule="known genre")
        need = sum(1 << lookup[g.lower()] for g in filters.genres)
        admit &= (rows.genre_mask & need) == need
        # every stored mask holding those bits (portable: Milvus has no bitwise operators)
        parts.append(f"genre_mask in [{', '.join(str(m) for m in sorted(set(rows.genre_mask[admit].tolist())))}]")
    if filters.year_min is not None:
        parts.append(f"year >= {int(filters.year_min)}")
        admit &= rows.year >= filters.year_min
    if filters.year_max is not None:
        parts.append(f"year <= {int(filters.year_max)}")
        admit &= (rows.year >= 0) & (rows.year <= filters.year_max)  # an unknown year matches no range
    return parts, admit


def search(model: Served, query: np.ndarray, k: int, filters: Filters, excluded: Iterable[int]) -> list[Hit]:
    """The top k for `query` among the rows `filters` admit, `excluded` left out: one vector search."""
    _check_k(k)
    parts, admit = admitted(model, filters)
    out = {int(m) for m in excluded} | set(filters.exclude)
    out_admitted = sorted(m for m in out if m in model.position and admit[model.position[m]])
    available = int(admit.sum()) - len(out_admitted)
    if available <= 0:
        return []
    limit = k
    if len(out_admitted) > OVERSAMPLE_MAX:
        parts.append(f"movie_id not in [{', '.join(map(str, out_admitted))}]")
        share = available
    else:
        limit, share = k + len(out_admitted), int(admit.sum())
    expression = " and ".join(parts)
    n = model.rows.ids.size
    ef = min(MAX_EF, n, math.ceil(max(64, limit) * n / max(1, share)))
    want = min(k, available)
    for attempt_ef in (ef, min(MAX_EF, max(n, limit))):
        hits = [h for h in model.store.search(model.collection, query[None, :], limit, filter=expression,
                                              ef=max(attempt_ef, limit))[0] if h.movie_id not in out][:k]
        if len(hits) >= want:
            return hits
    log.warning("search in %s with %r found %d of %d results", model.collection, expression, len(hits), want)
    return hits


def search_history(model: Served, movie_ids: Sequence[int], k: int, filters: Filters = NO_FILTERS,
                   seen: Iterable[int] | None = None) -> list[Hit]:
    """The served path: the model's rule over the history's vectors (oldest -> newest), one vector search
    with the filters, the history (or `seen`) excluded. The API and release/smoke.py both call this."""
    missing = [m for m in dict.fromkeys(movie_ids) if m not in model.position]
    if missing:
        raise NotFound(f"movies {missing[:10]} are not in model {model.version}", rule="known movie id")
    query = history_query(model.rows.vectors[[model.position[m] for m in movie_ids]], model.rule)
    return search(model, query, k, filters, movie_ids if seen is None else seen)


# --- answers -------------------------------------------------------------------------------------
def _items(model: Served, hits: Sequence[Hit], history: Sequence[int] = ()) -> list[dict[str, Any]]:
    """Hits with their catalog records; with a history, the history movie closest to each ("because you
    watched"), among the recent ones the rule weighs."""
    empty = {"title": None, "year": None, "genres": None}
    because: list[int | None] = [None] * len(hits)
    if history and hits:
        rule = {**DEFAULT_RULE, **model.rule}
        recent = list(history)[-len(rule["weights"]) if rule.get("weights") else -int(rule["max_items"]):]
        recent = [m for m in recent if m in model.position]
        if recent:
            h = model.rows.vectors[[model.position[m] for m in recent]]
            v = model.rows.vectors[[model.position[x.movie_id] for x in hits]]
            because = [recent[i] for i in np.argmax(v @ h.T, axis=1)]
    items = []
    for hit, why in zip(hits, because):
        item = {**empty, **model.records.get(hit.movie_id, {}), "movie_id": hit.movie_id, "score": hit.score}
        if why is not None:
            item["because"] = {"movie_id": why, "title": model.records.get(why, {}).get("title")}
        items.append(item)
    return items


def _answer(model: Served, method: str, items: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    return {"model_version": model.version, "collection": model.collection, "method": method, "items": items, **extra}


def similar_in(model: Served, movie_id: int, k: int, filters: Filters = NO_FILTERS) -> dict[str, Any]:
    """The k movies nearest to `movie_id`, without itself."""
    _check_k(k)
    if movie_id not in model.position:
        raise NotFound(f"movie {movie_id} is not in model {model.version}", rule="known movie id")
    return _answer(model, "similar", _items(model, search(model, model.vector(movie_id), k, filters, [movie_id])))


def history_in(model: Served, movie_ids: Sequence[int], k: int, filters: Filters = NO_FILTERS) -> dict[str, Any]:
    """Top k for a history (oldest -> newest) by the model's history rule, the history itself excluded."""
    _check_k(k)
    if not 1 <= len(movie_ids) <= MAX_HISTORY:
        raise InputError(f"history must hold 1 to {MAX_HISTORY} movie ids, got {len(movie_ids)}",
                         rule="history length")
    return _answer(model, "history", _items(model, search_history(model, movie_ids, k, filters), movie_ids))


def user_history(model: Served, user_id: int) -> list[int]:
    """The user's movies, oldest first: the live snapshot's history, then the ratings recorded since, by
    (timestamp, movie_id); a movie rated again counts at its latest time."""
    stored, events = model.catalog.user_history(model.snapshot_id or "", user_id)
    if stored is None and not events:
        raise NotFound(f"user {user_id} is not in model {model.version}'s snapshot and has recorded no ratings",
                       rule="known user")
    latest: dict[int, int] = {}
    for ts, movie in sorted([*(stored or []), *events]):
        latest[movie] = ts
    return [m for _, m in sorted((ts, m) for m, ts in latest.items())]


def popular_in(model: Served, k: int, filters: Filters, excluded: Iterable[int]) -> list[Hit]:
    """The snapshot's most rated movies that the filters admit (the fallback without a usable history)."""
    _, admit = admitted(model, filters)
    out = set(excluded) | set(filters.exclude)
    hits = []
    for movie, ratings in model.popular:
        if movie not in out and movie in model.position and admit[model.position[movie]]:
            hits.append(Hit(movie, float(ratings)))
            if len(hits) == k:
                break
    return hits


def for_user(model: Served, user_id: int, k: int, filters: Filters = NO_FILTERS) -> dict[str, Any]:
    """Top k for a user from their history by the served rule; without a history the model knows, the most
    popular movies (method "popularity"). Movies the user saw are excluded either way."""
    _check_k(k)
    history = user_history(model, user_id)
    known = [m for m in history if m in model.position]
    if not known:
        why = "no history" if not history else "none of the user's movies is in this model"
        return _answer(model, "popularity", _items(model, popular_in(model, k, filters, history)), user_id=user_id,
                       fallback=f"popularity: {why}")
    hits = search_history(model, known, k, filters, seen=history)
    return _answer(model, "history", _items(model, hits, known), user_id=user_id)


def record_ratings(model: Served, user_id: int, ratings: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Store a user's new ratings (idempotent by user, movie and timestamp); the next answer uses them."""
    missing = sorted({int(r["movie_id"]) for r in ratings} - set(model.records))
    if missing:
        raise NotFound(f"movies {missing[:10]} are not in model {model.version}'s catalog", rule="known movie id")
    added = model.catalog.record_ratings(user_id, ratings)
    return {"user_id": user_id, "recorded": added, "duplicates": len(ratings) - added}


def recommend_similar(settings: Settings, movie_id: int, k: int, filters: Filters = NO_FILTERS) -> dict[str, Any]:
    return current(settings).run(lambda m: similar_in(m, movie_id, k, filters))


def recommend_for_history(settings: Settings, movie_ids: list[int], k: int,
                          filters: Filters = NO_FILTERS) -> dict[str, Any]:
    return current(settings).run(lambda m: history_in(m, movie_ids, k, filters))


def recommend_for_user(settings: Settings, user_id: int, k: int, filters: Filters = NO_FILTERS) -> dict[str, Any]:
    return current(settings).run(lambda m: for_user(m, user_id, k, filters))
