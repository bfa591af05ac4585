"""The SQL catalog (movie records), the model registry and the run log, over SQLAlchemy Core.

`RECSYS_DB_URL` picks the engine: SQLite by default, MySQL/MariaDB via `mysql+pymysql://`. Every
statement is built by SQLAlchemy with bound parameters; no table or column name comes from input.
Times are naive UTC (SQLite has no time zones); MySQL keeps microseconds so promotions order exactly.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Column,
    DateTime,
    Engine,
    Float,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    create_engine,
    func,
    select,
    update,
)
from sqlalchemy.dialects import mysql, sqlite
from sqlalchemy.engine import make_url

from recsys_tasks.config import ConfigError, Settings
from recsys_tasks.logs import get_logger

log = get_logger(__name__)

SCHEMA_VERSION = 1
STATUSES = ("candidate", "active", "rejected", "retired")
_TIME = DateTime().with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb")
_MYSQL = {"mysql_charset": "utf8mb4", "mysql_engine": "InnoDB"}

metadata = MetaData()
schema_version = Table(
    "schema_version", metadata,
    Column("version", Integer, primary_key=True, autoincrement=False),
    Column("applied_at", _TIME, nullable=False),
    **_MYSQL,
)
movies = Table(
    "movies", metadata,
    Column("movie_id", BigInteger, primary_key=True, autoincrement=False),
    Column("title", String(512), nullable=False),
    Column("year", Integer, nullable=True),
    Column("genres", String(255), nullable=False),
    Column("updated_at", _TIME, nullable=False),
    **_MYSQL,
)
model_versions = Table(
    "model_versions", metadata,
    Column("version", String(64), primary_key=True),
    Column("snapshot_id", String(128), nullable=True),
    Column("created_at", _TIME, nullable=False),
    Column("metrics", JSON, nullable=True),
    Column("status", String(16), nullable=False, index=True),
    Column("reason", Text, nullable=True),
    Column("promoted_at", _TIME, nullable=True),
    **_MYSQL,
)
runs = Table(
    "runs", metadata,
    Column("run_id", String(250), primary_key=True),
    Column("step", String(64), primary_key=True),
    Column("status", String(16), nullable=False),
    Column("started_at", _TIME, nullable=True),
    Column("finished_at", _TIME, nullable=True),
    Column("duration_s", Float, nullable=True),
    Column("counts", JSON, nullable=True),
    **_MYSQL,
)
MOVIE_FIELDS = ("movie_id", "title", "year", "genres")

_engines: dict[str, Engine] = {}
_lock = threading.Lock()


def utcnow() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


def _naive_utc(when: datetime | None) -> datetime | None:
    if when is None or when.tzinfo is None:
        return when
    return when.astimezone(UTC).replace(tzinfo=None)


def engine_for(url: str) -> Engine:
    """One engine per URL per process, with the schema created (idempotently) on first use."""
    with _lock:
        if url not in _engines:
            if url.startswith("sqlite"):
                database = make_url(url).database
                if database and database != ":memory:":
                    Path(database).parent.mkdir(parents=True, exist_ok=True)
                # wait for another process's write lock instead of failing (Airflow tasks run in parallel)
                engine = create_engine(url, connect_args={"timeout": 30})
            elif url.startswith(("mysql", "mariadb")):
                engine = create_engine(url, pool_pre_ping=True, pool_recycle=3600)
            else:
                raise ConfigError(f"db_url: {url.split(':', 1)[0]!r} is not supported (sqlite or mysql+pymysql)")
            _create_schema(engine)
            _engines[url] = engine
        return _engines[url]


def dispose(url: str) -> None:
    with _lock:
        engine = _engines.pop(url, None)
    if engine is not None:
        engine.dispose()


def _create_schema(engine: Engine) -> None:
    metadata.create_all(engine)
    with engine.begin() as conn:
        if conn.execute(select(schema_version.c.version).where(
                schema_version.c.version == SCHEMA_VERSION)).first() is None:
            conn.execute(_upsert(engine, schema_version, ["version"]),
                         [{"version": SCHEMA_VERSION, "applied_at": utcnow()}])


def _upsert(engine: Engine, table: Table, keys: Sequence[str]) -> Any:
    """INSERT that updates the non-key columns of an existing row, in the engine's own dialect."""
    columns = [c.name for c in table.columns if c.name not in keys]
    if engine.dialect.name == "sqlite":
        stmt = sqlite.insert(table)
        return stmt.on_conflict_do_update(index_elements=list(keys),
                                          set_={c: stmt.excluded[c] for c in columns})
    stmt = mysql.insert(table)
    return stmt.on_duplicate_key_update({c: stmt.inserted[c] for c in columns})


