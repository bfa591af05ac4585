"""plugins/recsys_airflow/stores.py: the one store resolution of tasks, the plugin and its API.
Connections first (here from AIRFLOW_CONN_* variables, a secrets backend every process reads), then
RECSYS_*; the Milvus login/password or API key become the client's token."""

from __future__ import annotations

from pathlib import Path

import pytest
from recsys_airflow import stores

STORE_VARS = ("RECSYS_DB_URL", "RECSYS_MILVUS_URI", "RECSYS_MILVUS_TOKEN", "AIRFLOW_CONN_RECSYS_MYSQL",
              "AIRFLOW_CONN_RECSYS_MILVUS")


@pytest.fixture(autouse=True)
def clean_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for var in STORE_VARS:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("RECSYS_HOME", str(tmp_path / "home"))


def test_without_connections_the_environment_applies(monkeypatch: pytest.MonkeyPatch) -> None:
    assert stores.store_overrides() == {}
    monkeypatch.setenv("RECSYS_DB_URL", "mysql+pymysql://env@db.example/recsys")
    monkeypatch.setenv("RECSYS_MILVUS_URI", "http://milvus.example:19530")
    monkeypatch.setenv("RECSYS_MILVUS_TOKEN", "root:from-env")
    s = stores.settings()
    assert (s.db_url, s.milvus_uri, s.milvus_token) == (
        "mysql+pymysql://env@db.example/recsys", "http://milvus.example:19530", "root:from-env")


def test_connections_win_over_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RECSYS_DB_URL", "sqlite:////tmp/never-used.db")
    monkeypatch.setenv("RECSYS_MILVUS_URI", "http://never-used:19530")
    monkeypatch.setenv("RECSYS_MILVUS_TOKEN", "never:used")
    monkeypatch.setenv("AIRFLOW_CONN_RECSYS_MYSQL", "mysql://rec%40user:p%40ss%3Aword@db.example:3307/recsys")
    monkeypatch.setenv("AIRFLOW_CONN_RECSYS_MILVUS", "http://reader:s3cret@milvus.example:19531/movies_db")
    s = stores.settings(epochs=3)
    assert s.db_url == "mysql+pymysql://rec%40user:p%40ss%3Aword@db.example:3307/recsys"
    assert s.milvus_uri == "http://milvus.example:19531/movies_db"
    assert s.milvus_token == "reader:s3cret"
    assert s.epochs == 3
    assert "s3cret" not in repr(s.public()) and "p@ss" not in repr(s.public())


def test_milvus_api_key_and_tls(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIRFLOW_CONN_RECSYS_MILVUS", "https://:api-key-123@in01.cloud.example")
    assert stores.store_overrides() == {"milvus_uri": "https://in01.cloud.example:19530",
                                        "milvus_token": "api-key-123"}


def test_milvus_connection_without_credentials_keeps_the_environment_token(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RECSYS_MILVUS_TOKEN", "root:from-env")
    monkeypatch.setenv("AIRFLOW_CONN_RECSYS_MILVUS", "http://milvus:19530")
    s = stores.settings()
    assert (s.milvus_uri, s.milvus_token) == ("http://milvus:19530", "root:from-env")
