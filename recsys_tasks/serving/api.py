"""The recommendations API (FastAPI). Relative routes only, so it also works mounted under a prefix
(the Airflow plugin serves it at /recsys); OpenAPI docs at ./docs.

Every answer is JSON. 400: bad input (the message names the rule); 401: missing or wrong API key;
404: unknown movie or user; 422: a request that does not match the schema; 503: no live model, or a
store (named in `store`) unavailable, with Retry-After. Routes are plain functions, which FastAPI runs
in its thread pool, so a slow store never blocks the event loop; every store call has a timeout, and a
failed store answers 503 at once until it recovers (`guard`).

`recsys serve` passes an API key (`RECSYS_API_KEY`): then every route but /health needs it in the
X-API-Key header. The Airflow plugin mounts the app without one (Airflow authenticates its users).
"""

from __future__ import annotations

import hmac
import threading
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Annotated, Any, Literal, TypeVar

from fastapi import Depends, FastAPI, HTTPException, Path, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.security import APIKeyHeader
from pydantic import BaseModel, Field, StrictInt

from recsys_tasks.config import Settings, load_settings
from recsys_tasks.errors import InputError
from recsys_tasks.logs import get_logger
from recsys_tasks.serving.guard import CATALOG, MILVUS, Guard, StoreUnavailable
from recsys_tasks.serving.recommend import (
    MAX_EXCLUDE,
    MAX_HISTORY,
    MAX_K,
    Filters,
    NoLiveModel,
    NotFound,
    Served,
    current,
    for_user,
    history_in,
    record_ratings,
    similar_in,
)

log = get_logger(__name__)
T = TypeVar("T")
ID_MAX = 2**63 - 1
MovieId = Annotated[StrictInt, Field(ge=1, le=ID_MAX)]
NEWEST_TS = 4_102_444_800  # 2100-01-01: later timestamps are mistakes
NO_MODEL_RETRY_S = 60
PRINTABLE = r"^[^\x00-\x1f\x7f]+$"  # no control characters (SQLite would read a NUL as the pattern's end)


class Movie(BaseModel):
    movie_id: int
    title: str | None
    year: int | None
    genres: str | None


class Because(BaseModel):
    movie_id: int = Field(description="the history movie closest to the recommended one")
    title: str | None


class Item(Movie):
    score: float = Field(description="inner product with the query (popularity: the snapshot's rating count)")
    because: Because | None = None


class Recommendations(BaseModel):
    model_version: str
    collection: str
    method: Literal["similar", "history", "popularity"]
    user_id: int | None = None
    fallback: str | None = Field(None, description="why a fallback answered (no usable history)")
    items: list[Item]


class HistoryRequest(BaseModel):
    history: list[MovieId] = Field(min_length=1, max_length=MAX_HISTORY,
                                   description="movie ids the user watched, oldest first")
    k: StrictInt = Field(10, ge=1, le=MAX_K)
    genre: list[Annotated[str, Field(min_length=1, max_length=40)]] = Field([], max_length=10)
    year_min: StrictInt | None = Field(None, ge=0, le=3000)
    year_max: StrictInt | None = Field(None, ge=0, le=3000)
    exclude: list[MovieId] = Field([], max_length=MAX_EXCLUDE)


class Rating(BaseModel):
    movie_id: MovieId
    rating: float = Field(ge=0.5, le=5.0)
    timestamp: StrictInt | None = Field(None, ge=0, le=NEWEST_TS, description="unix seconds (default: now)")


class RatingsRequest(BaseModel):
    ratings: list[Rating] = Field(min_length=1, max_length=100)


class RatingsRecorded(BaseModel):
    user_id: int
    recorded: int = Field(description="new ratings stored")
    duplicates: int = Field(description="ratings already stored (same user, movie and timestamp)")


class Genres(BaseModel):
    model_version: str
    genres: list[str]


class Health(BaseModel):
    status: str
    model_version: str | None
    collection: str | None
    counts: dict[str, int]
    store: str | None = None


class Error(BaseModel):
    detail: str
    store: str | None = Field(None, description="the store that did not answer (503)")


