"""The recommendations API (FastAPI). Relative routes only, so it also works mounted under a prefix
(the Airflow plugin serves it at /recsys); OpenAPI docs at ./docs.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import FastAPI, Path, Query, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field, StrictInt

from recsys_tasks.config import Settings, load_settings
from recsys_tasks.serving.recommend import (
    MAX_HISTORY,
    MAX_K,
    NoLiveModel,
    NotFound,
    live,
    recommend_for_history,
    recommend_similar,
)

MovieId = Annotated[StrictInt, Field(ge=1, le=2**63 - 1)]


class Movie(BaseModel):
    movie_id: int
    title: str | None
    year: int | None
    genres: str | None


class Item(Movie):
    score: float


class Recommendations(BaseModel):
    model_version: str
    collection: str
    items: list[Item]


class HistoryRequest(BaseModel):
    history: list[MovieId] = Field(min_length=1, max_length=MAX_HISTORY,
                                   description="movie ids the user watched, oldest first")
    k: StrictInt = Field(10, ge=1, le=MAX_K)


class Health(BaseModel):
    status: str
    model_version: str | None
    collection: str | None
    counts: dict[str, int]


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or load_settings()
    app = FastAPI(title="movielens-recsys", version="1",
                  description="Movie recommendations from the live PinSage model (Milvus + SQL catalog).")

    @app.exception_handler(NotFound)
    def not_found(_: Request, exc: NotFound) -> JSONResponse:
        return JSONResponse(status_code=404, content={"detail": str(exc)})

    @app.exception_handler(NoLiveModel)
    def no_model(_: Request, exc: NoLiveModel) -> JSONResponse:
        return JSONResponse(status_code=503, content={"detail": str(exc)})

    @app.get("/health", response_model=Health, responses={503: {"model": Health}})
    def health() -> Any:
        try:
            model = live(settings)
        except NoLiveModel:
            body = Health(status="no live model", model_version=None, collection=None,
                          counts={"movies": 0, "vectors": 0})
            return JSONResponse(status_code=503, content=body.model_dump())
        return Health(status="ok", model_version=model.version, collection=model.collection,
                      counts={"movies": model.catalog.catalog_size(model.catalog_id),
                              "vectors": model.store.row_count(model.collection)})

    @app.get("/movies/{movie_id}/similar", response_model=Recommendations)
    def similar(movie_id: Annotated[int, Path(ge=1, le=2**63 - 1)],
                k: Annotated[int, Query(ge=1, le=MAX_K)] = 10) -> dict[str, Any]:
        """Movies whose embeddings are nearest to this one's (itself excluded)."""
        return recommend_similar(settings, movie_id, k)

    @app.post("/recommendations", response_model=Recommendations)
    def recommendations(body: HistoryRequest) -> dict[str, Any]:
        """Top k for a viewing history by the served history rule (the history excluded)."""
        return recommend_for_history(settings, list(body.history), body.k)

    @app.get("/movies", response_model=list[Movie])
    def search_movies(query: Annotated[str, Query(min_length=1, max_length=200)],
                      limit: Annotated[int, Query(ge=1, le=100)] = 20) -> list[dict[str, Any]]:
        """Find movie ids by title (case-insensitive substring)."""
        model = live(settings)
        return model.catalog.search_titles(query, limit, model.catalog_id)

    return app
