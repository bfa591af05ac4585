"""The user endpoints over real stores: Milvus Lite in-process or a `milvus-lite server`, SQLite or MariaDB.

A user's recommendations are the served rule over every split of the live snapshot (oldest first by
(timestamp, movie_id)) and the ratings recorded since, the movies they saw excluded: checked against
the same rule by brute force over the release's vectors.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from fastapi.testclient import TestClient

from recsys_tasks.config import Settings
from recsys_tasks.model.rules import history_query
from recsys_tasks.serving.api import create_app
from tests.fixtures_stores import USERS, Release, make_release, make_settings, ship, write_processed

IDLE = 3  # users in the snapshot's users table without any rating


@dataclass
class World:
    settings: Settings
    release: Release
    client: TestClient

    def history(self, user: int) -> list[int]:
        """The user's movies in the snapshot, oldest first, as the model expects them."""
        table = pa.concat_tables([pq.read_table(self.release.processed.out(f"{s}.parquet"))
                                  for s in ("train", "val", "test")]).to_pylist()
        return [r["movie_id"] for r in sorted((r for r in table if r["user_id"] == user),
                                               key=lambda r: (r["timestamp"], r["movie_id"]))]

    def expected(self, history: list[int], k: int, exclude: set[int] | None = None) -> list[int]:
        rows = [self.release.position[m] for m in history]
        query = history_query(self.release.vectors[rows], self.release.rule)
        return self.release.brute_force(query, k, exclude=set(history) | (exclude or set()))


ENGINES = [pytest.param(("lite", "sqlite"), id="lite-sqlite"),
           pytest.param(("lite", "mariadb"), id="lite-mariadb", marks=pytest.mark.mysql),
           pytest.param(("server", "sqlite"), id="server-sqlite"),
           pytest.param(("server", "mariadb"), id="server-mariadb", marks=pytest.mark.mysql)]


