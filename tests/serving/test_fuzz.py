"""Fuzzing the API from its own OpenAPI document (schemathesis, in-process, bounded examples) over real
stores, and injection strings in every parameter: never a 5xx, never an answer outside the schema,
and the stores unchanged by any of it (but for ratings recorded through the ratings route)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest
import schemathesis
from fastapi import FastAPI
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.generation import GenerationMode
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

WITHOUT_INPUT = {"/health", "/genres"}
MAX_EXAMPLES = 30  # per route and mode: bounded, and the same examples every run (derandomized)
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


def _operations(app: FastAPI) -> list:
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    return [result.ok() for result in schema.get_all_operations()]


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_every_route_answers_within_its_schema(world: tuple[Settings, Release, FastAPI], mode: GenerationMode) -> None:
    # driven by hand rather than schemathesis' pytest plugin, whose lazy loader fails under pytest 9
    operations = _operations(world[2])
    assert {f"{op.method.upper()} {op.path}" for op in operations} >= {
        "GET /movies/{movie_id}/similar", "POST /recommendations", "GET /users/{user_id}/recommendations",
        "POST /users/{user_id}/ratings", "GET /movies", "GET /genres", "GET /health"}
    for operation in operations:
        if mode is GenerationMode.NEGATIVE and operation.path in WITHOUT_INPUT:
            continue  # nothing to make invalid
        @given(case=operation.as_strategy(generation_mode=mode))
        @settings(max_examples=MAX_EXAMPLES, deadline=None, derandomize=True, database=None,
                  suppress_health_check=list(HealthCheck))
        def call(case) -> None:
            case.call_and_validate(checks=CHECKS)

        call()


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
        segment = quote(text, safe="")  # as a client must send it in a path
        gets = [(f"/movies/{segment}/similar", {}), (f"/movies/{movie}/similar", {"k": text}),
                (f"/movies/{movie}/similar", {"genre": text}), (f"/movies/{movie}/similar", {"year_min": text}),
                (f"/movies/{movie}/similar", {"year_max": text}), (f"/movies/{movie}/similar", {"exclude": text}),
                (f"/users/{segment}/recommendations", {}), ("/users/1/recommendations", {"k": text}),
                ("/users/1/recommendations", {"genre": text}), ("/users/1/recommendations", {"exclude": text}),
                ("/users/1/recommendations", {"year_min": text}), ("/movies", {"query": text}),
                ("/movies", {"query": "Movie", "limit": text}), ("/genres", {}), ("/health", {})]
        for url, params in gets:
            res = client.get(url, params=params)
            assert res.status_code < 500 and res.headers["content-type"] == "application/json", (url, params, res.text)
        posts = [("/recommendations", {"history": [text]}), ("/recommendations", {"history": [movie], "k": text}),
                 ("/recommendations", {"history": [movie], "genre": [text]}),
                 ("/recommendations", {"history": [movie], "exclude": [text]}),
                 (f"/users/{segment}/ratings", {"ratings": [{"movie_id": movie, "rating": 3}]}),
                 ("/users/1/ratings", {"ratings": [{"movie_id": text, "rating": 3}]}),
                 ("/users/1/ratings", {"ratings": [{"movie_id": movie, "rating": text}]}),
                 ("/users/1/ratings", {"ratings": [{"movie_id": movie, "rating": 3, "timestamp": text}]})]
        for url, body in posts:
            res = client.post(url, json=body)
            assert res.status_code < 500 and res.status_code != 200, (url, body, res.text)
        raw = client.post("/recommendations", content=text, headers={"content-type": "application/json"})
        assert raw.status_code == 422
        assert _state(settings) == before
        found = client.get("/movies", params={"query": text})  # a substring, never an expression
        if text.isprintable():
            assert all(text.lower() in m["title"].lower() for m in found.json()), (text, found.json()[:2])
        else:
            assert found.status_code == 422
    assert client.get("/health").json()["counts"] == {"movies": 300, "vectors": 300}
