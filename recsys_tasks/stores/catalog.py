"""The SQL catalog: movie records versioned by catalog, the model registry's rows, the run log, locks.

`RECSYS_DB_URL` picks the engine: SQLite by default, MySQL/MariaDB via `mysql+pymysql://`, PostgreSQL
via `postgresql+psycopg2://`. Every statement is built by SQLAlchemy with bound parameters; no table or
column name comes from input. Times are naive UTC (SQLite has no time zones); MySQL keeps microseconds.

This is an adapter: it stores and reads, atomically where asked, and knows no policy. Which registry
transitions are legal, and when a model may be served, is `recsys_tasks.release`'s business.

Movie records are keyed by `(catalog_id, movie_id)`, where `catalog_id` is a content hash of a
snapshot's movie table, and each registry row names the catalog its model was trained with. So the
titles served with a model are always its own (a later snapshot's corrected title never shows on an
older model, and a rollback brings the older titles back), and nightly snapshots with the same movies
share one copy.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Column,
    Connection,
    DateTime,
    Engine,
    Float,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    create_engine,
    delete,
    func,
    inspect,
    select,
    text,
    update,
)
from sqlalchemy.dialects import mysql, postgresql, sqlite
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError

from recsys_tasks.config import ConfigError, Settings
from recsys_tasks.data.formats import MAX_GENRES_CHARS, MAX_TITLE_CHARS  # validate_raw enforces them on input
from recsys_tasks.locks import WAIT_LOG_S, FileLocks, lock_id
from recsys_tasks.logs import get_logger

log = get_logger(__name__)

SCHEMA_VERSION = 2
_TIME = DateTime().with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb")
_MYSQL = {"mysql_charset": "utf8mb4", "mysql_engine": "InnoDB"}

metadata = MetaData()
schema_version = Table(
    "schema_version", metadata,
    Column("version", Integer, primary_key=True, autoincrement=False),
    Column("applied_at", _TIME, nullable=False),
    **_MYSQL,
)
catalog_movies = Table(
    "catalog_movies", metadata,
    Column("catalog_id", String(32), primary_key=True),
    Column("movie_id", BigInteger, primary_key=True, autoincrement=False),
    Column("title", String(MAX_TITLE_CHARS), nullable=False),
    Column("year", Integer, nullable=True),
    Column("genres", String(MAX_GENRES_CHARS), nullable=False),
    **_MYSQL,
)
model_versions = Table(
    "model_versions", metadata,
    Column("version", String(64), primary_key=True),
    Column("snapshot_id", String(128), nullable=True),
    Column("catalog_id", String(32), nullable=True),
    Column("data_ts", BigInteger, nullable=True),  # the snapshot's newest rating (unix seconds)
    Column("run_date", _TIME, nullable=True),  # the latest run (logical) date that produced it
    Column("created_at", _TIME, nullable=False),
    Column("metrics", JSON, nullable=True),
    Column("rule", JSON, nullable=True),  # the served history rule's parameters (rule.json)
    Column("status", String(16), nullable=False, index=True),
    Column("reason", Text, nullable=True),
    Column("promoted_at", _TIME, nullable=True),  # first time it was served: set once, never cleared
    Column("activated_at", _TIME, nullable=True),  # last time it became active (promotion or rollback)
    Column("retired_at", _TIME, nullable=True),
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
# --- serving: the users' histories per snapshot, and the ratings recorded through the API ----------
user_histories = Table(
    "user_histories", metadata,
    Column("snapshot_id", String(128), primary_key=True),
    Column("user_id", BigInteger, primary_key=True, autoincrement=False),
    Column("history", JSON, nullable=False),  # [[timestamp, movie_id], ...] oldest -> newest
    **_MYSQL,
)
movie_popularity = Table(
    "movie_popularity", metadata,
    Column("snapshot_id", String(128), primary_key=True),
    Column("movie_id", BigInteger, primary_key=True, autoincrement=False),
    Column("ratings", Integer, nullable=False),
    **_MYSQL,
)
history_sets = Table(  # written last: a snapshot's histories are complete when their row is here
    "history_sets", metadata,
    Column("snapshot_id", String(128), primary_key=True),
    Column("source", String(64), nullable=False),  # what they were computed from (the preprocess key)
    Column("users", Integer, nullable=False),
    Column("written_at", _TIME, nullable=False),
    **_MYSQL,
)
rating_events = Table(
    "rating_events", metadata,
    Column("user_id", BigInteger, primary_key=True, autoincrement=False),
    Column("movie_id", BigInteger, primary_key=True, autoincrement=False),
    Column("timestamp", BigInteger, primary_key=True, autoincrement=False),
    Column("rating", Float, nullable=False),
    Column("recorded_at", _TIME, nullable=False),
    **_MYSQL,
)
MOVIE_FIELDS = ("movie_id", "title", "year", "genres")
LEGACY_CATALOG = "legacy"  # schema 1 had one unversioned movies table

_engines: dict[tuple[str, float | None], Engine] = {}
_lock = threading.Lock()


class StaleState(RuntimeError):
    """A conditional update found a row not in the expected state (another process changed it)."""


def utcnow() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


def naive_utc(when: datetime | None) -> datetime | None:
    if when is None or when.tzinfo is None:
        return when
    return when.astimezone(UTC).replace(tzinfo=None)


def dialect_of(url: str) -> str:
    name = make_url(url).get_backend_name()
    if name in ("sqlite", "mysql", "mariadb", "postgresql"):
        return "mysql" if name == "mariadb" else name
    raise ConfigError(f"db_url: {name!r} is not supported (sqlite, mysql+pymysql or postgresql+psycopg2)")


def engine_for(url: str, timeout_s: float | None = None) -> Engine:
    """One engine per URL (and timeout) per process, with the schema created (idempotently) on first use.

    With `timeout_s` (the serving path) connecting, every statement and waiting for a pooled connection
    give up after that long; without it they wait (a step may hold a lock for hours).
    """
    with _lock:
        if (url, timeout_s) not in _engines:
            kind = dialect_of(url)
            if kind == "sqlite":
                database = make_url(url).database
                if database and database != ":memory:":
                    Path(database).parent.mkdir(parents=True, exist_ok=True)
                # wait for another process's write lock instead of failing (Airflow tasks run in parallel)
                engine = create_engine(url, connect_args={"timeout": timeout_s or 30},
                                       **({"pool_timeout": timeout_s} if timeout_s else {}))
            elif timeout_s is None:
                engine = create_engine(url, pool_pre_ping=True, pool_recycle=3600)
            else:
                engine = create_engine(url, pool_pre_ping=True, pool_recycle=3600, pool_timeout=timeout_s,
                                       connect_args=_timeouts(kind, timeout_s))
            _create_schema(engine)
            _engines[(url, timeout_s)] = engine
        return _engines[(url, timeout_s)]


def _timeouts(kind: str, seconds: float) -> dict[str, Any]:
    if kind == "mysql":  # PyMySQL: socket timeouts on connect, reads and writes
        return {"connect_timeout": max(1, round(seconds)), "read_timeout": seconds, "write_timeout": seconds}
    return {"connect_timeout": max(1, round(seconds)), "options": f"-c statement_timeout={int(seconds * 1000)}"}


def dispose(url: str) -> None:
    with _lock:
        engines = [_engines.pop(key) for key in list(_engines) if key[0] == url]
    for engine in engines:
        engine.dispose()


def _create_schema(engine: Engine) -> None:
    legacy = "movies" in inspect(engine).get_table_names()
    for attempt in range(3):  # two processes creating a fresh database race between "exists?" and CREATE
        try:
            metadata.create_all(engine)
            break
        except DBAPIError as exc:
            if attempt == 2 or "already exists" not in str(exc.orig):
                raise
    with engine.begin() as conn:
        applied = set(conn.execute(select(schema_version.c.version)).scalars())
        if SCHEMA_VERSION in applied:
            return
        if applied or legacy:
            _migrate_from_1(conn)
        conn.execute(_upsert(conn, schema_version, ["version"]), [{"version": SCHEMA_VERSION, "applied_at": utcnow()}])


def _migrate_from_1(conn: Connection) -> None:
    """Schema 1 -> 2: the registry's new columns, and the old movies table as catalog 'legacy'.

    Hand-written rather than Alembic: one additive step on three tables. Versions registered under
    schema 1 have no data_ts and count as older than any version that has one.
    """
    have = {c["name"] for c in inspect(conn).get_columns("model_versions")}
    for column in model_versions.columns:
        if column.name not in have:  # names and types from this module's schema, never from input
            kind = column.type.compile(dialect=conn.dialect)
            conn.execute(text(f"ALTER TABLE model_versions ADD COLUMN {column.name} {kind}"))
    if "movies" in inspect(conn).get_table_names():
        conn.execute(text("INSERT INTO catalog_movies (catalog_id, movie_id, title, year, genres) "
                          "SELECT :legacy, movie_id, title, year, genres FROM movies"), {"legacy": LEGACY_CATALOG})
        conn.execute(update(model_versions).where(model_versions.c.catalog_id.is_(None))
                     .values(catalog_id=LEGACY_CATALOG))
    conn.execute(update(model_versions).where(model_versions.c.status.in_(("active", "retired")),
                                              model_versions.c.activated_at.is_(None))
                 .values(activated_at=model_versions.c.promoted_at))
    log.info("catalog: migrated schema 1 -> 2 (movies kept as catalog %r)", LEGACY_CATALOG)


def _upsert(conn: Connection | Engine, table: Table, keys: Sequence[str]) -> Any:
    """INSERT that updates the non-key columns of an existing row, in the engine's own dialect."""
    columns = [c.name for c in table.columns if c.name not in keys]
    name = conn.dialect.name
    if name in ("sqlite", "postgresql"):
        stmt = (sqlite if name == "sqlite" else postgresql).insert(table)
        return stmt.on_conflict_do_update(index_elements=list(keys), set_={c: stmt.excluded[c] for c in columns})
    stmt = mysql.insert(table)
    return stmt.on_duplicate_key_update({c: stmt.inserted[c] for c in columns})


