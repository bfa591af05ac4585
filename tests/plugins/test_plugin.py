"""The Airflow plugin: registered by Airflow's plugin manager, cheap to load; its API and view answer
only authenticated Airflow users with read access, and a request that writes only users who may edit
the DAG's runs (Airflow's own API server app, its auth manager and real tokens); with only the Airflow connections set it serves the live model from those stores and
creates no embedded store. With a browser: tests/plugins/test_plugin_browser.py."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fixtures_stores import make_release, ship

REPO = Path(__file__).resolve().parents[2]
PLUGIN = REPO / "plugins" / "recsys_plugin.py"
ROUTES = ["/recsys/health", "/recsys/movies?query=toy", "/recsys-ui/", "/recsys-ui/status.json",
          "/recsys-ui/quality.png"]


def test_plugin_loads_without_heavy_imports() -> None:
    probe = f"""
import importlib.util, json, sys
import airflow
spec = importlib.util.spec_from_file_location("recsys_plugin", {str(PLUGIN)!r})
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
print(json.dumps(sorted(m for m in ("torch", "dgl", "pandas", "numpy", "pymilvus", "recsys_tasks.stores.catalog",
                                    "recsys_tasks.serving.api") if m in sys.modules)))
"""
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=REPO,
                         env=os.environ.copy(), timeout=300, check=False)
    assert out.returncode == 0, out.stderr[-3000:]
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []


def test_airflow_registers_the_apps_and_the_view_and_only_them() -> None:
    out = subprocess.run([str(Path(sys.executable).parent / "airflow"), "plugins", "-o", "json"],
                         capture_output=True, text=True, cwd=REPO, env=os.environ.copy(), timeout=300,
                         check=False)
    assert out.returncode == 0, out.stderr[-3000:]
    plugins = {p["name"]: p for p in json.loads(out.stdout)}
    assert "recsys" in plugins, f"plugins found: {sorted(plugins)}"
    recsys = plugins["recsys"]
    assert sorted(app["url_prefix"] for app in recsys["fastapi_apps"]) == ["/recsys", "/recsys-ui"]
    view = recsys["external_views"][0]
    assert view["url_route"] == "recsys" and view["destination"] == "nav" and not view["href"].startswith("/")



def test_the_plugin_manager_skips_the_helper_package() -> None:
    """plugins/.airflowignore: recsys_airflow/ is imported as a package, never loaded file by file under
    bare names (`stores`, `auth`, ...) as the plugin manager does with every .py file it finds."""
    probe = """
import json, sys
from airflow import plugins_manager
plugins_manager.ensure_plugins_loaded()
print(json.dumps({"bare": sorted(m for m in ("stores", "auth", "tasks", "alerts") if m in sys.modules),
                  "errors": plugins_manager.get_import_errors()}))
"""
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=REPO,
                         env=os.environ.copy(), timeout=300, check=False)
    assert out.returncode == 0, out.stderr[-3000:]
    assert json.loads(out.stdout.strip().splitlines()[-1]) == {"bare": [], "errors": {}}


class Api:
    """Airflow's own API server app (what `airflow api-server` runs) and tokens from its auth manager."""

    def __init__(self, client) -> None:
        self.client = client

    def login(self, username: str) -> str:
        """A token the real way: POST /auth/token with the user's generated password."""
        from airflow.api_fastapi.auth.managers.simple.simple_auth_manager import SimpleAuthManager

        passwords = json.loads(Path(SimpleAuthManager.get_generated_password_file()).read_text())
        answer = self.client.post("/auth/token", json={"username": username, "password": passwords[username]})
        assert answer.status_code == 201, answer.text
        return answer.json()["access_token"]

    def get(self, path: str, token: str | None = None, **kwargs):
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return self.client.get(path, headers=headers, **kwargs)

    def post(self, path: str, token: str | None = None, **kwargs):
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return self.client.post(path, headers=headers, **kwargs)