class Catalog:
    def __init__(self, url: str) -> None:
        self.url = url
        self.engine = engine_for(url)

    @classmethod
    def from_settings(cls, settings: Settings) -> Catalog:
        return cls(settings.resolved_db_url)

    # --- movies ------------------------------------------------------------------------------
    def changed_movies(self, rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
        """The rows that are new or differ from what the catalog holds (so a rerun writes nothing)."""
        with self.engine.connect() as conn:
            have = {r.movie_id: tuple(r) for r in conn.execute(select(*(movies.c[f] for f in MOVIE_FIELDS)))}
        return [r for r in rows if have.get(r["movie_id"]) != tuple(r[f] for f in MOVIE_FIELDS)]

    def upsert_movies(self, rows: Sequence[dict[str, Any]], batch_size: int = 1000) -> None:
        """Insert or update by movie id, in batches, in one transaction."""
        now = utcnow()
        stmt = _upsert(self.engine, movies, ["movie_id"])
        with self.engine.begin() as conn:
            for start in range(0, len(rows), batch_size):
                conn.execute(stmt, [{**r, "updated_at": now} for r in rows[start:start + batch_size]])

    def movies_by_id(self, ids: Iterable[int], chunk: int = 1000) -> dict[int, dict[str, Any]]:
        """One `WHERE movie_id IN (...)` per `chunk` ids (one query for a page of recommendations)."""
        ids = sorted({int(i) for i in ids})
        out: dict[int, dict[str, Any]] = {}
        with self.engine.connect() as conn:
            for start in range(0, len(ids), chunk):
                query = (select(*(movies.c[f] for f in MOVIE_FIELDS))
                         .where(movies.c.movie_id.in_(ids[start:start + chunk])))
                out.update({r.movie_id: dict(r._mapping) for r in conn.execute(query)})
        return out

    def search_titles(self, text: str, limit: int) -> list[dict[str, Any]]:
        """Movies whose title contains `text` (case-insensitive; % and _ match themselves)."""
        query = (select(*(movies.c[f] for f in MOVIE_FIELDS))
                 .where(movies.c.title.icontains(text, autoescape=True))
                 .order_by(movies.c.title, movies.c.movie_id).limit(limit))
        with self.engine.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(query)]

    def count(self, table: Table) -> int:
        with self.engine.connect() as conn:
            return int(conn.execute(select(func.count()).select_from(table)).scalar_one())

    # --- the model registry ------------------------------------------------------------------
    def version(self, version: str) -> dict[str, Any] | None:
        with self.engine.connect() as conn:
            row = conn.execute(select(model_versions).where(model_versions.c.version == version)).first()
        return dict(row._mapping) if row else None

    def active(self) -> dict[str, Any] | None:
        query = (select(model_versions).where(model_versions.c.status == "active")
                 .order_by(model_versions.c.promoted_at.desc()))
        with self.engine.connect() as conn:
            row = conn.execute(query).first()
        return dict(row._mapping) if row else None

    def versions(self, *statuses: str) -> list[dict[str, Any]]:
        """Registry rows (optionally of some statuses), most recently promoted then created first."""
        query = select(model_versions).order_by(model_versions.c.promoted_at.desc(),
                                                model_versions.c.created_at.desc())
        if statuses:
            query = query.where(model_versions.c.status.in_(statuses))
        with self.engine.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(query)]

    def register(self, version: str, status: str, *, metrics: dict[str, Any] | None = None,
                 snapshot_id: str | None = None, reason: str | None = None) -> None:
        """Create or update a registry row. The live version is never demoted here (only by `activate`)."""
        if status not in ("candidate", "rejected"):
            raise ValueError(f"register: status {status!r}; promotion goes through activate()")
        with self.engine.begin() as conn:
            row = conn.execute(select(model_versions.c.status).where(
                model_versions.c.version == version)).first()
            if row is None:
                conn.execute(model_versions.insert().values(
                    version=version, snapshot_id=snapshot_id, created_at=utcnow(), metrics=metrics,
                    status=status, reason=reason))
                return
            values: dict[str, Any] = {"reason": reason}
            if row.status != "active":
                values["status"] = status
            if metrics is not None:
                values["metrics"] = metrics
            if snapshot_id is not None:
                values["snapshot_id"] = snapshot_id
            conn.execute(update(model_versions).where(model_versions.c.version == version).values(**values))

    def activate(self, version: str, reason: str | None = None) -> str | None:
        """`version` becomes active, the previous active one retired, in one transaction; returns it."""
        with self.engine.begin() as conn:
            previous = conn.execute(select(model_versions.c.version).where(
                model_versions.c.status == "active", model_versions.c.version != version)).scalars().all()
            conn.execute(update(model_versions).where(model_versions.c.version.in_(previous))
                         .values(status="retired", reason=reason))
            done = conn.execute(update(model_versions).where(model_versions.c.version == version)
                                .values(status="active", promoted_at=utcnow(), reason=None))
            if done.rowcount != 1:
                raise LookupError(f"model version {version} is not registered")
        return previous[0] if previous else None

    # --- the run log -------------------------------------------------------------------------
    def record_run(self, run_id: str, step: str, status: str, *, started_at: datetime | None = None,
                   finished_at: datetime | None = None, duration_s: float | None = None,
                   counts: dict[str, Any] | None = None) -> None:
        """One row per (run, step); a retried task updates its row."""
        row = {"run_id": run_id, "step": step, "status": status, "started_at": _naive_utc(started_at),
               "finished_at": _naive_utc(finished_at), "duration_s": duration_s, "counts": counts}
        with self.engine.begin() as conn:
            conn.execute(_upsert(self.engine, runs, ["run_id", "step"]), [row])


def record_run(settings: Settings, run_id: str, step: str, status: str, **fields: Any) -> None:
    """The pipeline's / DAG's hook: log one step of one run in the catalog database."""
    Catalog.from_settings(settings).record_run(run_id, step, status, **fields)