def _insert_new(conn: Connection, table: Table) -> Any:
    """INSERT that skips rows whose key exists (a concurrent writer got there first)."""
    name = conn.dialect.name
    if name in ("sqlite", "postgresql"):
        return (sqlite if name == "sqlite" else postgresql).insert(table).on_conflict_do_nothing()
    key = table.primary_key.columns.values()[0].name
    stmt = mysql.insert(table)
    return stmt.on_duplicate_key_update({key: stmt.inserted[key]})


class Catalog:
    def __init__(self, url: str, timeout_s: float | None = None) -> None:
        self.url = url
        self.engine = engine_for(url, timeout_s)

    @classmethod
    def from_settings(cls, settings: Settings, timeout_s: float | None = None) -> Catalog:
        return cls(settings.resolved_db_url, timeout_s)

    # --- movie records, per catalog ------------------------------------------------------------
    def catalog_size(self, catalog_id: str) -> int:
        query = select(func.count()).select_from(catalog_movies).where(catalog_movies.c.catalog_id == catalog_id)
        with self.engine.connect() as conn:
            return int(conn.execute(query).scalar_one())

    def write_catalog(self, catalog_id: str, rows: Sequence[dict[str, Any]], batch_size: int = 1000) -> None:
        """The movie records of one catalog, in batches, in one transaction (a rerun rewrites the same rows)."""
        with self.engine.begin() as conn:
            stmt = _upsert(conn, catalog_movies, ["catalog_id", "movie_id"])
            for start in range(0, len(rows), batch_size):
                conn.execute(stmt, [{**r, "catalog_id": catalog_id} for r in rows[start:start + batch_size]])

    def movies_by_id(self, ids: Iterable[int], catalog_id: str, chunk: int = 1000) -> dict[int, dict[str, Any]]:
        """One `WHERE movie_id IN (...)` per `chunk` ids (one query for a page of recommendations)."""
        ids = sorted({int(i) for i in ids})
        out: dict[int, dict[str, Any]] = {}
        with self.engine.connect() as conn:
            for start in range(0, len(ids), chunk):
                query = (select(*(catalog_movies.c[f] for f in MOVIE_FIELDS))
                         .where(catalog_movies.c.catalog_id == catalog_id,
                                catalog_movies.c.movie_id.in_(ids[start:start + chunk])))
                out.update({r.movie_id: dict(r._mapping) for r in conn.execute(query)})
        return out

    def search_titles(self, text_: str, limit: int, catalog_id: str) -> list[dict[str, Any]]:
        """Movies whose title contains `text_` (case-insensitive; % and _ match themselves)."""
        query = (select(*(catalog_movies.c[f] for f in MOVIE_FIELDS))
                 .where(catalog_movies.c.catalog_id == catalog_id,
                        catalog_movies.c.title.icontains(text_, autoescape=True))
                 .order_by(catalog_movies.c.title, catalog_movies.c.movie_id).limit(limit))
        with self.engine.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(query)]

    def catalogs(self) -> list[str]:
        with self.engine.connect() as conn:
            return sorted(conn.execute(select(catalog_movies.c.catalog_id).distinct()).scalars())

    def drop_catalog(self, catalog_id: str) -> None:
        with self.engine.begin() as conn:
            conn.execute(delete(catalog_movies).where(catalog_movies.c.catalog_id == catalog_id))

    def count(self, table: Table) -> int:
        with self.engine.connect() as conn:
            return int(conn.execute(select(func.count()).select_from(table)).scalar_one())

    # --- registry rows -------------------------------------------------------------------------
    def version(self, version: str) -> dict[str, Any] | None:
        with self.engine.connect() as conn:
            row = conn.execute(select(model_versions).where(model_versions.c.version == version)).first()
        return dict(row._mapping) if row else None

    def versions(self, *statuses: str) -> list[dict[str, Any]]:
        """Registry rows (optionally of some statuses), most recently active, then created, first."""
        query = select(model_versions).order_by(model_versions.c.activated_at.desc(),
                                                model_versions.c.created_at.desc(), model_versions.c.version)
        if statuses:
            query = query.where(model_versions.c.status.in_(statuses))
        with self.engine.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(query)]

    def insert_version(self, version: str, **values: Any) -> bool:
        """Add a registry row unless one exists; True when added."""
        with self.engine.begin() as conn:
            if conn.execute(select(model_versions.c.version).where(model_versions.c.version == version)).first():
                return False
            conn.execute(model_versions.insert().values(version=version, created_at=utcnow(), **values))
            return True

    def update_versions(self, changes: Sequence[tuple[str, Iterable[str] | None, dict[str, Any]]], *,
                        at_most_one: str | None = None) -> None:
        """Apply `(version, expected statuses or None, values)` updates in one transaction, or none.

        Each update applies only while its row is in one of the expected statuses (compare-and-set), and
        afterwards at most one row may have status `at_most_one`, so a concurrent change is detected
        instead of overwritten: StaleState, and nothing is written.
        """
        with self.engine.begin() as conn:
            for version, expected, values in changes:
                stmt = update(model_versions).where(model_versions.c.version == version).values(**values)
                if expected is not None:
                    stmt = stmt.where(model_versions.c.status.in_(tuple(expected)))
                if conn.execute(stmt).rowcount != 1:
                    raise StaleState(f"model version {version} is not in status {sorted(expected or [])}")
            if at_most_one is not None:
                count = conn.execute(select(func.count()).select_from(model_versions)
                                     .where(model_versions.c.status == at_most_one)).scalar_one()
                if count > 1:
                    raise StaleState(f"{count} model versions would be {at_most_one}")

    # --- users: histories per snapshot (written at load time) and recorded ratings -------------------
    def histories_source(self, snapshot_id: str) -> str | None:
        """What the snapshot's stored histories were computed from, or None when there are none (yet)."""
        with self.engine.connect() as conn:
            return conn.execute(select(history_sets.c.source)
                                .where(history_sets.c.snapshot_id == snapshot_id)).scalar_one_or_none()

    def write_histories(self, snapshot_id: str, source: str, histories: Sequence[tuple[int, list[list[int]]]],
                        popularity: Sequence[tuple[int, int]], batch_size: int = 1000) -> None:
        """A snapshot's user histories and movie rating counts, replacing any older copy, in one transaction."""
        with self.engine.begin() as conn:
            for table in (history_sets, user_histories, movie_popularity):
                conn.execute(delete(table).where(table.c.snapshot_id == snapshot_id))
            for start in range(0, len(histories), batch_size):
                conn.execute(user_histories.insert(), [{"snapshot_id": snapshot_id, "user_id": u, "history": h}
                                                       for u, h in histories[start:start + batch_size]])
            for start in range(0, len(popularity), batch_size):
                conn.execute(movie_popularity.insert(), [{"snapshot_id": snapshot_id, "movie_id": m, "ratings": n}
                                                         for m, n in popularity[start:start + batch_size]])
            conn.execute(history_sets.insert().values(snapshot_id=snapshot_id, source=source, users=len(histories),
                                                      written_at=utcnow()))

    def history_snapshots(self) -> list[str]:
        with self.engine.connect() as conn:
            return sorted(conn.execute(select(history_sets.c.snapshot_id)).scalars())

    def drop_histories(self, snapshot_id: str) -> None:
        with self.engine.begin() as conn:
            for table in (history_sets, user_histories, movie_popularity):
                conn.execute(delete(table).where(table.c.snapshot_id == snapshot_id))

    def user_history(self, snapshot_id: str, user_id: int) -> tuple[list[list[int]] | None, list[list[int]]]:
        """(the user's [timestamp, movie_id] pairs in the snapshot or None if absent, their recorded ratings'
        pairs), both oldest first, read on one connection."""
        with self.engine.connect() as conn:
            stored = conn.execute(select(user_histories.c.history).where(
                user_histories.c.snapshot_id == snapshot_id, user_histories.c.user_id == user_id)).scalar_one_or_none()
            events = conn.execute(select(rating_events.c.timestamp, rating_events.c.movie_id)
                                  .where(rating_events.c.user_id == user_id)
                                  .order_by(rating_events.c.timestamp, rating_events.c.movie_id)).all()
        return (None if stored is None else [[int(t), int(m)] for t, m in stored]), [[int(t), int(m)] for t, m in events]

    def popularity(self, snapshot_id: str) -> list[tuple[int, int]]:
        """(movie_id, ratings) of the snapshot, most rated first."""
        query = (select(movie_popularity.c.movie_id, movie_popularity.c.ratings)
                 .where(movie_popularity.c.snapshot_id == snapshot_id)
                 .order_by(movie_popularity.c.ratings.desc(), movie_popularity.c.movie_id))
        with self.engine.connect() as conn:
            return [(int(m), int(n)) for m, n in conn.execute(query)]

    def record_ratings(self, user_id: int, ratings: Sequence[dict[str, Any]]) -> int:
        """Store rating events once per (user, movie, timestamp); returns how many were new."""
        keys = {(int(r["movie_id"]), int(r["timestamp"])) for r in ratings}
        with self.engine.begin() as conn:
            known = {(int(m), int(t)) for m, t in conn.execute(
                select(rating_events.c.movie_id, rating_events.c.timestamp).where(
                    rating_events.c.user_id == user_id, rating_events.c.movie_id.in_({m for m, _ in keys})))}
            new = []
            for r in ratings:
                key = (int(r["movie_id"]), int(r["timestamp"]))
                if key not in known:  # nor twice from one request
                    known.add(key)
                    new.append({"user_id": user_id, "movie_id": key[0], "timestamp": key[1],
                                "rating": float(r["rating"]), "recorded_at": utcnow()})
            if new:
                conn.execute(_insert_new(conn, rating_events), new)
        return len(new)

    def locks(self) -> DatabaseLocks:
        return DatabaseLocks(self.url)

    # --- the run log -------------------------------------------------------------------------
    def record_run(self, run_id: str, step: str, status: str, *, started_at: datetime | None = None,
                   finished_at: datetime | None = None, duration_s: float | None = None,
                   counts: dict[str, Any] | None = None) -> None:
        """One row per (run, step); a retried task updates its row."""
        row = {"run_id": run_id, "step": step, "status": status, "started_at": naive_utc(started_at),
               "finished_at": naive_utc(finished_at), "duration_s": duration_s, "counts": counts}
        with self.engine.begin() as conn:
            conn.execute(_upsert(conn, runs, ["run_id", "step"]), [row])