@pytest.fixture(scope="module", params=ENGINES)
def world(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    milvus, db = request.param
    server = request.getfixturevalue("milvus_server") if milvus == "server" else None
    settings, cleanups = make_settings(tmp_path_factory.mktemp("users") / "home", milvus, db, server)
    release = make_release(settings, "users", processed=write_processed(settings, idle_users=IDLE),
                           rule={"name": "history", "half_life": 1.0, "max_items": 2})
    release.position = {int(m): i for i, m in enumerate(release.ids)}
    ship(settings, release)
    with TestClient(create_app(settings)) as client:
        yield World(settings, release, client)
    for cleanup in reversed(cleanups):
        cleanup()


def test_a_users_recommendations_are_the_rule_over_their_snapshot_history(world: World) -> None:
    for user in (1, 17, USERS):
        history = world.history(user)
        body = world.client.get(f"/users/{user}/recommendations", params={"k": 8}).json()
        assert body["method"] == "history" and body["user_id"] == user and body["fallback"] is None
        assert body["model_version"] == world.release.version
        assert [i["movie_id"] for i in body["items"]] == world.expected(history, 8)
        assert not set(history) & {i["movie_id"] for i in body["items"]}
        recent = history[-2:]  # the rule weighs the last two
        v = world.release.vectors
        for item in body["items"]:
            closest = max(recent, key=lambda m: float(v[world.release.position[m]] @ v[world.release.position[
                item["movie_id"]]]))
            assert item["because"]["movie_id"] == closest and item["because"]["title"]


def test_unknown_user_is_404_and_a_user_without_ratings_gets_popularity(world: World) -> None:
    res = world.client.get("/users/999999/recommendations")
    assert res.status_code == 404 and "999999" in res.json()["detail"]
    idle = USERS + 1
    body = world.client.get(f"/users/{idle}/recommendations", params={"k": 5}).json()
    assert body["method"] == "popularity" and body["fallback"].startswith("popularity")
    counts: dict[int, int] = {}
    for split in ("train", "val", "test"):
        for m in pq.read_table(world.release.processed.out(f"{split}.parquet"))["movie_id"].to_pylist():
            counts[m] = counts.get(m, 0) + 1
    ranked = sorted(counts, key=lambda m: (-counts[m], m))
    assert [i["movie_id"] for i in body["items"]] == ranked[:5]
    assert [i["score"] for i in body["items"]] == [float(counts[m]) for m in ranked[:5]]
    assert all("because" not in i or i["because"] is None for i in body["items"])


def test_recorded_ratings_count_at_once_and_only_once(world: World) -> None:
    user = 5
    history = world.history(user)
    picks = [int(m) for m in world.release.ids[[200, 201]] if int(m) not in history]
    ratings = [{"movie_id": picks[0], "rating": 4.5, "timestamp": 2_000_000_000},
               {"movie_id": picks[1], "rating": 3.0, "timestamp": 2_000_000_100}]
    first = world.client.post(f"/users/{user}/ratings", json={"ratings": ratings})
    assert first.status_code == 200 and first.json() == {"user_id": user, "recorded": 2, "duplicates": 0}
    again = world.client.post(f"/users/{user}/ratings", json={"ratings": ratings})
    assert again.json() == {"user_id": user, "recorded": 0, "duplicates": 2}
    body = world.client.get(f"/users/{user}/recommendations", params={"k": 6}).json()
    assert [i["movie_id"] for i in body["items"]] == world.expected(history + picks, 6)
    assert {i["because"]["movie_id"] for i in body["items"]} <= set(picks)  # the rule weighs the newest two

    newcomer = 5_000_000  # a new user id starts a user whose history is what they rated
    assert world.client.get(f"/users/{newcomer}/recommendations").status_code == 404
    movie = int(world.release.ids[42])
    assert world.client.post(f"/users/{newcomer}/ratings", json={"ratings": [{"movie_id": movie, "rating": 5}]}
                             ).json()["recorded"] == 1
    body = world.client.get(f"/users/{newcomer}/recommendations", params={"k": 4}).json()
    assert body["method"] == "history" and [i["movie_id"] for i in body["items"]] == world.expected([movie], 4)


def test_ratings_of_unknown_movies_are_404_and_store_nothing(world: World) -> None:
    user = 9
    before = world.client.get(f"/users/{user}/recommendations").json()
    res = world.client.post(f"/users/{user}/ratings", json={"ratings": [
        {"movie_id": int(world.release.ids[3]), "rating": 4}, {"movie_id": 987654321, "rating": 4}]})
    assert res.status_code == 404 and "987654321" in res.json()["detail"]
    assert world.client.get(f"/users/{user}/recommendations").json() == before


def test_user_filters_apply_to_the_history_search_and_the_fallback(world: World) -> None:
    user = 21
    rows = pq.read_table(world.release.processed.out("movies.parquet")).to_pylist()
    by_id = {r["movie_id"]: r for r in rows}
    body = world.client.get(f"/users/{user}/recommendations",
                            params={"k": 10, "genre": "Drama", "year_min": 1950, "year_max": 1980}).json()
    assert len(body["items"]) == 10
    for item in body["items"]:
        movie = by_id[item["movie_id"]]
        assert "Drama" in movie["genres"].split("|") and 1950 <= movie["year"] <= 1980
    admitted = {m for m, r in by_id.items() if "Drama" in r["genres"].split("|") and r["year"]
                and 1950 <= r["year"] <= 1980}
    history = world.history(user)
    rows_ = [world.release.position[m] for m in history]
    query = history_query(world.release.vectors[rows_], world.release.rule)
    expected = world.release.brute_force(query, 10, exclude=set(history) | (set(by_id) - admitted))
    assert [i["movie_id"] for i in body["items"]] == expected
    fallback = world.client.get(f"/users/{USERS + 2}/recommendations", params={"k": 3, "genre": "Comedy"}).json()
    assert fallback["method"] == "popularity"
    assert all("Comedy" in by_id[i["movie_id"]]["genres"].split("|") for i in fallback["items"])


def test_user_endpoint_input_errors(world: World) -> None:
    assert world.client.get("/users/0/recommendations").status_code == 422
    assert world.client.get("/users/1/recommendations", params={"k": 1e400}).status_code == 422
    res = world.client.get("/users/1/recommendations", params={"year_min": 2000, "year_max": 1990})
    assert res.status_code == 400 and "year range" in res.json()["detail"]
    res = world.client.get("/users/1/recommendations", params={"genre": "Western"})
    assert res.status_code == 400 and "Western" in res.json()["detail"]
    for body in ('{"ratings": []}', '{"ratings": [{"movie_id": 1, "rating": 9}]}',
                 '{"ratings": [{"movie_id": 1, "rating": 1e400}]}', '{"ratings": [{"movie_id": 1e400, "rating": 3}]}',
                 '{"ratings": [{"movie_id": 1, "rating": 3, "timestamp": -1}]}', '{"ratings": [{"movie_id": 1'):
        res = world.client.post("/users/1/ratings", content=body, headers={"content-type": "application/json"})
        assert res.status_code == 422 and res.json()["detail"], body


def test_user_histories_are_stored_once_per_snapshot(world: World) -> None:
    from recsys_tasks import pipeline
    from recsys_tasks.stores.catalog import Catalog, history_sets, user_histories

    catalog = Catalog.from_settings(world.settings)
    with catalog.engine.connect() as conn:
        stored = conn.execute(user_histories.select()).all()
    assert len(stored) == USERS + IDLE
    user = next(r for r in stored if r.user_id == 7)
    assert [m for _, m in user.history] == world.history(7)
    assert [t for t, _ in user.history] == sorted(t for t, _ in user.history)
    again = pipeline.load_catalog(world.settings, world.release.processed, world.release.evaluated)
    assert again.skipped
    with catalog.engine.begin() as conn:  # histories wiped: load_catalog is not in sync any more
        conn.execute(user_histories.delete())
        conn.execute(history_sets.delete())
    assert world.client.get("/users/7/recommendations").status_code == 404
    reloaded = pipeline.load_catalog(world.settings, world.release.processed, world.release.evaluated)
    assert not reloaded.skipped and reloaded.manifest["counts"]["users"] == USERS + IDLE
    assert world.client.get("/users/7/recommendations").status_code == 200
