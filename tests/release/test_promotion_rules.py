"""The promotion rules on real stores, with model versions in the artifact contract formats:
backfill re-runs of older dates, corrected titles, rollback, a crash between alias switch and
registry update (of a version served before, and of a never-served candidate's first promotion), store
addresses spelled another way, force, retention, smoke-test retries."""

from __future__ import annotations

import pytest

from recsys_tasks import pipeline
from recsys_tasks.artifacts import StepResult
from recsys_tasks.config import Settings
from recsys_tasks.errors import GateFailure, InputError
from recsys_tasks.release import smoke
from recsys_tasks.release.promotion import Release, moved, rollback, status
from recsys_tasks.release.registry import Registry
from recsys_tasks.serving.recommend import recommend_similar
from recsys_tasks.stores.catalog import Catalog
from recsys_tasks.stores.milvus import SOURCE, VectorStore, collection_name
from tests.fixtures_stores import Release as Version
from tests.fixtures_stores import gate, make_release, make_settings, ship, write_processed

FLOWS = [pytest.param(("lite", "sqlite"), id="lite-sqlite"),
         pytest.param(("server", "mariadb"), id="server-mariadb", marks=pytest.mark.mysql)]
MOVIE = 20  # row index of the movie whose title gets corrected


def _dated(settings: Settings, day: str, tag: str, newest: int, title: str | None = None) -> tuple[Settings, Version]:
    """A model version trained on the snapshot of date `day` (run settings for that date)."""
    dated = settings.replace(run_date=day)
    processed = write_processed(dated, tag=tag, newest=newest, titles={MOVIE: title} if title else None)
    return dated, make_release(dated, f"{tag}-{title}", processed=processed)


def _served(settings: Settings, release: Version) -> tuple[str, str]:
    """(live version, title of MOVIE shown next to a recommendation for its neighbour)."""
    neighbour = int(release.brute_force(release.vectors[MOVIE], 1, exclude={int(release.ids[MOVIE])})[0])
    items = recommend_similar(settings, neighbour, 50)["items"]
    title = next(i["title"] for i in items if i["movie_id"] == int(release.ids[MOVIE]))
    return recommend_similar(settings, neighbour, 1)["model_version"], title


def _agree(settings: Settings) -> None:
    st = status(settings)
    assert st["registry_agrees"], st


@pytest.mark.parametrize("stores", FLOWS, indirect=True)
def test_a_backfill_rerun_of_an_older_date_never_replaces_the_newer_model(stores: Settings) -> None:
    s1, d1 = _dated(stores, "2026-11-01", "d1", newest=1_000, title="Old Title (1990)")
    s2, d2 = _dated(stores, "2026-11-08", "d2", newest=2_000, title="Newer Title (1990)")
    assert moved(ship(s1, d1)["promote"])
    assert moved(ship(s2, d2)["promote"])
    assert _served(stores, d2) == (d2.version, "Newer Title (1990)")

    # re-run Nov 1 after its snapshot got one corrected title: a new model on older data
    s1b, d1b = _dated(stores, "2026-11-01", "d1", newest=1_000, title="Corrected Old Title (1990)")
    steps = ship(s1b, d1b)
    assert not moved(steps["promote"]) and "older data" in steps["promote"].manifest["held_back"]
    assert _served(stores, d2) == (d2.version, "Newer Title (1990)")  # D2 stays live with D2's titles
    registry = Registry(Catalog.from_settings(stores))
    assert registry.active()["version"] == d2.version
    assert registry.get(d1b.version)["status"] == "candidate" and "older data" in registry.get(d1b.version)["reason"]
    assert registry.get(d1.version)["status"] == "retired"
    _agree(stores)

    assert rollback(stores)["model_version"] == d1.version  # the only way back: D1 with D1's own titles
    assert _served(stores, d1) == (d1.version, "Old Title (1990)")
    again = ship(s2, d2)  # re-run Nov 8: D2 was served and replaced by a rollback; a run never re-serves it
    assert not moved(again["promote"]) and _served(stores, d1)[0] == d1.version
    _agree(stores)

    _, d3 = _dated(stores, "2026-11-15", "d3", newest=3_000)  # the next new snapshot is promoted as usual
    assert moved(ship(stores.replace(run_date="2026-11-15"), d3)["promote"])
    assert status(stores)["live"]["model_version"] == d3.version
    _agree(stores)


