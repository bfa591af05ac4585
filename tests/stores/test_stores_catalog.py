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
    assert set(inspect(c.engine).get_table_names()) >= {"movies", "model_versions", "runs", "schema_version"}
    assert c.count(cat.schema_version) == 1


@pytest.mark.parametrize("stores", ENGINES, indirect=True)
def test_upsert_is_idempotent_and_updates_changed_rows(stores: Settings) -> None:
    c = Catalog.from_settings(stores)
    assert c.changed_movies(ROWS) == ROWS
    c.upsert_movies(ROWS, batch_size=3)
    assert c.changed_movies(ROWS) == []
    stamps = {m: r["updated_at"] for m, r in _full_rows(c).items()}
    assert c.movies_by_id([1, 7, 42, 99, 1000]) == {r["movie_id"]: r for r in ROWS}

    changed = [{**ROWS[1], "title": "100% Pure_Fun, Redux (1999)"}]
    new = ROWS[:1] + changed + ROWS[2:]
    assert c.changed_movies(new) == changed
    c.upsert_movies(c.changed_movies(new))
    after = _full_rows(c)
    assert after[7]["title"] == "100% Pure_Fun, Redux (1999)" and after[7]["updated_at"] >= stamps[7]
    assert {m: r["updated_at"] for m, r in after.items() if m != 7} == {m: s for m, s in stamps.items() if m != 7}
    assert c.count(cat.movies) == 4


def _full_rows(c: Catalog) -> dict:
    from sqlalchemy import select

    with c.engine.connect() as conn:
        return {r.movie_id: dict(r._mapping) for r in conn.execute(select(cat.movies))}


@pytest.mark.parametrize("stores", ENGINES, indirect=True)
def test_title_search_escapes_wildcards_and_ignores_injection(stores: Settings) -> None:
    c = Catalog.from_settings(stores)
    c.upsert_movies(ROWS)
    before = _snapshot(c)
    assert [r["movie_id"] for r in c.search_titles("pure", 10)] == [7, 99]
    assert [r["movie_id"] for r in c.search_titles("100%", 10)] == [7]
    assert [r["movie_id"] for r in c.search_titles("e_f", 10)] == [7]  # _ is a literal underscore
    assert [r["movie_id"] for r in c.search_titles("d'Amélie", 10)] == [42]
    assert len(c.search_titles("(", 2)) == 2
    for text in INJECTIONS:
        hits = [r["movie_id"] for r in c.search_titles(text, 10)]
        assert hits == ([7] if text in ("_", "%") else []), text
        assert c.movies_by_id([1]) and _snapshot(c) == before


@pytest.mark.parametrize("stores", ENGINES, indirect=True)
def test_registry_transitions(stores: Settings) -> None:
    c = Catalog.from_settings(stores)
    c.register("va", "candidate", metrics={"m": {"hr@10": 0.1}}, snapshot_id="s1")
    assert c.active() is None
    assert c.activate("va") is None
    c.register("va", "candidate", metrics={"m": {"hr@10": 0.2}})  # re-registering never demotes the live one
    row = c.version("va")
    assert row["status"] == "active" and row["metrics"] == {"m": {"hr@10": 0.2}} and row["snapshot_id"] == "s1"
    c.register("vb", "candidate", metrics={}, snapshot_id="s2")
    assert c.activate("vb", reason="replaced by vb") == "va"
    assert (c.version("va")["status"], c.version("va")["reason"]) == ("retired", "replaced by vb")
    assert [r["version"] for r in c.versions()] == ["vb", "va"]
    c.register("vc", "rejected", reason="quality_gate no_regression")
    assert c.version("vc")["status"] == "rejected" and [r["version"] for r in c.versions("retired")] == ["va"]
    with pytest.raises(LookupError):
        c.activate("nope")
    with pytest.raises(ValueError):
        c.register("vd", "active")
    assert c.active()["version"] == "vb"


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
