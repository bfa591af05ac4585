"""Shared fixtures: a fresh RECSYS_HOME per test, and the real MovieLens data in ../shared/data."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

os.environ.setdefault("DGLBACKEND", "pytorch")

REPO = Path(__file__).resolve().parents[1]

# Airflow reads its configuration when first imported, so its home is set at collection time: one
# throwaway home (SQLite metadata DB) per test process for the DAG and plugin tests, never ~/airflow.
# pytest-xdist workers inherit the controller's environment, so each names its own (one SQLite writer each).
HOME_VARIABLE = f"RECSYS_TEST_AIRFLOW_HOME_{os.environ.get('PYTEST_XDIST_WORKER', 'main')}"
if HOME_VARIABLE not in os.environ:
    os.environ[HOME_VARIABLE] = tempfile.mkdtemp(prefix="recsys-airflow-")
os.environ.update({
    "AIRFLOW_HOME": os.environ[HOME_VARIABLE],
    "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
    "AIRFLOW__CORE__PLUGINS_FOLDER": str(REPO / "plugins"),
    "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
    "AIRFLOW__CORE__UNIT_TEST_MODE": "False",
    "AIRFLOW__LOGGING__LOGGING_LEVEL": "WARNING",
})
# Each test home's shared local milvus-lite server stops soon after its last user (not after minutes).
os.environ.setdefault("RECSYS_MILVUS_LINGER_S", "3")
SHARED_DATA = Path(os.environ.get("RECSYS_SHARED_DATA", REPO.parent / "shared" / "data"))


def real_release(name: str) -> Path:
    """The folder of a real MovieLens release under ../shared/data, or skip the test saying why."""
    folder = SHARED_DATA / name
    if not folder.is_dir():
        pytest.skip(f"real MovieLens data not found at {folder} (see ../shared/data/README.md)")
    return folder


@pytest.fixture
def settings(tmp_path: Path):
    """Settings with everything (artifacts, Milvus Lite file, SQLite catalog) under a temp folder."""
    from recsys_tasks.config import load_settings

    return load_settings(home=tmp_path / "home")


@pytest.fixture(autouse=True)
def _quick_smoke_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    """The smoke test waits seconds between attempts at a store; tests need not."""
    from recsys_tasks.release import smoke

    monkeypatch.setattr(smoke, "RETRY_WAIT_S", 0.01)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The slow tests first (a stable sort): `make test` deals test files to pytest-xdist workers in this
    order, so the long ones start at once and the short ones fill in until every worker ends."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)