def test_equal_data_is_ordered_by_run_date(stores: Settings) -> None:
    s8, newer = _dated(stores, "2026-11-08", "d8", newest=1_000, title="Fixed on Nov 8 (1990)")
    ship(s8, newer)
    s1, older = _dated(stores, "2026-11-01", "d1", newest=1_000, title="Re-run of Nov 1 (1990)")
    held = ship(s1, older)["promote"]
    assert not moved(held) and "run date 2026-11-01 vs 2026-11-08" in held.manifest["held_back"]
    assert status(stores)["live"]["model_version"] == newer.version


@pytest.mark.parametrize("stores", FLOWS, indirect=True)
def test_a_crash_between_alias_switch_and_registry_update_is_completed(stores: Settings) -> None:
    v1 = make_release(stores, "one")
    ship(stores, v1)
    v2 = make_release(stores, "two", processed=v1.processed)
    steps = ship(stores, v2)
    # what a promote killed after its alias switch leaves: the alias serves v2, the registry says v1
    registry = Registry(Catalog.from_settings(stores))
    store = VectorStore.from_settings(stores)
    store.point_alias(collection_name(v1.version))
    registry.activate(v1.version, "rollback", "test setup: registry and alias on v1")
    store.point_alias(collection_name(v2.version))  # the crash: alias switched, registry not updated
    assert not status(stores)["registry_agrees"]
    assert recommend_similar(stores, int(v2.ids[3]), 3)["model_version"] == v2.version  # serving follows the alias

    back = rollback(stores)  # completes the interrupted switch first, then rolls back from v2
    assert back == {"model_version": v1.version, "collection": collection_name(v1.version),
                    "previous": v2.version, "changed": True}
    _agree(stores)
    # and a promote re-run repairs the same crash by itself
    store.point_alias(collection_name(v2.version))
    pipeline.promote(stores.replace(force=True), steps["quality_gate"], steps["load_vectors"])
    assert Release(stores).registry.active()["version"] == v2.version
    _agree(stores)


def test_the_same_server_spelled_another_way_changes_nothing(milvus_server: str, tmp_path) -> None:
    from tests.fixtures_stores import server_database

    uri, cleanup = server_database(milvus_server)
    try:
        settings, cleanups = make_settings(tmp_path / "home", "lite", "sqlite", None)
        by_ip = settings.replace(milvus_uri=uri)
        by_name = settings.replace(milvus_uri=uri.replace("127.0.0.1", "localhost"))
        old = make_release(by_ip, "old", processed=write_processed(by_ip, tag="old", newest=1_000))
        new = make_release(by_ip, "new", processed=write_processed(by_ip, tag="new", newest=2_000))
        ship(by_ip, old)
        ship(by_ip, new)
        again = ship(by_name, old)  # the old snapshot again, the server named by host name
        assert again["load_vectors"].skipped and again["load_catalog"].skipped and again["promote"].skipped
        assert status(by_name)["live"]["model_version"] == new.version
        for c in cleanups:
            c()
    finally:
        from recsys_tasks.stores import milvus

        milvus.release(uri.replace("127.0.0.1", "localhost"))
        cleanup()


def test_force_reloads_the_vectors_of_a_collection_not_served(stores: Settings) -> None:
    v1 = make_release(stores, "one")
    ship(stores, v1)
    v2 = make_release(stores, "two", processed=v1.processed)
    loaded = pipeline.load_vectors(stores, v2.exported, v2.processed)
    store = VectorStore.from_settings(stores)
    name = collection_name(v2.version)
    store.client.alter_collection_properties(name, {SOURCE: "tampered"})
    forced = pipeline.load_vectors(stores.replace(force=True), v2.exported, v2.processed)
    assert not forced.skipped and forced.path == loaded.path
    assert store.properties(name)[SOURCE] == v2.exported.key and store.is_complete(name, 300)
    live = pipeline.load_vectors(stores.replace(force=True), v1.exported, v1.processed)  # the live one: verified
    assert not live.skipped and store.live_collection() == collection_name(v1.version)


