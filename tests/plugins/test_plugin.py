"""The Airflow plugin: registered by Airflow's plugin manager, cheap to load, and serving the API and the
Recommender view from real (empty) stores. With a live model: tests/plugins/test_plugin_browser.py."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PLUGIN = REPO / "plugins" / "recsys_plugin.py"


def test_plugin_loads_without_heavy_imports() -> None:
    probe = f"""
import importlib.util, json, sys
spec = importlib.util.spec_from_file_location("recsys_plugin", {str(PLUGIN)!r})
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
print(json.dumps(sorted(m for m in ("torch", "dgl", "pandas", "numpy", "pymilvus", "recsys_tasks.stores.catalog",
                                    "recsys_tasks.serving.api") if m in sys.modules)))
"""
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=REPO,
                         env=os.environ.copy(), timeout=60, check=False)
    assert out.returncode == 0, out.stderr[-3000:]
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []


def test_airflow_registers_the_apps_and_the_view() -> None:
    out = subprocess.run([str(Path(sys.executable).parent / "airflow"), "plugins", "-o", "json"],
                         capture_output=True, text=True, cwd=REPO, env=os.environ.copy(), timeout=120,
                         check=False)
    assert out.returncode == 0, out.stderr[-3000:]
    plugins = {p["name"]: p for p in json.loads(out.stdout)}
    assert "recsys" in plugins, f"plugins found: {sorted(plugins)}"
    recsys = plugins["recsys"]
    assert sorted(app["url_prefix"] for app in recsys["fastapi_apps"]) == ["/recsys", "/recsys-ui"]
    view = recsys["external_views"][0]
    assert view["url_route"] == "recsys" and view["destination"] == "nav" and not view["href"].startswith("/")


@pytest.fixture
def airflow_api(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Airflow's own API server app (the one `airflow api-server` runs), with empty recsys stores."""
    from airflow.api_fastapi.app import create_app
    from airflow.utils import db
    from fastapi.testclient import TestClient

    db.initdb()
    monkeypatch.setenv("RECSYS_HOME", str(tmp_path / "home"))
    # the API server signs tokens with it; set here, as an earlier in-process dag.test() may have unset it
    monkeypatch.setenv("AIRFLOW__API_AUTH__JWT_SECRET", secrets.token_urlsafe(32))
    import recsys_plugin  # the plugin manager put plugins/ on sys.path; same module object Airflow mounts

    recsys_plugin._settings.cache_clear()
    with TestClient(create_app()) as client:
        yield client
    recsys_plugin._settings.cache_clear()


def test_mounted_api_and_view_answer_without_a_live_model(airflow_api) -> None:
    health = airflow_api.get("/recsys/health")
    assert health.status_code == 503 and health.json()["model_version"] is None
    status = airflow_api.get("/recsys-ui/status.json")
    assert status.status_code == 200, status.text
    body = status.json()
    assert body["live"] is None and body["runs"] == [] and "quality_gate" in body["gates"]
    assert airflow_api.get("/recsys-ui/curve.png").status_code == 404
    quality = airflow_api.get("/recsys-ui/quality.png")  # the "no model versions yet" figure
    assert quality.status_code == 200 and quality.headers["content-type"] == "image/png"
    assert quality.content.startswith(b"\x89PNG") and quality.headers["cache-control"] == "no-store"
    page = airflow_api.get("/recsys-ui/")
    assert page.status_code == 200 and "Recommender" in page.text and 'const API = "../recsys"' in page.text
    assert 'src = "quality.png?t="' in page.text
    assert airflow_api.get("/recsys/movies", params={"query": "toy"}).status_code == 503  # titles are per model
