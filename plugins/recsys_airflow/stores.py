"""Where the recsys stores are, for every Airflow process: the Airflow connections first, then `RECSYS_*`.

Tasks (on the workers), the plugin and the recommendations API it mounts (in the API server) all get
their settings from `settings()`, so they read and write the same catalog and the same Milvus:

- Connection `recsys_mysql` (type mysql: host, port, login, password, schema) → `db_url`.
- Connection `recsys_milvus` (type http or https: host, port, schema = Milvus database; login and
  password → the token `login:password`, or password alone → an API key) → `milvus_uri`, `milvus_token`.
- Without a connection, the library's own settings: `RECSYS_DB_URL`, `RECSYS_MILVUS_URI`,
  `RECSYS_MILVUS_TOKEN` (and the embedded defaults under `RECSYS_HOME` when those are unset too).

Connections are read where they are used, never passed through XCom: passwords stay out of the
metadata DB's task data. A long-running process (the API server) reads them through `LiveStores`:
on first use, then again every REFRESH_S seconds, so a connection an operator adds or changes while
it runs takes effect without a restart, and nothing is opened before a request needs it.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from typing import Any

MYSQL_CONN_ID = "recsys_mysql"
MILVUS_CONN_ID = "recsys_milvus"
REFRESH_S = 10.0  # how soon a connection added or changed in a running API server takes effect


def settings(**overrides: Any):  # -> recsys_tasks.config.Settings (imported lazily)
    """The library's settings (defaults < RECSYS_* < `overrides`), with the stores the connections name."""
    from recsys_tasks.config import load_settings

    return load_settings(**{**overrides, **store_overrides()})


class LiveStores:
    """The settings for a long-running process, and what it builds on them (`build`: the serving app),
    resolved on first use and re-resolved at most every REFRESH_S seconds; rebuilt only when they change."""

    def __init__(self, build: Callable[[Any], Any]) -> None:
        self._build, self._lock = build, threading.Lock()
        self._checked, self._overrides = -math.inf, None
        self._settings: Any = None
        self._built: Any = None

    def settings(self):  # -> recsys_tasks.config.Settings
        with self._lock:
            return self._refresh()

    def fresh(self) -> Any | None:
        """What `built()` would return, when it needs neither a resolution nor a build (the hot path: no lock,
        no thread); else None."""
        built = self._built
        return built if built is not None and time.monotonic() - self._checked < REFRESH_S else None

    def built(self) -> Any:
        with self._lock:
            settings = self._refresh()
            if self._built is None:
                self._built = self._build(settings)
            return self._built

    def _refresh(self):
        if time.monotonic() - self._checked >= REFRESH_S:
            overrides = store_overrides()
            if overrides != self._overrides or self._settings is None:
                from recsys_tasks.config import load_settings

                self._settings, self._built, self._overrides = load_settings(**overrides), None, overrides
            self._checked = time.monotonic()
        return self._settings


def store_overrides() -> dict[str, str]:
    """db_url / milvus_uri / milvus_token from the Airflow connections that exist; {} when none does."""
    out: dict[str, str] = {}
    if mysql := _connection(MYSQL_CONN_ID):
        out["db_url"] = catalog_url(mysql)
    if milvus := _connection(MILVUS_CONN_ID):
        out["milvus_uri"] = milvus_uri(milvus)
        if token := milvus_token(milvus):
            out["milvus_token"] = token
    return out


def catalog_url(conn: Any) -> str:
    from sqlalchemy.engine import URL

    return URL.create("mysql+pymysql", username=conn.login or None, password=conn.password or None,
                      host=conn.host, port=conn.port or 3306,
                      database=conn.schema or None).render_as_string(hide_password=False)


def milvus_uri(conn: Any) -> str:
    scheme = "https" if conn.conn_type == "https" else "http"
    database = f"/{conn.schema}" if conn.schema else ""
    return f"{scheme}://{conn.host}:{conn.port or 19530}{database}"


def milvus_token(conn: Any) -> str:
    """Milvus' token: `user:password` with a login, else the password as an API key (Zilliz Cloud)."""
    if conn.login:
        return f"{conn.login}:{conn.password or ''}"
    return conn.password or ""


def _connection(conn_id: str) -> Any | None:
    # airflow.sdk's Connection works in every process: a task asks its supervisor, the API server
    # reads the metadata DB, anything else the environment (AIRFLOW_CONN_*) and secrets backends.
    from airflow.sdk import Connection
    from airflow.sdk.exceptions import AirflowNotFoundException

    try:
        return Connection.get(conn_id)
    except AirflowNotFoundException:
        return None
