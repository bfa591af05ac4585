"""The Recommender view in a real browser: headless Chromium against `airflow api-server`, after
`airflow dags test` trained and promoted a model on a synthetic snapshot. The scheduler-side run and
the API server share one vector store through a `milvus-lite server`, as scripts/airflow-ui.sh does.

Screenshots land in test-artifacts/ (gitignored). Needs Debian's chromium:
`apt-get install -y chromium chromium-driver`.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "test-artifacts"
CHROMIUM = Path("/usr/bin/chromium")
BIN = Path(sys.executable).parent

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="headless Chromium not installed: "
                       "apt-get update && apt-get install -y chromium chromium-driver"),
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(url: str, proc: subprocess.Popen, timeout: float, log: Path) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"{proc.args[:3]} exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(url, timeout=2).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(1)
    pytest.fail(f"{url} did not answer within {timeout:.0f}s:\n{log.read_text()[-3000:]}")


def _wait_port(port: int, proc: subprocess.Popen, timeout: float, log: Path) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"milvus-lite server exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.5)
    pytest.fail(f"milvus-lite server not listening on {port}:\n{log.read_text()[-3000:]}")


def _start(cmd: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    return subprocess.Popen(cmd, env=env, cwd=REPO, stdout=log.open("w"), stderr=subprocess.STDOUT,
                            start_new_session=True)


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, 15)  # its own session: the server and the workers it forked
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)


def _chromium(*args: str, profile: Path) -> str:
    cmd = [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           f"--user-data-dir={profile}", "--window-size=1280,1600", "--virtual-time-budget=20000", *args]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, object]]:
    """A promoted model (via `airflow dags test`) and a running `airflow api-server` over it."""
    from recsys_tasks.data.synthetic import write_snapshot

    root = tmp_path_factory.mktemp("browser")
    airflow_home = Path(tempfile.mkdtemp(prefix="recsys-airflow-ui-"))
    write_snapshot(root / "snapshots" / "2026-11-01", n_users=120, fmt="ml-1m", seed=7)
    milvus_port, api_port = _free_port(), _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RECSYS_", "AIRFLOW"))}
    env.update({
        "PATH": f"{BIN}:{env.get('PATH', '')}", "DGLBACKEND": "pytorch",
        "AIRFLOW_HOME": str(airflow_home), "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(REPO / "plugins"), "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "True", "AIRFLOW__API__WORKERS": "1",
        "RECSYS_HOME": str(root / "home"), "RECSYS_MILVUS_URI": f"http://127.0.0.1:{milvus_port}",
        "RECSYS_SKIP_CHECKSUM": "true", "RECSYS_BATCH_SIZE": "128",
    })
    milvus_log, api_log = root / "milvus.log", root / "api-server.log"
    milvus = _start([str(BIN / "milvus-lite"), "server", "--data-dir", str(root / "milvus"), "--host",
                     "127.0.0.1", "--port", str(milvus_port)], env, milvus_log)
    api = None
    try:
        _wait_port(milvus_port, milvus, 300, milvus_log)
        subprocess.run([str(BIN / "airflow"), "db", "migrate"], env=env, cwd=REPO, check=True,
                       capture_output=True, timeout=300)
        conf = {"snapshot": str(root / "snapshots"), "epochs": 2, "embed_dim": 16, "lr": 0.02, "device": "cpu"}
        run = subprocess.run([str(BIN / "airflow"), "dags", "test", "movielens_recsys", "2026-11-02",
                              "-c", json.dumps(conf)], env=env, cwd=REPO, capture_output=True, text=True,
                             timeout=1200, check=False)
        assert run.returncode == 0, (run.stdout + run.stderr)[-5000:]
        api = _start([str(BIN / "airflow"), "api-server", "--port", str(api_port)], env, api_log)
        base = f"http://127.0.0.1:{api_port}"
        _wait(f"{base}/api/v2/version", api, 600, api_log)
        yield {"base": base, "profile": root / "chromium"}
    finally:
        if api is not None:
            _stop(api)
        _stop(milvus)
        shutil.rmtree(airflow_home, ignore_errors=True)


def test_api_and_status_through_the_airflow_api_server(served: dict[str, object]) -> None:
    base = served["base"]
    health = httpx.get(f"{base}/recsys/health", timeout=30)
    assert health.status_code == 200, health.text
    status = httpx.get(f"{base}/recsys-ui/status.json", timeout=30).json()
    assert status["live"]["model_version"] == health.json()["model_version"]
    run = status["runs"][0]
    assert all(run["steps"][gate] == "done" for gate in status["gates"]) and run["steps"]["promote"] == "done"
    curve = httpx.get(f"{base}/recsys-ui/curve.png", timeout=30)
    assert curve.status_code == 200 and curve.content.startswith(b"\x89PNG")


def test_recommender_page_in_chromium(served: dict[str, object]) -> None:
    base, profile = served["base"], served["profile"]
    version = httpx.get(f"{base}/recsys/health", timeout=30).json()["model_version"]
    movie = httpx.get(f"{base}/recsys/movies", params={"query": "a", "limit": 1}, timeout=30).json()[0]
    url = f"{base}/recsys-ui/?q={quote(movie['title'])}"
    dom = _chromium("--dump-dom", url, profile=profile)
    assert f'<b id="live-version">{version}</b>' in dom
    assert f"Because you watched {movie['title']}" in dom.replace("&amp;", "&")
    assert dom.count("<tr>") > 10, "metrics, matches, recommendations, runs and versions tables are filled"
    assert '<p id="error" role="alert"></p>' in dom, "the page reported an error"
    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "recsys-ui.png"
    _chromium(f"--screenshot={shot}", url, profile=profile)
    assert shot.stat().st_size > 10_000


def test_view_is_in_the_airflow_ui_navigation(served: dict[str, object]) -> None:
    base, profile = served["base"], served["profile"]
    dom = _chromium("--dump-dom", f"{base}/plugin/recsys", profile=profile)
    assert "<iframe" in dom and "recsys-ui/" in dom, dom[-2000:]
    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "airflow-recommender-view.png"
    _chromium(f"--screenshot={shot}", f"{base}/plugin/recsys", profile=profile)
    assert shot.stat().st_size > 10_000
