"""The serving commands as a person runs them: `recsys recommend`, `status`, `serve` in their own processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from recsys_tasks.config import Settings
from recsys_tasks.serving.api import create_app
from tests.fixtures_stores import USERS, Release, _free_port, make_release, make_settings, ship

REPO = Path(__file__).resolve().parents[2]


def recsys(*args: str, settings: Settings, check: bool = True, timeout: float = 180) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "RECSYS_HOME": str(settings.home),
           "RECSYS_MILVUS_URI": settings.milvus_uri, "RECSYS_DB_URL": settings.db_url}
    out = subprocess.run([sys.executable, "-m", "recsys_tasks", *args], capture_output=True, text=True, env=env,
                         timeout=timeout, check=False)
    if check:
        assert out.returncode == 0, out.stderr[-3000:]
    return out


@pytest.fixture(scope="module")
def shipped(milvus_server: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Settings, Release]]:
    """A release live on a `milvus-lite server` (so other processes can read it) with a SQLite catalog."""
    settings, cleanups = make_settings(tmp_path_factory.mktemp("cli") / "home", "server", "sqlite", milvus_server)
    release = make_release(settings, "cli")
    ship(settings, release)
    yield settings, release
    for cleanup in reversed(cleanups):
        cleanup()


def test_recommend_with_nothing_live_says_so_in_one_line(tmp_path: Path) -> None:
    settings, cleanups = make_settings(tmp_path / "home", "lite", "sqlite", None)
    out = recsys("recommend", "--movie-id", "1", settings=settings, check=False)
    assert out.returncode == 1 and out.stdout == ""
    assert out.stderr.strip().splitlines() == [out.stderr.strip()] and "no model is served yet" in out.stderr
    status = recsys("status", "--json", settings=settings)
    assert json.loads(status.stdout.splitlines()[-1])["live"] is None and status.stderr == ""
    verbose = recsys("recommend", "--movie-id", "1", "-v", settings=settings, check=False)
    assert "Traceback" in verbose.stderr and " INFO " in verbose.stderr  # -v: the libraries' log lines too
    for cleanup in cleanups:
        cleanup()


def test_status_and_recommend_print_only_their_answer(shipped: tuple[Settings, Release]) -> None:
    settings, release = shipped
    status = recsys("status", "--json", settings=settings)
    assert status.stderr == "" and json.loads(status.stdout)["live"]["model_version"] == release.version
    movie = int(release.ids[3])
    similar = recsys("recommend", "--movie-id", str(movie), "-k", "4", "--json", settings=settings)
    assert similar.stderr == ""
    assert [i["movie_id"] for i in json.loads(similar.stdout)["items"]] == release.brute_force(
        release.vectors[3], 4, exclude={movie})


def test_recommend_for_a_user_with_filters(shipped: tuple[Settings, Release]) -> None:
    settings, release = shipped
    text = recsys("recommend", "--user-id", "7", "-k", "3", "--genre", "Drama", "--year-min", "1950",
                  settings=settings).stdout.splitlines()
    assert text[0] == f"model {release.version}" and len(text) == 4
    assert all("[" in line and "Drama" in line and "because you watched" in line for line in text[1:])
    idle = recsys("recommend", "--user-id", str(USERS + 100), settings=settings, check=False)
    assert idle.returncode == 2 and "is not in model" in idle.stderr and len(idle.stderr.strip().splitlines()) == 1


def test_serve_beyond_localhost_needs_an_api_key(shipped: tuple[Settings, Release]) -> None:
    settings, _ = shipped
    out = recsys("serve", "--host", "0.0.0.0", "--port", str(_free_port()), settings=settings, check=False)
    assert out.returncode == 2 and "needs an API key" in out.stderr


def test_the_api_key_guards_every_route_but_health(shipped: tuple[Settings, Release]) -> None:
    settings, release = shipped
    client = TestClient(create_app(settings, api_key="s3cret"))
    similar = f"/movies/{int(release.ids[0])}/similar"
    assert client.get(similar).status_code == 401
    assert client.get(similar, headers={"X-API-Key": "wrong"}).status_code == 401
    assert client.get(similar, headers={"X-API-Key": "s3cret"}).status_code == 200
    assert client.get("/users/1/recommendations", headers={"X-API-Key": "s3cret"}).status_code == 200
    assert client.post("/users/1/ratings", json={"ratings": [{"movie_id": int(release.ids[0]), "rating": 3}]}
                       ).status_code == 401
    assert client.get("/health").status_code == 200
    schema = client.get("/openapi.json").json()
    assert "401" in schema["paths"]["/movies/{movie_id}/similar"]["get"]["responses"]
    assert "X-API-Key" in json.dumps(schema["components"]["securitySchemes"])


def test_recsys_serve_with_workers_and_a_key(shipped: tuple[Settings, Release]) -> None:
    settings, release = shipped
    port = _free_port()
    env = {**os.environ, "PYTHONPATH": str(REPO), "RECSYS_HOME": str(settings.home),
           "RECSYS_MILVUS_URI": settings.milvus_uri, "RECSYS_API_KEY": "k3y"}
    proc = subprocess.Popen([sys.executable, "-m", "recsys_tasks", "serve", "--port", str(port), "--workers", "2"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, proc.stdout.read() if proc.stdout else ""
            time.sleep(0.5)
        similar = f"{url}/movies/{int(release.ids[1])}/similar"
        assert httpx.get(similar, timeout=10).status_code == 401
        answers = [httpx.get(similar, headers={"X-API-Key": "k3y"}, timeout=10) for _ in range(10)]
        assert {r.status_code for r in answers} == {200}
        assert all(r.json()["model_version"] == release.version for r in answers)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