@pytest.fixture
def airflow_api(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    from airflow.api_fastapi.app import create_app
    from airflow.utils import db
    from fastapi.testclient import TestClient

    db.initdb()
    monkeypatch.setenv("RECSYS_HOME", str(tmp_path / "home"))
    for var in ("RECSYS_DB_URL", "RECSYS_MILVUS_URI", "RECSYS_MILVUS_TOKEN"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AIRFLOW__CORE__AUTH_MANAGER",
                       "airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager")
    monkeypatch.setenv("AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS", "admin:admin,viewer:viewer,editor:user")
    monkeypatch.setenv("AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS", "False")
    monkeypatch.setenv("AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE", str(tmp_path / "passwords.json"))
    # the API server signs tokens with it; set here, as an earlier in-process dag.test() may have unset it
    monkeypatch.setenv("AIRFLOW__API_AUTH__JWT_SECRET", secrets.token_urlsafe(32))
    with TestClient(create_app()) as client:  # as the API server starts: the plugin apps' lifespans run
        yield Api(client)


@pytest.mark.parametrize("path", ROUTES)
def test_no_token_is_refused(airflow_api: Api, path: str) -> None:
    answer = airflow_api.get(path)
    assert answer.status_code == 401, answer.text
    assert airflow_api.get("/api/v2/dags").status_code == 401  # as Airflow's own API does


@pytest.mark.parametrize("path", ROUTES)
def test_a_forged_token_is_refused(airflow_api: Api, path: str) -> None:
    import jwt

    real = jwt.decode(airflow_api.login("admin"), options={"verify_signature": False})
    forged = jwt.encode(real, "not-the-api-servers-secret", algorithm="HS512")
    answer = airflow_api.get(path, forged)
    assert answer.status_code == 403 and answer.json()["detail"] == "Invalid JWT token", answer.text


def test_a_user_without_a_role_is_forbidden(airflow_api: Api) -> None:
    from airflow.api_fastapi.app import get_auth_manager
    from airflow.api_fastapi.auth.managers.simple.user import SimpleAuthManagerUser

    token = get_auth_manager().generate_jwt(SimpleAuthManagerUser(username="nobody", role=None))
    answer = airflow_api.get("/recsys-ui/status.json", token)
    assert answer.status_code == 403 and "may not read" in answer.json()["detail"], answer.text


@pytest.mark.parametrize("user", ["admin", "viewer"])
def test_readers_get_the_api_and_the_view_without_a_live_model(airflow_api: Api, user: str) -> None:
    token = airflow_api.login(user)
    health = airflow_api.get("/recsys/health", token)
    assert health.status_code == 503 and health.json()["model_version"] is None
    status = airflow_api.get("/recsys-ui/status.json", token)
    assert status.status_code == 200, status.text
    body = status.json()
    assert body["live"] is None and body["runs"] == [] and "quality_gate" in body["gates"]
    assert airflow_api.get("/recsys-ui/curve.png", token).status_code == 404
    quality = airflow_api.get("/recsys-ui/quality.png", token)  # the "no model versions yet" figure
    assert quality.status_code == 200 and quality.headers["content-type"] == "image/png"
    assert quality.content.startswith(b"\x89PNG") and quality.headers["cache-control"] == "no-store"
    page = airflow_api.get("/recsys-ui/", token)
    assert page.status_code == 200 and "Recommender" in page.text and 'const API = "../recsys"' in page.text
    assert 'src = "quality.png?t="' in page.text
    assert airflow_api.get("/recsys/movies", token, params={"query": "toy"}).status_code == 503  # titles are per model


def test_the_ui_session_cookie_is_accepted(airflow_api: Api) -> None:
    """The Recommender page runs in the Airflow UI's iframe: the browser sends the session cookie."""
    from airflow.api_fastapi.auth.managers.base_auth_manager import COOKIE_NAME_JWT_TOKEN

    airflow_api.client.cookies.set(COOKIE_NAME_JWT_TOKEN, airflow_api.login("viewer"))
    assert airflow_api.get("/recsys-ui/status.json").status_code == 200
    assert airflow_api.get("/recsys/health").status_code == 503  # authenticated; no model yet


@pytest.mark.mysql
@pytest.mark.parametrize("stores", [("server", "mariadb")], indirect=True)
def test_with_only_the_connections_set_the_plugin_serves_the_live_model(
        stores, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest) -> None:
    """The stores come from `recsys_mysql` / `recsys_milvus` alone, as for the tasks; no RECSYS_DB_URL or
    RECSYS_MILVUS_URI, and nothing embedded (SQLite file, Milvus Lite folder) appears in the home."""
    release = make_release(stores, "live-from-connections")
    assert ship(stores, release)["promote"].manifest["model_version"] == release.version
    monkeypatch.setenv("AIRFLOW_CONN_RECSYS_MYSQL", stores.db_url.replace("mysql+pymysql://", "mysql://"))
    monkeypatch.setenv("AIRFLOW_CONN_RECSYS_MILVUS", stores.milvus_uri)
    api = request.getfixturevalue("airflow_api")
    home = Path(os.environ["RECSYS_HOME"])
    token = api.login("viewer")

    health = api.get("/recsys/health", token)
    assert health.status_code == 200, health.text
    assert health.json()["model_version"] == release.version
    status = api.get("/recsys-ui/status.json", token).json()
    assert status["live"]["model_version"] == release.version
    similar = api.get(f"/recsys/movies/{int(release.ids[0])}/similar", token, params={"k": 5})
    assert similar.status_code == 200 and len(similar.json()["items"]) == 5
    assert not (home / "catalog.db").exists() and not (home / "milvus.db").exists()


@pytest.mark.mysql
@pytest.mark.parametrize("stores", [("server", "mariadb")], indirect=True)
def test_connections_added_while_the_api_server_runs_take_effect_without_a_restart(
        stores, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest) -> None:
    """docs/production.md has the operator add `recsys_mysql` / `recsys_milvus` to a running API server. The
    plugin opens no store at startup, and re-reads the connections (every REFRESH_S seconds; at once here):
    the next requests serve the live model from the stores the connections name."""
    from recsys_airflow import stores as plugin_stores

    release = make_release(stores, "connections-added-later")
    assert ship(stores, release)["promote"].manifest["model_version"] == release.version
    api = request.getfixturevalue("airflow_api")
    home = Path(os.environ["RECSYS_HOME"])
    token = api.login("viewer")
    assert not (home / "catalog.db").exists() and not (home / "milvus.db").exists(), "a store opened at startup"

    monkeypatch.setattr(plugin_stores, "REFRESH_S", 0.0)
    before = api.get("/recsys/health", token)  # no connection yet: RECSYS_HOME's embedded stores, empty
    assert before.status_code == 503 and before.json()["model_version"] is None, before.text
    monkeypatch.setenv("AIRFLOW_CONN_RECSYS_MYSQL", stores.db_url.replace("mysql+pymysql://", "mysql://"))
    monkeypatch.setenv("AIRFLOW_CONN_RECSYS_MILVUS", stores.milvus_uri)
    after = api.get("/recsys/health", token)
    assert after.status_code == 200 and after.json()["model_version"] == release.version, after.text
    assert api.get("/recsys-ui/status.json", token).json()["live"]["model_version"] == release.version


@pytest.mark.parametrize(("method", "path", "needs"), [
    ("GET", "/recsys/users/1/recommendations", "GET"), ("HEAD", "/recsys/health", "GET"),
    ("OPTIONS", "/recsys/recommendations", "GET"), ("POST", "/recsys/recommendations", "GET"),
    ("POST", "/recsys/users/1/ratings", "POST"), ("PUT", "/recsys/users/1/ratings", "PUT"),
    ("PATCH", "/recsys/movies/1", "PUT"), ("DELETE", "/recsys/users/1/ratings", "DELETE"),
    ("POST", "/recsys/recommendations/x", "POST"), ("POST", "/recsys-ui/status.json", "POST"),
])
def test_the_permission_asked_follows_the_request(method: str, path: str, needs: str) -> None:
    """Reads (and the history query, a POST that writes nothing) ask to read the DAG's runs; anything
    else asks the auth manager for the change, with the methods Airflow's own API uses for DAG runs."""
    from recsys_airflow.auth import required_method

    root = "/" + path.split("/")[1]
    assert required_method({"type": "http", "method": method, "path": path, "root_path": root}) == needs


@pytest.mark.parametrize("stores", [("server", "sqlite")], indirect=True)
def test_a_viewer_cannot_record_ratings_and_an_editor_can(
        stores, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest) -> None:
    """POST /users/{id}/ratings writes to the catalog: a Viewer gets 403 and nothing is stored; a user
    with the `User` role (may edit DAG runs) records it. The history query stays open to viewers."""
    from sqlalchemy import func, select

    from recsys_tasks.stores.catalog import Catalog, rating_events

    release = make_release(stores, "live-for-writes")
    assert ship(stores, release)["promote"].manifest["model_version"] == release.version
    monkeypatch.setenv("AIRFLOW_CONN_RECSYS_MILVUS", stores.milvus_uri)  # the catalog: SQLite in RECSYS_HOME
    api = request.getfixturevalue("airflow_api")
    assert Path(os.environ["RECSYS_HOME"]).resolve() == Path(stores.home).resolve()
    movie = int(release.ids[0])
    rating = {"ratings": [{"movie_id": movie, "rating": 5.0, "timestamp": 1_100_000_000}]}

    def recorded() -> int:
        with Catalog.from_settings(stores).engine.connect() as conn:
            return conn.execute(select(func.count()).select_from(rating_events)).scalar_one()

    viewer = api.login("viewer")
    assert api.get("/recsys/health", viewer).status_code == 200
    refused = api.post("/recsys/users/7/ratings", viewer, json=rating)
    assert refused.status_code == 403 and "may not change" in refused.json()["detail"], refused.text
    assert api.post("/recsys/users/7/ratings", None, json=rating).status_code == 401
    assert recorded() == 0
    history = api.post("/recsys/recommendations", viewer, json={"history": [movie], "k": 3})
    assert history.status_code == 200 and len(history.json()["items"]) == 3, history.text

    accepted = api.post("/recsys/users/7/ratings", api.login("editor"), json=rating)
    assert accepted.status_code == 200, accepted.text
    assert accepted.json() == {"user_id": 7, "recorded": 1, "duplicates": 0}
    assert recorded() == 1
    seen = api.get("/recsys/users/7/recommendations", viewer, params={"k": 5})
    assert seen.status_code == 200 and movie not in [it["movie_id"] for it in seen.json()["items"]], seen.text