RETRY_AFTER = {"Retry-After": {"description": "seconds to wait before trying again", "schema": {"type": "integer"}}}
ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": Error, "description": "bad input: the message names the rule"},
    404: {"model": Error, "description": "unknown movie or user"},
    503: {"model": Error, "description": "no live model, or a store unavailable", "headers": RETRY_AFTER},
}
Genre = Annotated[list[Annotated[str, Field(min_length=1, max_length=40)]] | None,
                  Query(max_length=10, description="only movies of every genre given (repeat the parameter)")]
YearMin = Annotated[int | None, Query(ge=0, le=3000, description="only movies from this year on")]
YearMax = Annotated[int | None, Query(ge=0, le=3000, description="only movies up to this year")]
Exclude = Annotated[list[Annotated[int, Field(ge=1, le=ID_MAX)]] | None,
                    Query(max_length=MAX_EXCLUDE, description="movie ids to leave out (repeat the parameter)")]
K = Annotated[int, Query(ge=1, le=MAX_K)]


def _filters(genre: list[str] | None, year_min: int | None, year_max: int | None,
             exclude: list[int] | None) -> Filters:
    return Filters(tuple(genre or ()), year_min, year_max, frozenset(exclude or ()))


def query_filters(genre: Genre = None, year_min: YearMin = None, year_max: YearMax = None,
                  exclude: Exclude = None) -> Filters:
    """The filter query parameters of the GET routes."""
    return _filters(genre, year_min, year_max, exclude)


QueryFilters = Annotated[Filters, Depends(query_filters)]
API_KEY = APIKeyHeader(name="X-API-Key", auto_error=False, description="required when the server has a key")


def _error(status: int, detail: str, store: str | None = None, retry_after: int | None = None) -> JSONResponse:
    headers = {"Retry-After": str(retry_after)} if retry_after else None
    return JSONResponse(status_code=status, content={"detail": detail, "store": store}, headers=headers)


