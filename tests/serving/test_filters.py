"""Filters inside the vector search, on real data: ml-100k's movies (their years and genres, the rare and
the common) and users, served through the API, against brute force over the same vectors with the
same filters. Every answer holds only admitted movies, k of them whenever k exist, in score order,
and matches brute force (HNSW is approximate: recall over all queries, and per answer, is bounded)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from fastapi.testclient import TestClient

from recsys_tasks import pipeline
from recsys_tasks.config import Settings
from recsys_tasks.model.rules import history_query
from recsys_tasks.serving.api import create_app
from tests.conftest import real_release
from tests.fixtures_stores import Release, make_release, make_settings, ship

MIN_RECALL, MIN_RECALL_EACH = 0.98, 0.8

FILTERS = [
    {}, {"genre": ["Comedy"]}, {"genre": ["Film-Noir"]}, {"genre": ["Comedy", "Romance"]},
    {"year_min": 1990, "year_max": 1995}, {"year_min": 1930, "year_max": 1935}, {"year_max": 1960},
    {"year_min": 1997}, {"genre": ["Drama"], "year_min": 1950, "year_max": 1970},
    {"genre": ["Children's", "Animation"], "year_min": 1990}, {"genre": ["Documentary"], "year_max": 1994},
]


@dataclass
class World:
    settings: Settings
    release: Release
    client: TestClient
    movies: dict[int, dict]
    position: dict[int, int]

    def admitted(self, f: dict) -> np.ndarray:
        ok = np.ones(self.release.ids.size, dtype=bool)
        for i, m in enumerate(self.release.ids.tolist()):
            movie = self.movies[m]
            genres = set((movie["genres"] or "").split("|"))
            year = movie["year"]
            ok[i] = (set(f.get("genre", [])) <= genres
                     and ("year_min" not in f or (year is not None and year >= f["year_min"]))
                     and ("year_max" not in f or (year is not None and year <= f["year_max"])))
        return ok

    def exact(self, query: np.ndarray, k: int, f: dict, out: set[int]) -> list[int]:
        scores = self.release.vectors @ query
        scores[~self.admitted(f)] = -np.inf
        scores[[self.position[m] for m in out if m in self.position]] = -np.inf
        order = np.argsort(-scores, kind="stable")
        return [int(self.release.ids[i]) for i in order[:k] if np.isfinite(scores[i])]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    settings, cleanups = make_settings(tmp_path_factory.mktemp("filters") / "home", "lite", "sqlite", None)
    settings = settings.replace(snapshot=str(real_release("ml-100k")), skip_checksum=True)
    processed = pipeline.run(settings, until="preprocess")["preprocess"]
    release = make_release(settings, "ml-100k", processed=processed, dim=16)
    ship(settings, release)
    movies = {r["movie_id"]: r for r in pq.read_table(processed.out("movies.parquet")).to_pylist()}
    with TestClient(create_app(settings)) as client:
        yield World(settings, release, client, movies, {int(m): i for i, m in enumerate(release.ids)})
    for cleanup in reversed(cleanups):
        cleanup()


def _check(world: World, answer: dict, expected: list[int], f: dict, k: int, recalls: list[float]) -> None:
    got = [i["movie_id"] for i in answer["items"]]
    admitted = world.admitted(f)
    assert all(admitted[world.position[m]] for m in got), f
    assert len(got) == len(expected) == min(k, len(expected)), (f, len(got), len(expected))  # k whenever k exist
    scores = [i["score"] for i in answer["items"]]
    assert scores == sorted(scores, reverse=True)
    recall = len(set(got) & set(expected)) / max(1, len(expected))
    assert recall >= MIN_RECALL_EACH, (f, got, expected)
    recalls.append(recall)


def test_similar_with_filters_is_brute_force_filtered(world: World) -> None:
    rng = np.random.default_rng(0)
    recalls: list[float] = []
    for f in FILTERS:
        for row in rng.choice(world.release.ids.size, 6, replace=False).tolist():
            movie = int(world.release.ids[row])
            exclude = [int(m) for m in rng.choice(world.release.ids, 5)] if row % 2 else []
            for k in (10, 100):
                params = {"k": k, **f, "exclude": exclude}
                answer = world.client.get(f"/movies/{movie}/similar", params=params).json()
                expected = world.exact(world.release.vectors[row], k, f, {movie, *exclude})
                _check(world, answer, expected, f, k, recalls)
    assert np.mean(recalls) >= MIN_RECALL


def test_history_and_user_recommendations_with_filters_are_brute_force_filtered(world: World) -> None:
    processed = world.release.processed
    table = pa.concat_tables([pq.read_table(processed.out(f"{s}.parquet")) for s in ("train", "val", "test")])
    rows = sorted(table.to_pylist(), key=lambda r: (r["user_id"], r["timestamp"], r["movie_id"]))
    histories: dict[int, list[int]] = {}
    for r in rows:
        histories.setdefault(r["user_id"], []).append(r["movie_id"])
    rule = world.release.rule
    recalls: list[float] = []
    for user in (1, 13, 405, 655, 943):  # 405 and 655 rated the most movies in ml-100k (hundreds each)
        history = histories[user]
        query = history_query(world.release.vectors[[world.position[m] for m in history]], rule)
        for f in FILTERS:
            answer = world.client.get(f"/users/{user}/recommendations", params={"k": 20, **f}).json()
            assert answer["method"] == "history"
            _check(world, answer, world.exact(query, 20, f, set(history)), f, 20, recalls)
        recent = history[-30:]
        query = history_query(world.release.vectors[[world.position[m] for m in recent]], rule)
        for f in FILTERS[:6]:
            answer = world.client.post("/recommendations", json={"history": recent, "k": 15, **f}).json()
            _check(world, answer, world.exact(query, 15, f, set(recent)), f, 15, recalls)
    assert np.mean(recalls) >= MIN_RECALL


def test_a_filter_nothing_matches_is_an_empty_answer(world: World) -> None:
    movie = int(world.release.ids[0])
    answer = world.client.get(f"/movies/{movie}/similar", params={"genre": "Film-Noir", "year_min": 2030})
    assert answer.status_code == 200 and answer.json()["items"] == []
    genres = world.client.get("/genres").json()["genres"]
    assert "Film-Noir" in genres and "Children's" in genres