def test_retention_drops_stale_candidates_and_unused_catalogs(stores: Settings) -> None:
    settings = stores.replace(keep_versions=1)
    live = make_release(settings, "live", processed=write_processed(settings, tag="live", newest=5_000))
    ship(settings, live)
    stale = [make_release(settings, f"stale{i}", processed=write_processed(settings, tag=f"s{i}", newest=1_000 + i))
             for i in range(3)]
    for release in stale:  # older data: loaded, smoke-tested, held back as candidates
        assert not moved(ship(settings, release)["promote"])
    newer = make_release(settings, "newer", processed=write_processed(settings, tag="newer", newest=6_000))
    steps = ship(settings, newer)
    kept = set(VectorStore.from_settings(settings).collections())
    assert kept == {collection_name(v) for v in (newer.version, live.version, stale[2].version)}
    assert set(steps["promote"].manifest["dropped"]) == {collection_name(r.version) for r in stale[:2]}
    catalog = Catalog.from_settings(settings)
    in_use = {catalog.version(v)["catalog_id"] for v in (newer.version, live.version, stale[2].version)}
    assert set(catalog.catalogs()) == in_use


def test_a_model_without_its_rule_is_not_loaded(stores: Settings) -> None:
    release = make_release(stores, "norule")
    (stores.artifacts / "train" / release.evaluated.manifest["inputs"]["train"] / "rule.json").unlink()
    with pytest.raises(InputError, match="rule.json"):
        pipeline.load_catalog(stores, release.processed, release.evaluated)


