"""Store failures are answers: a killed or hung `milvus-lite server` and a locked catalog give 503 JSON
naming the store, with Retry-After, within a bounded time; the API recovers when the store returns,
without a restart."""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from recsys_tasks.config import Settings, load_settings
from recsys_tasks.serving.api import create_app
from recsys_tasks.stores import catalog, milvus
from recsys_tasks.stores.milvus import CONNECTION
from tests.fixtures_stores import Release, _free_port, make_release, ship

TIMEOUT_S = 1.0
# a hang detector, not a budget: with 1 s store timeouts a request answers in a few seconds; without
# them a request to a stopped (SIGSTOP) server never answers at all
BOUND_S = 20.0


class MilvusProcess:
    """A `milvus-lite server` of this test's own, which it kills, pauses and restarts on the same port."""

    def __init__(self, data: Path) -> None:
        self.data, self.port = data, _free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        from pymilvus import MilvusClient

        log = (self.data.parent / "server.log").open("a")
        self.proc = subprocess.Popen([sys.executable, "-m", "milvus_lite", "server", "--data-dir", str(self.data),
                                      "--host", "127.0.0.1", "--port", str(self.port)], stdout=log,
                                     stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while True:
            try:
                client = MilvusClient(uri=self.uri, timeout=2, **CONNECTION)
                client.list_collections()
                client.close()
                return
            except Exception:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise
                time.sleep(0.2)

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)
        if sig == signal.SIGKILL:
            self.proc.wait(timeout=10)


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[tuple[Settings, Release, MilvusProcess, TestClient]]:
    server = MilvusProcess(tmp_path / "milvus")
    server.start()
    settings = load_settings(home=tmp_path / "home", milvus_uri=server.uri, store_timeout_s=TIMEOUT_S)
    release = make_release(settings, "failures")
    ship(settings, release)
    try:
        with TestClient(create_app(settings)) as client:
            yield settings, release, server, client
    finally:
        if server.proc and server.proc.poll() is None:
            server.signal(signal.SIGCONT)
            server.signal(signal.SIGKILL)
        milvus.release(server.uri)
        catalog.dispose(settings.resolved_db_url)


def _timed(call: Callable[[], object]) -> tuple[object, float]:
    start = time.monotonic()
    result = call()
    return result, time.monotonic() - start


def _assert_unavailable(res, store: str) -> None:
    assert res.status_code == 503, res.text
    assert res.json()["store"] == store and store in res.json()["detail"]
    assert int(res.headers["Retry-After"]) >= 1


def _wait_until_ok(client: TestClient, url: str, seconds: float = 60) -> dict:
    deadline = time.monotonic() + seconds
    while True:
        res = client.get(url)
        if res.status_code == 200 or time.monotonic() > deadline:
            assert res.status_code == 200, res.text
            return res.json()
        assert res.status_code == 503, res.text  # never anything else meanwhile
        time.sleep(0.3)


def test_a_killed_milvus_is_503_then_recovers_without_restart(setup) -> None:
    _, release, server, client = setup
    movie = int(release.ids[5])
    similar = f"/movies/{movie}/similar?k=5"
    before = client.get(similar).json()
    server.signal(signal.SIGKILL)
    for call in (lambda: client.get(similar), lambda: client.post("/recommendations", json={"history": [movie]}),
                 lambda: client.get("/users/3/recommendations"), lambda: client.get("/movies", params={"query": "M"})):
        res, took = _timed(call)
        _assert_unavailable(res, "milvus")
        assert took < BOUND_S
    health, took = _timed(lambda: client.get("/health"))
    assert health.status_code == 503 and health.json()["store"] == "milvus" and took < BOUND_S
    server.start()  # the same port and data: the API finds it again by itself
    assert _wait_until_ok(client, similar) == before
    assert client.get("/health").json()["status"] == "ok"


def test_a_hung_milvus_answers_503_within_the_bound_even_under_load(setup) -> None:
    _, release, server, client = setup
    similar = f"/movies/{int(release.ids[8])}/similar"
    before = client.get(similar).json()
    server.signal(signal.SIGSTOP)
    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(lambda _: _timed(lambda: client.get(similar)), range(32)))
    for res, took in answers:
        _assert_unavailable(res, "milvus")
        assert took < BOUND_S
    server.signal(signal.SIGCONT)
    assert _wait_until_ok(client, similar) == before


def test_a_locked_catalog_is_503_naming_it_then_recovers(setup) -> None:
    settings, release, _, client = setup
    user = "/users/4/recommendations"
    before = client.get(user).json()
    holder = sqlite3.connect(settings.resolved_db_url.removeprefix("sqlite:///"), isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")  # another writer holding the database: reads wait, then time out
    try:
        res, took = _timed(lambda: client.get(user))
        _assert_unavailable(res, "catalog")
        assert took < BOUND_S
        rating = client.post("/users/4/ratings", json={"ratings": [{"movie_id": int(release.ids[1]), "rating": 4}]})
        _assert_unavailable(rating, "catalog")
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert _wait_until_ok(client, user) == before