def create_app(settings: Settings | None = None, *, api_key: str | None = None) -> FastAPI:
    """The app over the stores of `settings`; with `api_key`, every route but /health requires it."""
    settings = settings or load_settings()
    model_now = current(settings, timeout_s=settings.store_timeout_s)
    guard = Guard()

    def serve(needs: tuple[str, ...], fn: Callable[[Served], T]) -> T:
        return guard.run(needs, lambda: model_now.run(fn))

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        def warm() -> None:  # read the live model's vectors and titles before the first request needs them
            try:
                serve((MILVUS, CATALOG), lambda m: (m.records, m.position, m.genre_names))
            except Exception as exc:  # noqa: BLE001 - a request will say what is wrong
                log.info("serving: nothing warmed at start (%s)", exc)

        threading.Thread(target=warm, name="recsys-warm", daemon=True).start()
        yield

    def authorised(key: Annotated[str | None, Depends(API_KEY)]) -> None:
        if api_key and not (key and hmac.compare_digest(key.encode(), api_key.encode())):
            raise HTTPException(401, "missing or wrong API key (X-API-Key)")

    protected = [Depends(authorised)] if api_key else []
    responses = {**ERRORS, **({401: {"model": Error, "description": "missing or wrong API key"}} if api_key else {})}
    app = FastAPI(title="movielens-recsys", version="2", lifespan=lifespan,
                  description="Movie recommendations from the live PinSage model (Milvus + SQL catalog).")

    @app.exception_handler(RequestValidationError)
    def invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        # without the offending input: a JSON number like 1e400 is inf, which JSON cannot carry back
        detail = [{"loc": list(e["loc"]), "msg": e["msg"], "type": e["type"]} for e in exc.errors()]
        return JSONResponse(status_code=422, content={"detail": detail})

    @app.exception_handler(HTTPException)
    def http_error(_: Request, exc: HTTPException) -> JSONResponse:
        return _error(exc.status_code, str(exc.detail))

    @app.exception_handler(NotFound)
    def not_found(_: Request, exc: NotFound) -> JSONResponse:
        return _error(404, str(exc))

    @app.exception_handler(InputError)
    def bad_input(_: Request, exc: InputError) -> JSONResponse:
        return _error(400, str(exc))

    @app.exception_handler(NoLiveModel)
    def no_model(_: Request, exc: NoLiveModel) -> JSONResponse:
        return _error(503, str(exc), retry_after=NO_MODEL_RETRY_S)

    @app.exception_handler(StoreUnavailable)
    def unavailable(_: Request, exc: StoreUnavailable) -> JSONResponse:
        return _error(503, str(exc), exc.store, exc.retry_after)

    @app.get("/health", response_model=Health, responses={503: {"model": Health, "headers": RETRY_AFTER}})
    def health() -> Any:
        """The live model and both stores' counts (public: no API key)."""
        def counts(model: Served) -> Health:
            return Health(status="ok", model_version=model.version, collection=model.collection,
                          counts={"movies": model.catalog.catalog_size(model.catalog_id),
                                  "vectors": model.store.row_count(model.collection)})
        try:
            return serve((MILVUS, CATALOG), counts)
        except (NoLiveModel, StoreUnavailable) as exc:
            store = getattr(exc, "store", None)
            body = Health(status=f"{store} unavailable" if store else "no live model", model_version=None,
                          collection=None, counts={"movies": 0, "vectors": 0}, store=store)
            retry = getattr(exc, "retry_after", NO_MODEL_RETRY_S)
            return JSONResponse(status_code=503, content=body.model_dump(), headers={"Retry-After": str(retry)})

    @app.get("/movies/{movie_id}/similar", response_model=Recommendations, responses=responses,
             dependencies=protected)
    def similar(movie_id: Annotated[int, Path(ge=1, le=ID_MAX)], filters: QueryFilters, k: K = 10) -> dict[str, Any]:
        """Movies whose embeddings are nearest to this one's (itself excluded), within the filters."""
        return serve((MILVUS,), lambda m: similar_in(m, movie_id, k, filters))

    @app.post("/recommendations", response_model=Recommendations, responses=responses, dependencies=protected)
    def recommendations(body: HistoryRequest) -> dict[str, Any]:
        """Top k for a viewing history by the served history rule (the history excluded), within the filters;
        each item names the history movie closest to it."""
        filters = _filters(body.genre, body.year_min, body.year_max, body.exclude)
        return serve((MILVUS,), lambda m: history_in(m, list(body.history), body.k, filters))

    @app.get("/users/{user_id}/recommendations", response_model=Recommendations, responses=responses,
             dependencies=protected)
    def user_recommendations(user_id: Annotated[int, Path(ge=1, le=ID_MAX)], filters: QueryFilters,
                             k: K = 10) -> dict[str, Any]:
        """Top k for a user: their history in the live snapshot and the ratings recorded since, by the served
        rule, movies they saw excluded. A user without a usable history gets the most popular movies
        (method "popularity", with the reason in `fallback`)."""
        return serve((MILVUS, CATALOG), lambda m: for_user(m, user_id, k, filters))

    @app.post("/users/{user_id}/ratings", response_model=RatingsRecorded, responses=responses,
              dependencies=protected)
    def add_ratings(user_id: Annotated[int, Path(ge=1, le=ID_MAX)], body: RatingsRequest) -> dict[str, Any]:
        """Record a user's ratings (a new user id starts a new user). Idempotent by (user, movie, timestamp);
        the user's next recommendations use them."""
        now = int(time.time())
        ratings = [{"movie_id": r.movie_id, "rating": r.rating, "timestamp": now if r.timestamp is None else r.timestamp}
                   for r in body.ratings]
        return serve((MILVUS, CATALOG), lambda m: record_ratings(m, user_id, ratings))

    @app.get("/genres", response_model=Genres, responses=responses, dependencies=protected)
    def genres() -> dict[str, Any]:
        """The genres the live model can filter by."""
        def names(model: Served) -> dict[str, Any]:
            if model.genre_names is None:
                raise InputError(f"model {model.version}'s collection does not record its genres",
                                 rule="genre filter available")
            return {"model_version": model.version, "genres": model.genre_names}
        return serve((MILVUS,), names)

    @app.get("/movies", response_model=list[Movie], responses=responses, dependencies=protected)
    def search_movies(query: Annotated[str, Query(min_length=1, max_length=200, pattern=PRINTABLE)],
                      limit: Annotated[int, Query(ge=1, le=100)] = 20) -> list[dict[str, Any]]:
        """Find movie ids by title (case-insensitive substring)."""
        return serve((MILVUS, CATALOG), lambda m: m.catalog.search_titles(query, limit, m.catalog_id))

    return app


def serve_app() -> FastAPI:
    """The app `recsys serve` runs in each worker process (settings and key from RECSYS_*)."""
    settings = load_settings()
    return create_app(settings, api_key=settings.api_key or None)