def test_the_smoke_test_asks_again_before_it_rejects(stores: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    v1 = make_release(stores, "one")
    checks, calls = smoke.checks, []

    def flaky(*args, **kwargs):  # the first reading is incomplete (an index still loading, say)
        calls.append(1)
        return ["movies_x is not complete (verified, 300 rows, index built)"] if len(calls) == 1 else checks(*args, **kwargs)

    monkeypatch.setattr(smoke, "checks", flaky)
    steps = ship(stores, v1)
    assert len(calls) == 2 and moved(steps["promote"])
    assert Registry(Catalog.from_settings(stores)).get(v1.version)["status"] == "active"


def test_the_smoke_test_evaluates_the_served_path(stores: Settings) -> None:
    good = make_release(stores, "good", truth=True)
    path = ship(stores, good)["smoke_test"].manifest["served_path"]
    assert path["users"] == 60 and path["recall@10"] >= smoke.MIN_RECALL
    assert path["served_hr@10"] == path["exact_hr@10"] > 0.5  # the truth vectors find most test movies

    drifted = make_release(stores, "drifted", processed=good.processed, hr=0.95)
    loaded = pipeline.load_vectors(stores, drifted.exported, drifted.processed)
    store = VectorStore.from_settings(stores)
    name = collection_name(drifted.version)
    # the store now answers with other vectors for most movies than the ones evaluated (a botched reload)
    rows = [{"movie_id": int(m), "vector": (-v).tolist(), "year": None, "genre_mask": 0}
            for m, v in zip(drifted.ids[20:], drifted.vectors[20:])]
    store.client.upsert(name, rows)
    store.client.flush(name)
    pipeline.load_catalog(stores, drifted.processed, drifted.evaluated)
    with pytest.raises(GateFailure) as failure:
        pipeline.smoke_test(stores, loaded, drifted.exported, drifted.processed, drifted.graph)
    assert failure.value.rule == "smoke_test" and "recall@10" in str(failure.value)
    assert Registry(Catalog.from_settings(stores)).get(drifted.version)["status"] == "rejected"
    assert status(stores)["live"]["model_version"] == good.version


class Killed(BaseException):
    """The process dies here (not an error anything would catch)."""


def _killed_after_the_alias_switch(stores: Settings, monkeypatch: pytest.MonkeyPatch
                                   ) -> tuple[Version, Version, dict[str, StepResult]]:
    """v1 live; v2, newer and never served, passes every gate; its promote switches the alias to v2 and
    the process dies before the registry update. Returns (v1, v2, v2's steps but promote)."""
    v1 = make_release(stores, "one", processed=write_processed(stores, tag="one", newest=1_000))
    first = ship(stores, v1)["promote"]
    assert moved(first)
    v2 = make_release(stores, "two", processed=write_processed(stores, tag="two", newest=2_000))
    steps = {"quality_gate": gate(stores, v2)}
    steps["load_vectors"] = pipeline.load_vectors(stores, v2.exported, v2.processed)
    steps["load_catalog"] = pipeline.load_catalog(stores, v2.processed, v2.evaluated)
    steps["smoke_test"] = pipeline.smoke_test(stores, steps["load_vectors"], v2.exported, v2.processed, v2.graph)
    activate = Registry.activate

    def dies_when_promoting(self: Registry, version: str, action: str, reason: str) -> str | None:
        if action == "promote":
            raise Killed
        return activate(self, version, action, reason)  # type: ignore[arg-type]

    with monkeypatch.context() as m, pytest.raises(Killed):
        m.setattr(Registry, "activate", dies_when_promoting)
        pipeline.promote(stores, steps["quality_gate"], steps["load_vectors"])
    assert [p.name for p in (stores.artifacts / "promote").iterdir()] == [first.key]  # v2's promote never finished
    # what it leaves: the alias serves v2, the registry says v1 is active and v2 a candidate never served
    registry = Registry(Catalog.from_settings(stores))
    assert registry.active()["version"] == v1.version
    assert registry.get(v2.version)["status"] == "candidate" and registry.get(v2.version)["promoted_at"] is None
    assert recommend_similar(stores, int(v2.ids[3]), 3)["model_version"] == v2.version  # serving follows the alias
    st = status(stores)  # status only reports it (it changes nothing)
    assert not st["registry_agrees"] and st["live"]["model_version"] == v2.version
    assert st["live"]["status"] == "candidate"
    return v1, v2, steps


def _completed(stores: Settings, v1: Version, v2: Version) -> None:
    """The registry caught up with the alias: v2 active and first promoted, v1 retired by that switch."""
    registry = Registry(Catalog.from_settings(stores))
    one, two = registry.get(v1.version), registry.get(v2.version)
    assert two["status"] == "active" and two["promoted_at"] is not None and two["activated_at"] is not None
    assert one["status"] == "retired" and one["retired_at"] is not None and one["reason"] == f"replaced by {v2.version}"
    _agree(stores)


@pytest.mark.parametrize("stores", FLOWS, indirect=True)
def test_an_interrupted_promotion_is_completed_by_the_next_promote(stores: Settings,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    v1, v2, steps = _killed_after_the_alias_switch(stores, monkeypatch)
    again = pipeline.promote(stores, steps["quality_gate"], steps["load_vectors"])  # the task's retry
    _completed(stores, v1, v2)
    assert again.manifest["repaired"] == v2.version and again.manifest["live"] == v2.version
    assert moved(again) and again.manifest["previous"] == v1.version  # v2 went live with this promote
    assert status(stores)["live"]["status"] == "active"
    assert pipeline.promote(stores, steps["quality_gate"], steps["load_vectors"]).skipped  # and now it is done


def test_an_interrupted_promotion_is_completed_before_a_rollback(stores: Settings,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    v1, v2, steps = _killed_after_the_alias_switch(stores, monkeypatch)
    back = rollback(stores)  # completes the switch to v2 first, then rolls back from v2 to v1
    assert back == {"model_version": v1.version, "collection": collection_name(v1.version),
                    "previous": v2.version, "changed": True}
    registry = Registry(Catalog.from_settings(stores))
    assert registry.active()["version"] == v1.version
    assert registry.get(v2.version)["status"] == "retired" and registry.get(v2.version)["promoted_at"] is not None
    _agree(stores)
    # v2 was served (by the alias) before the rollback: its promote's retry never serves it again
    held = pipeline.promote(stores, steps["quality_gate"], steps["load_vectors"])
    assert not moved(held) and status(stores)["live"]["model_version"] == v1.version
    _agree(stores)


def test_an_interrupted_promotion_is_completed_by_the_next_run(stores: Settings,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    v1, v2, _ = _killed_after_the_alias_switch(stores, monkeypatch)
    v3 = make_release(stores, "three", processed=write_processed(stores, tag="three", newest=3_000))
    promoted = ship(stores, v3)["promote"]
    assert moved(promoted) and promoted.manifest["repaired"] == v2.version
    assert promoted.manifest["previous"] == v2.version  # v3 replaced what was served: v2, not v1
    registry = Registry(Catalog.from_settings(stores))
    assert registry.active()["version"] == v3.version
    two = registry.get(v2.version)
    assert two["status"] == "retired" and two["promoted_at"] is not None
    assert registry.get(v1.version)["status"] == "retired"
    _agree(stores)
