"""The FastAPI app over real stores (Milvus Lite + SQLite, Milvus Lite + MariaDB), via TestClient."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import inspect

from recsys_tasks.config import Settings
from recsys_tasks.model.rules import history_query
from recsys_tasks.serving.api import create_app
from recsys_tasks.stores import catalog as cat
from recsys_tasks.stores.catalog import Catalog
from tests.fixtures_stores import Release, make_release, make_settings, ship

INJECTIONS = ["1; DROP TABLE movies; --", "' OR 1=1 --", "1 OR 1=1", "%' OR '1'='1", "1); DELETE FROM movies; --",
              "\"; DROP TABLE model_versions; --"]


@dataclass
class Served:
    settings: Settings
    release: Release
    client: TestClient


@pytest.fixture(scope="module", params=[pytest.param("sqlite", id="sqlite"),
                                        pytest.param("mariadb", id="mariadb", marks=pytest.mark.mysql)])
def served(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    settings, cleanups = make_settings(tmp_path_factory.mktemp("api") / "home", "lite", request.param, None)
    release = make_release(settings, "api", rule={"name": "history", "half_life": 1.0, "max_items": 4})
    ship(settings, release)
    with TestClient(create_app(settings)) as client:
        yield Served(settings, release, client)
    for cleanup in reversed(cleanups):
        cleanup()


def _state(settings: Settings) -> dict:
    c = Catalog.from_settings(settings)
    return {"tables": sorted(inspect(c.engine).get_table_names()),
            **{t.name: c.count(t) for t in cat.metadata.sorted_tables}}


def test_health(served: Served) -> None:
    body = served.client.get("/health").json()
    assert body == {"status": "ok", "model_version": served.release.version,
                    "collection": f"movies_{served.release.version}", "counts": {"movies": 300, "vectors": 300},
                    "store": None}


def test_similar_is_the_nearest_neighbours_with_titles(served: Served) -> None:
    r = served.release
    movie = int(r.ids[42])
    body = served.client.get(f"/movies/{movie}/similar", params={"k": 7}).json()
    assert body["model_version"] == r.version
    assert [i["movie_id"] for i in body["items"]] == r.brute_force(r.vectors[42], 7, exclude={movie})
    assert all(i["title"] and isinstance(i["score"], float) for i in body["items"])
    scores = [i["score"] for i in body["items"]]
    assert scores == sorted(scores, reverse=True)


def test_history_uses_the_registered_rule_and_excludes_the_history(served: Served) -> None:
    r = served.release
    picks = [3, 250, 17, 99, 120, 5]  # oldest -> newest; the rule keeps the last 4, halving per step
    history = [int(r.ids[i]) for i in picks]
    body = served.client.post("/recommendations", json={"history": history, "k": 12}).json()
    query = history_query(r.vectors[picks], r.rule)
    assert [i["movie_id"] for i in body["items"]] == r.brute_force(query, 12, exclude=set(history))


def test_unknown_movie_is_404(served: Served) -> None:
    res = served.client.get("/movies/999999999/similar")
    assert res.status_code == 404 and "999999999" in res.json()["detail"]
    res = served.client.post("/recommendations", json={"history": [int(served.release.ids[0]), 999999998]})
    assert res.status_code == 404 and "999999998" in res.json()["detail"]


@pytest.mark.parametrize("call", [
    ("get", "/movies/abc/similar", None), ("get", "/movies/0/similar", None),
    ("get", "/movies/1/similar?k=0", None), ("get", "/movies/1/similar?k=101", None),
    ("get", "/movies/1/similar?k=ten", None), ("post", "/recommendations", {"history": []}),
    ("post", "/recommendations", {"history": list(range(1, 202))}),
    ("post", "/recommendations", {"history": ["1"]}), ("post", "/recommendations", {"history": [1.5]}),
    ("post", "/recommendations", {"history": [1], "k": 0}), ("post", "/recommendations", {"history": [1], "k": "5"}),
    ("post", "/recommendations", {}), ("post", "/recommendations", {"history": [-3]}),
    ("get", "/movies?query=", None), ("get", "/movies", None), ("get", "/movies?query=a&limit=0", None),
])
def test_bad_input_is_422(served: Served, call: tuple) -> None:
    method, url, body = call
    res = served.client.request(method, url, json=body)
    assert res.status_code == 422, res.text


@pytest.mark.parametrize("body", ['{"history": [1], "k": 1e400}', '{"history": [1e400]}', '{"history": [1], "k": NaN}',
                                  '{"history": [1], "year_min": 1e400}', '{"history": [1]'])
def test_numbers_json_cannot_echo_back_are_422(served: Served, body: str) -> None:
    res = served.client.post("/recommendations", content=body, headers={"content-type": "application/json"})
    assert res.status_code == 422 and res.json()["detail"][0]["loc"]


def test_openapi_lists_the_error_answers(served: Served) -> None:
    paths = served.client.get("/openapi.json").json()["paths"]
    for path, method in (("/movies/{movie_id}/similar", "get"), ("/recommendations", "post"),
                         ("/users/{user_id}/recommendations", "get"), ("/users/{user_id}/ratings", "post")):
        answers = paths[path][method]["responses"]
        assert {"200", "400", "404", "422", "503"} <= set(answers), (path, sorted(answers))
        assert "Retry-After" in answers["503"]["headers"]


def test_title_search(served: Served) -> None:
    hits = served.client.get("/movies", params={"query": "100%"}).json()
    assert [h["title"] for h in hits] == ["100% Pure_Fun (1999)"]
    assert served.client.get("/movies", params={"query": "o'brien"}).json()[0]["title"].startswith("O'Brien")
    assert len(served.client.get("/movies", params={"query": "movie", "limit": 5}).json()) == 5


def test_injection_strings_change_nothing(served: Served) -> None:
    before = _state(served.settings)
    movie = int(served.release.ids[1])
    for text in INJECTIONS:
        assert served.client.get(f"/movies/{text}/similar").status_code in (404, 422)
        assert served.client.get(f"/movies/{movie}/similar", params={"k": text}).status_code == 422
        assert served.client.get("/movies", params={"query": text}).json() == []
        assert served.client.get("/movies", params={"query": "Movie", "limit": text}).status_code == 422
        assert served.client.post("/recommendations", json={"history": [text]}).status_code == 422
        assert served.client.post("/recommendations", json={"history": [movie], "k": text}).status_code == 422
        assert _state(served.settings) == before
    assert served.client.get("/health").json()["counts"] == {"movies": 300, "vectors": 300}


def test_works_mounted_under_a_prefix(served: Served) -> None:
    outer = FastAPI()
    outer.mount("/recsys", create_app(served.settings))
    client = TestClient(outer)
    assert client.get("/recsys/health").json()["model_version"] == served.release.version
    assert client.get(f"/recsys/movies/{int(served.release.ids[0])}/similar?k=2").status_code == 200
    docs = client.get("/recsys/docs").text
    assert "/recsys/openapi.json" in docs
    assert "/movies/{movie_id}/similar" in client.get("/recsys/openapi.json").json()["paths"]


def test_no_live_model_is_503(tmp_path: Path) -> None:
    settings, cleanups = make_settings(tmp_path / "home", "lite", "sqlite", None)
    try:
        client = TestClient(create_app(settings))
        res = client.get("/health")
        assert res.status_code == 503 and res.json()["status"] == "no live model"
        res = client.get("/movies/1/similar")
        assert res.status_code == 503 and "no model is served" in res.json()["detail"]
        assert client.post("/recommendations", json={"history": [1]}).status_code == 503
    finally:
        for cleanup in reversed(cleanups):
            cleanup()

