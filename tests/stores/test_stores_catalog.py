"""The SQL catalog on SQLite and on MariaDB: schema, upserts, title search, registry, run log."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from sqlalchemy import inspect

from recsys_tasks.config import Settings
from recsys_tasks.stores import catalog as cat
from recsys_tasks.stores.catalog import Catalog

ENGINES = [pytest.param(("lite", "sqlite"), id="sqlite"),
           pytest.param(("lite", "mariadb"), id="mariadb", marks=pytest.mark.mysql)]
INJECTIONS = ["1; DROP TABLE movies; --", "' OR 1=1 --", "%' OR '1'='1", "\") OR 1=1; --", "_", "%"]
ROWS = [{"movie_id": 1, "title": "Toy Story (1995)", "year": 1995, "genres": "Animation|Comedy"},
        {"movie_id": 7, "title": "100% Pure_Fun (1999)", "year": 1999, "genres": ""},
        {"movie_id": 42, "title": "Amélie (Fabuleux destin d'Amélie Poulain, Le) (2001)", "year": None,
         "genres": "Comedy|Romance"},
        {"movie_id": 99, "title": "Pure Fun (2003)", "year": 2003, "genres": "Drama"}]


def _snapshot(c: Catalog) -> dict:
    tables = sorted(inspect(c.engine).get_table_names())
    return {"tables": tables, **{t.name: c.count(t) for t in cat.metadata.sorted_tables}}


@pytest.mark.parametrize("stores", ENGINES, indirect=True)
def test_schema_is_created_once_and_versioned(stores: Settings) -> None:
    c = Catalog.from_settings(stores)
    cat.dispose(stores.resolved_db_url)
    c = Catalog.from_settings(stores)  # a second process start: create_all again
    assert set(inspect(c.engine).get_table_names()) >= {"catalog_movies", "model_versions", "runs", "schema_version"}
    assert c.count(cat.schema_version) == 1


@pytest.mark.parametrize("stores", ENGINES, indirect=True)
def test_catalogs_are_versioned_and_rewrites_are_idempotent(stores: Settings) -> None:
    c = Catalog.from_settings(stores)
    c.write_catalog("c1", ROWS, batch_size=3)
    c.write_catalog("c1", ROWS)  # a rerun writes the same rows
    assert c.catalog_size("c1") == 4 and c.movies_by_id([1, 7, 42, 99, 1000], "c1") == {r["movie_id"]: r for r in ROWS}
    corrected = [{**ROWS[1], "title": "100% Pure_Fun, Redux (1999)"}, *ROWS[2:]]
    c.write_catalog("c2", corrected)
    assert c.movies_by_id([7], "c1")[7]["title"] == "100% Pure_Fun (1999)"  # the older catalog keeps its titles
    assert c.movies_by_id([1, 7], "c2") == {7: corrected[0]}
    assert c.catalogs() == ["c1", "c2"] and c.count(cat.catalog_movies) == 7
    c.drop_catalog("c1")
    assert c.catalogs() == ["c2"] and c.movies_by_id([1, 7], "c1") == {}


@pytest.mark.parametrize("stores", ENGINES, indirect=True)
def test_title_search_escapes_wildcards_and_ignores_injection(stores: Settings) -> None:
    c = Catalog.from_settings(stores)
    c.write_catalog("c1", ROWS)
    c.write_catalog("other", [{**r, "title": "Pure other"} for r in ROWS])
    before = _snapshot(c)
    assert [r["movie_id"] for r in c.search_titles("pure", 10, "c1")] == [7, 99]
    assert [r["movie_id"] for r in c.search_titles("100%", 10, "c1")] == [7]
    assert [r["movie_id"] for r in c.search_titles("e_f", 10, "c1")] == [7]  # _ is a literal underscore
    assert [r["movie_id"] for r in c.search_titles("d'Amélie", 10, "c1")] == [42]
    assert len(c.search_titles("(", 2, "c1")) == 2
    for text in INJECTIONS:
        hits = [r["movie_id"] for r in c.search_titles(text, 10, "c1")]
        assert hits == ([7] if text in ("_", "%") else []), text
        assert c.movies_by_id([1], "c1") and _snapshot(c) == before


@pytest.mark.parametrize("stores", ENGINES, indirect=True)
def test_registry_updates_are_compare_and_set(stores: Settings) -> None:
    c = Catalog.from_settings(stores)
    assert c.insert_version("va", status="candidate", catalog_id="c1") and not c.insert_version("va", status="x")
    c.insert_version("vb", status="active", catalog_id="c1")
    c.update_versions([("vb", ("active",), {"status": "retired"}), ("va", ("candidate",), {"status": "active"})])
    assert (c.version("va")["status"], c.version("vb")["status"]) == ("active", "retired")
    with pytest.raises(cat.StaleState):  # va is no longer a candidate: nothing of the two updates is written
        c.update_versions([("vb", ("retired",), {"status": "active"}), ("va", ("candidate",), {"status": "x"})])
    assert (c.version("va")["status"], c.version("vb")["status"]) == ("active", "retired")


@pytest.mark.parametrize("stores", ENGINES, indirect=True)
def test_record_run_upserts_per_run_and_step(stores: Settings) -> None:
    started = datetime(2026, 11, 28, 1, 2, 3, 456789, tzinfo=UTC)
    cat.record_run(stores, "manual__1", "train", "running", started_at=started)
    cat.record_run(stores, "manual__1", "train", "success", started_at=started, finished_at=started,
                   duration_s=1.5, counts={"epochs": 2})
    cat.record_run(stores, "manual__1", "evaluate", "running")
    c = Catalog.from_settings(stores)
    assert c.count(cat.runs) == 2
    from sqlalchemy import select

    with c.engine.connect() as conn:
        row = conn.execute(select(cat.runs).where(cat.runs.c.step == "train")).one()._mapping
    assert row["status"] == "success" and row["counts"] == {"epochs": 2} and row["duration_s"] == 1.5
    assert row["started_at"] == started.replace(tzinfo=None)


@pytest.mark.parametrize("stores", ENGINES, indirect=True)
def test_a_schema_1_catalog_is_migrated_in_place(stores: Settings) -> None:
    """A database written by the first release (one unversioned movies table) keeps serving its model."""
    from sqlalchemy import (
        JSON,
        BigInteger,
        Column,
        DateTime,
        Integer,
        MetaData,
        String,
        Table,
        Text,
        create_engine,
    )

    old = MetaData()
    Table("schema_version", old, Column("version", Integer, primary_key=True), Column("applied_at", DateTime))
    movies = Table("movies", old, Column("movie_id", BigInteger, primary_key=True), Column("title", String(512)),
                   Column("year", Integer), Column("genres", String(255)), Column("updated_at", DateTime))
    versions = Table("model_versions", old, Column("version", String(64), primary_key=True),
                     Column("snapshot_id", String(128)), Column("created_at", DateTime), Column("metrics", JSON),
                     Column("status", String(16)), Column("reason", Text), Column("promoted_at", DateTime))
    stores.home.mkdir(parents=True, exist_ok=True)
    engine = create_engine(stores.resolved_db_url)
    old.create_all(engine)
    when = datetime(2026, 11, 1)
    with engine.begin() as conn:
        conn.execute(old.tables["schema_version"].insert(), [{"version": 1, "applied_at": when}])
        conn.execute(movies.insert(), [{**r, "updated_at": when} for r in ROWS])
        conn.execute(versions.insert(), [
            {"version": "vold", "snapshot_id": "s", "created_at": when, "metrics": {}, "status": "retired",
             "reason": None, "promoted_at": when},
            {"version": "vlive", "snapshot_id": "s", "created_at": when, "metrics": {}, "status": "active",
             "reason": None, "promoted_at": when}])
    engine.dispose()

    c = Catalog.from_settings(stores)
    live = c.version("vlive")
    assert live["catalog_id"] == cat.LEGACY_CATALOG and live["activated_at"] == when and live["data_ts"] is None
    assert c.movies_by_id([1, 42], cat.LEGACY_CATALOG) == {1: ROWS[0], 42: ROWS[2]}
    assert c.count(cat.schema_version) == 2
    cat.dispose(stores.resolved_db_url)
    assert Catalog.from_settings(stores).catalog_size(cat.LEGACY_CATALOG) == 4  # migrated once
