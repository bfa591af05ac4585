"""Fuzzing the API from its own OpenAPI document (schemathesis, in-process, bounded examples) over real
stores, and injection strings in every parameter: never a 5xx, never an answer outside the schema,
and the stores unchanged by any of it (but for ratings recorded through the ratings route)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import schemathesis
from fastapi import FastAPI
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from sqlalchemy import inspect

from recsys_tasks.config import Settings
from recsys_tasks.serving.api import create_app
from recsys_tasks.stores import catalog as cat
from recsys_tasks.stores.catalog import Catalog
from tests.fixtures_stores import Release, make_release, make_settings, ship, write_processed

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_headers_conformance,
          response_schema_conformance, negative_data_rejection]
INJECTIONS = ["1; DROP TABLE catalog_movies; --", "' OR 1=1 --", "1 OR 1=1", "%' OR '1'='1", "\"; DROP TABLE model_versions; --",
              "1) or (1=1", "movie_id >= 0 or year", "genre_mask in [1] or 1==1", "<script>alert(1)</script>",
              "../../etc/passwd", "\u0000", "１２３", "9" * 40, "-1", "1e400", "NaN", "null", "[]", "{}"]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Settings, Release, FastAPI]]:
    settings, cleanups = make_settings(tmp_path_factory.mktemp("fuzz") / "home", "lite", "sqlite", None)
    release = make_release(settings, "fuzz", processed=write_processed(settings, idle_users=2))
    ship(settings, release)
    yield settings, release, create_app(settings)
    for cleanup in reversed(cleanups):
        cleanup()


@pytest.fixture(scope="module")
def api_schema(world: tuple[Settings, Release, FastAPI]):
    return schemathesis.openapi.from_asgi("/openapi.json", world[2])


schema = schemathesis.pytest.from_fixture("api_schema")


@schema.parametrize()
@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
def test_every_route_answers_within_its_schema(case) -> None:
    case.call_and_validate(checks=CHECKS)


def _state(settings: Settings) -> dict:
    c = Catalog.from_settings(settings)
    counts = {t.name: c.count(t) for t in cat.metadata.sorted_tables}
    return {"tables": sorted(inspect(c.engine).get_table_names()), **counts}


def test_injection_strings_in_every_parameter(world: tuple[Settings, Release, FastAPI], tmp_path: Path) -> None:
    settings, release, app = world
    client = TestClient(app, raise_server_exceptions=False)
    movie = int(release.ids[1])
    before = _state(settings)
    for text in INJECTIONS:
        gets = [(f"/movies/{text}/similar", {}), (f"/movies/{movie}/similar", {"k": text}),
                (f"/movies/{movie}/similar", {"genre": text}), (f"/movies/{movie}/similar", {"year_min": text}),
                (f"/movies/{movie}/similar", {"year_max": text}), (f"/movies/{movie}/similar", {"exclude": text}),
                (f"/users/{text}/recommendations", {}), ("/users/1/recommendations", {"k": text}),
                ("/users/1/recommendations", {"genre": text}), ("/users/1/recommendations", {"exclude": text}),
                ("/users/1/recommendations", {"year_min": text}), ("/movies", {"query": text}),
                ("/movies", {"query": "Movie", "limit": text}), ("/genres", {}), ("/health", {})]
        for url, params in gets:
            res = client.get(url, params=params)
            assert res.status_code < 500 and res.headers["content-type"] == "application/json", (url, params, res.text)
        posts = [("/recommendations", {"history": [text]}), ("/recommendations", {"history": [movie], "k": text}),
                 ("/recommendations", {"history": [movie], "genre": [text]}),
                 ("/recommendations", {"history": [movie], "exclude": [text]}),
                 (f"/users/{text}/ratings", {"ratings": [{"movie_id": movie, "rating": 3}]}),
                 ("/users/1/ratings", {"ratings": [{"movie_id": text, "rating": 3}]}),
                 ("/users/1/ratings", {"ratings": [{"movie_id": movie, "rating": text}]}),
                 ("/users/1/ratings", {"ratings": [{"movie_id": movie, "rating": 3, "timestamp": text}]})]
        for url, body in posts:
            res = client.post(url, json=body)
            assert res.status_code < 500 and res.status_code != 200, (url, body, res.text)
        raw = client.post("/recommendations", content=text, headers={"content-type": "application/json"})
        assert raw.status_code == 422
        assert _state(settings) == before
        assert client.get("/movies", params={"query": text}).json() == []
    assert client.get("/health").json()["counts"] == {"movies": 300, "vectors": 300}