def record_run(settings: Settings, run_id: str, step: str, status: str, **fields: Any) -> None:
    """The pipeline's / DAG's hook: log one step of one run in the catalog database."""
    Catalog.from_settings(settings).record_run(run_id, step, status, **fields)


class DatabaseLocks:
    """Advisory locks of the catalog's server (MySQL GET_LOCK, PostgreSQL pg_advisory_lock): they hold
    across every host that shares the database, and the server frees them when a holder's connection
    ends. SQLite has none; a SQLite catalog lives on one host, so file locks beside it are the whole story.
    """

    def __init__(self, url: str) -> None:
        self.url, self.kind = url, dialect_of(url)
        database = make_url(url).database if self.kind == "sqlite" else None
        self.files = FileLocks(Path(database or ".").resolve().parent / ".locks") if self.kind == "sqlite" else None

    @contextmanager
    def hold(self, name: str) -> Iterator[None]:
        if self.files is not None:
            with self.files.hold(name):
                yield
            return
        # a connection of its own, outside the pool: the lock lives exactly as long as it does
        with engine_for(self.url).connect() as conn, conn.execution_options(isolation_level="AUTOCOMMIT"):
            self._acquire(conn, name)
            try:
                yield
            finally:
                self._release(conn, name)

    def _acquire(self, conn: Connection, name: str) -> None:
        started = waited = time.monotonic()
        if self.kind == "mysql":
            conn.execute(text("SET SESSION wait_timeout = 86400"))  # a long training holds its lock for hours
            while conn.execute(text("SELECT GET_LOCK(:n, :t)"),
                               {"n": lock_id(name), "t": int(WAIT_LOG_S)}).scalar() != 1:
                log.info("waiting for lock %r (held by another process for %.0fs)", name,
                         time.monotonic() - started)
            return
        while not conn.execute(text("SELECT pg_try_advisory_lock(:k)"), {"k": _pg_key(name)}).scalar():
            if time.monotonic() - waited > WAIT_LOG_S:
                log.info("waiting for lock %r (held by another process for %.0fs)", name,
                         time.monotonic() - started)
                waited = time.monotonic()
            time.sleep(0.5)  # PostgreSQL's blocking pg_advisory_lock cannot time out to report progress

    def _release(self, conn: Connection, name: str) -> None:
        if self.kind == "mysql":
            conn.execute(text("SELECT RELEASE_LOCK(:n)"), {"n": lock_id(name)})
        else:
            conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": _pg_key(name)})


def _pg_key(name: str) -> int:
    return int(lock_id(name)[-15:], 16)  # pg_advisory_lock takes a bigint: 60 bits of the name's hash
