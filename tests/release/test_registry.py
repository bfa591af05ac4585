"""The registry's state machine on SQLite and MariaDB: legal moves, refused moves, promoted_at set once."""

from __future__ import annotations

from datetime import date

import pytest

from recsys_tasks.config import Settings
from recsys_tasks.release.registry import IllegalTransition, Registry, check, recency
from recsys_tasks.stores.catalog import Catalog, StaleState

ENGINES = [pytest.param(("lite", "sqlite"), id="sqlite"),
           pytest.param(("lite", "mariadb"), id="mariadb", marks=pytest.mark.mysql)]


def _register(registry: Registry, version: str, data_ts: int = 100, day: int = 1) -> dict:
    return registry.register(version, snapshot_id=f"s-{version}", catalog_id=f"c-{version}", data_ts=data_ts,
                             run_date=date(2026, 11, day), metrics={"m": 1}, rule={"name": "history"})


@pytest.mark.parametrize("stores", ENGINES, indirect=True)
def test_the_lifecycle_and_its_refusals(stores: Settings) -> None:
    registry = Registry(Catalog.from_settings(stores))
    row = _register(registry, "v1")
    assert row["status"] == "candidate" and row["promoted_at"] is None and registry.active() is None
    assert _register(registry, "v1", data_ts=999)["data_ts"] == 100  # facts are set once
    with pytest.raises(IllegalTransition):
        registry.activate("v1", "rollback", "a candidate was never served")
    assert registry.activate("v1", "promote", "first") is None
    first = registry.get("v1")
    assert first["status"] == "active" and first["promoted_at"] == first["activated_at"]

    _register(registry, "v2", data_ts=200, day=2)
    assert registry.activate("v2", "promote", "replaced by v2") == "v1"
    retired = registry.get("v1")
    assert retired["status"] == "retired" and retired["reason"] == "replaced by v2" and retired["retired_at"]
    with pytest.raises(IllegalTransition):  # a run never serves a retired version again
        registry.activate("v1", "promote", "backfill re-run")
    assert registry.activate("v1", "rollback", "rolled back to v1") == "v2"
    back = registry.get("v1")
    assert back["status"] == "active" and back["promoted_at"] == first["promoted_at"]  # never reset
    assert back["activated_at"] > first["activated_at"]

    _register(registry, "v3")
    registry.reject("v3", "quality_gate beats_baselines: …", "quality_gate")
    registry.reject("v3", "smoke_test: a later reason", "smoke_test")  # the first reason stands
    assert (registry.get("v3")["status"], registry.get("v3")["reason"]) == ("rejected", "quality_gate beats_baselines: …")
    for action in ("promote", "rollback"):
        with pytest.raises(IllegalTransition):
            registry.activate("v3", action, "rejected stays rejected")
    with pytest.raises(IllegalTransition):
        registry.reject("v1", "the live model", "smoke_test")
    with pytest.raises(LookupError):
        registry.activate("nope", "promote", "")


@pytest.mark.parametrize("stores", ENGINES, indirect=True)
def test_a_concurrent_change_is_detected_not_overwritten(stores: Settings) -> None:
    catalog = Catalog.from_settings(stores)
    registry = Registry(catalog)
    _register(registry, "v1")
    _register(registry, "v2")
    stale = Registry(catalog)
    stale.active = lambda: None  # type: ignore[method-assign]  # it read the registry before v1 went live
    registry.activate("v1", "promote", "first")
    with pytest.raises(StaleState):  # it would make v2 active beside v1: nothing is written
        stale.activate("v2", "promote", "v2")
    assert [r["version"] for r in catalog.versions("active")] == ["v1"]
    assert registry.get("v2")["status"] == "candidate"
    with pytest.raises(StaleState):  # v1 is no longer a candidate
        catalog.update_versions([("v1", ("candidate",), {"status": "retired"})])
    registry.activate("v2", "promote", "v2")
    assert [r["version"] for r in catalog.versions("active")] == ["v2"]


def test_check_and_recency() -> None:
    check("candidate", "active", "promote")
    with pytest.raises(IllegalTransition, match="retired -> active"):
        check("retired", "active", "promote")
    older, newer = {"data_ts": 10, "run_date": None}, {"data_ts": 10, "run_date": __import__("datetime").datetime(2026, 1, 2)}
    assert recency(older) < recency(newer) < recency({"data_ts": 11, "run_date": None})
    assert recency(None) < recency(older)
