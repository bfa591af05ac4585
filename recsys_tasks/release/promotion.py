"""promote, rollback, status: what is served, and the only places that change it.

Serving a version = one atomic alias switch in Milvus, then the registry update. Both happen under one
lock (the catalog database's advisory lock, so across hosts), and the alias is the commit point: if a
process dies between the two, the next promote, rollback or reconcile finds the alias ahead of the
registry and completes the registry update (`reconcile`).

The promotion rules (monotonic): a candidate replaces the live model only if its data is at least as new
(`registry.recency`: the snapshot's newest rating, then the run date); a version that was served before
is never served again by a run. Otherwise the candidate stays a candidate with the reason, and the run
says so (it is not an error). `rollback` is the only way back to an older model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from recsys_tasks.artifacts import StepResult, load_result, read_json, run_step, write_json
from recsys_tasks.config import Settings
from recsys_tasks.errors import GateFailure, InputError
from recsys_tasks.logs import get_logger
from recsys_tasks.release.gate import judge, rejection
from recsys_tasks.release.registry import Registry, recency
from recsys_tasks.stores.catalog import Catalog
from recsys_tasks.stores.milvus import VectorStore, collection_name, version_of

log = get_logger(__name__)
PROMOTION_LOCK = "promotion"


class Release:
    """The two stores of one setting, and the lock that serialises every change of what is served."""

    def __init__(self, settings: Settings) -> None:
        self.store = VectorStore.from_settings(settings)
        self.catalog = Catalog.from_settings(settings)
        self.registry = Registry(self.catalog)

    def lock(self):  # -> context manager
        return self.catalog.locks().hold(PROMOTION_LOCK)

    def live_version(self) -> str | None:
        name = self.store.live_collection()
        return version_of(name) if name else None

    def servable(self, version: str) -> bool:
        name = collection_name(version)
        return self.store.exists(name) and self.store.is_complete(name, self.store.row_count(name))

    def reconcile(self) -> tuple[str, str | None] | None:
        """Bring the registry in line with the alias (the commit point); when it repaired anything, returns
        (the version the alias serves, now active; the version that was active, now retired)."""
        live, active = self.live_version(), self.registry.active()
        if live is None or (active and active["version"] == live) or self.registry.get(live) is None:
            return None
        log.warning("registry says %s is active but the alias serves %s: completing that switch",
                    active and active["version"], live)
        return live, self.registry.activate(live, "reconcile", reason=f"replaced by {live}")

    def serve(self, version: str, action: str, reason: str) -> str | None:
        """Alias first, then the registry (call under `lock`); returns the version it replaced."""
        name = collection_name(version)
        previous = self.live_version()
        if previous != version:
            self.store.ensure_loaded(name)
            self.store.point_alias(name)
        self.registry.activate(version, action, reason=reason)  # type: ignore[arg-type]
        return previous if previous != version else None

    def retain(self, keep: int) -> list[str]:
        """Drop collections no one can be served from again or beyond the newest `keep` retired and
        candidate ones; then the movie catalogs and user histories no kept version uses."""
        live = self.store.live_collection()
        existing = set(self.store.collections())
        rows = self.catalog.versions()
        retired = [collection_name(r["version"]) for r in sorted(
            (r for r in rows if r["status"] == "retired"), key=lambda r: r["retired_at"] or r["created_at"],
            reverse=True) if collection_name(r["version"]) in existing]
        candidates = [collection_name(r["version"]) for r in sorted(
            (r for r in rows if r["status"] == "candidate"), key=lambda r: r["created_at"], reverse=True)
            if collection_name(r["version"]) in existing]
        kept = {live, *retired[:keep], *candidates[:keep]}
        known = {collection_name(r["version"]) for r in rows}
        dropped = [n for n in sorted(existing - kept) if n in known]  # never a collection the registry lacks
        for name in dropped:
            self.store.drop(name)
        kept_rows = [r for r in rows if collection_name(r["version"]) in existing - set(dropped)]
        for catalog_id in set(self.catalog.catalogs()) - {r["catalog_id"] for r in kept_rows}:
            self.catalog.drop_catalog(catalog_id)
        for snapshot_id in set(self.catalog.history_snapshots()) - {r["snapshot_id"] for r in kept_rows}:
            self.catalog.drop_histories(snapshot_id)  # the user endpoints' histories of no kept version
        return dropped


def holdback(row: dict[str, Any], live: dict[str, Any] | None) -> str | None:
    """Why the promotion rules keep `row` from replacing `live`, or None when it may."""
    if row["promoted_at"] is not None:
        return (f"{row['version']} was served before (first promoted {row['promoted_at']}) and "
                f"was replaced; only `recsys rollback --to {row['version']}` serves it again")
    if live is not None and recency(row) < recency(live):
        return (f"{row['version']} has older data than the live {live['version']} (newest rating "
                f"{row['data_ts']} vs {live['data_ts']}, run date {_day(row)} vs {_day(live)}); "
                "only a rollback serves older data")
    return None


def _day(row: dict[str, Any]) -> str:
    return f"{row['run_date']:%Y-%m-%d}" if row.get("run_date") else "unknown"


def rejudged(settings: Settings, release: Release, gated: StepResult) -> str | None:
    """If another model went live after the quality gate judged this one, judge it again against that
    one (under the promotion lock); the reason it lost, or None."""
    decision = read_json(gated.out("decision.json"))
    live = release.registry.active()
    if live is None or live["version"] == (decision.get("champion") or {}).get("version"):
        return None
    inputs = gated.manifest["inputs"]
    processed, graph, evaluated = (load_result(settings.artifacts / step / inputs[step])
                                   for step in ("preprocess", "build_graph", "evaluate"))
    again = judge(settings, processed, graph, evaluated, release.registry)
    if again["passed"]:
        return None
    release.registry.reject(str(decision["model_version"]), rejection(again), "quality_gate")
    return rejection(again)


def promote(settings: Settings, gated: StepResult, loaded: StepResult) -> StepResult:
    """Serve the candidate if the promotion rules allow it. `moved` in the result says whether the alias
    switched in this run, or in an earlier attempt of this same promotion that died before its registry
    update, which this run completed (what the DAG's live-model Asset event follows)."""
    version, name = str(loaded.manifest["model_version"]), str(loaded.manifest["collection"])
    release = Release(settings)

    def build(tmp: Path) -> dict[str, Any]:
        with release.lock():
            before = release.registry.get(version)
            repair = release.reconcile()
            row = release.registry.get(version)
            if row is None:
                raise InputError(f"model version {version} is not in the registry (run load_catalog first)",
                                 rule="registered")
            if row["status"] == "rejected":
                raise GateFailure(f"model version {version} was rejected: {row['reason']}", rule="not_rejected")
            if not release.store.is_complete(name, int(loaded.manifest["counts"]["vectors"])):
                raise GateFailure(f"{name} is not complete; run load_vectors again", rule="collection_complete")
            previous, dropped, moved = None, [], False
            if repair and repair[0] == version and before and before["status"] == "candidate":
                # this version's own promotion died between its alias switch and the registry update: the
                # repair completed it, so this promote (its retry) is the one that put the version live
                held, previous, moved = None, repair[1], True
                dropped = release.retain(settings.keep_versions)
            elif row["status"] == "active" and release.live_version() == version:
                held = "already live"
            else:
                held = None if row["status"] == "active" else holdback(row, release.registry.active())
                if held:
                    log.info("promote: %s stays a candidate: %s", version, held)
                    if row["status"] == "candidate":
                        release.registry.note(version, held)
                else:
                    held = rejudged(settings, release, gated)
                if not held:
                    previous = release.serve(version, "promote", reason=f"replaced by {version}")
                    moved, dropped = True, release.retain(settings.keep_versions)
        outcome = {"live": release.live_version(), "moved": moved, "previous": previous, "held_back": held,
                   "dropped": dropped, "repaired": repair and repair[0]}
        write_json(tmp / "promotion.json", outcome)
        return {"model_version": version, "collection": name, **outcome}

    def in_sync() -> bool:
        """Nothing to do: the registry agrees with the alias, and this version is live or was served before
        (a re-run of an old date changes nothing)."""
        row, active = release.registry.get(version) or {}, release.registry.active()
        if release.live_version() != (active or {}).get("version"):
            return False  # an interrupted switch to complete
        return row.get("status") == "active" or row.get("promoted_at") is not None

    return run_step(settings.artifacts, "promote", inputs={"quality_gate": gated.key, "load_vectors": loaded.key},
                    params={"keep_versions": settings.keep_versions}, build=build, force=settings.force,
                    in_sync=in_sync)


def moved(result: StepResult) -> bool:
    """Whether this run of promote switched what is served (a skipped step switched nothing)."""
    return not result.skipped and bool(result.manifest.get("moved"))


def outcome(settings: Settings, result: StepResult) -> dict[str, Any]:
    """What a run's promote did, for people: moved or not, what is live now, and why it stayed."""
    why = "decided by an earlier run" if result.skipped else result.manifest.get("held_back")
    return {"moved": moved(result), "live": Release(settings).live_version(), "held_back": None if moved(result) else why}


def status(settings: Settings) -> dict[str, Any]:
    release = Release(settings)
    live = release.store.live_collection()
    registry = {r["version"]: r for r in release.catalog.versions()}
    row = registry.get(version_of(live)) if live else None
    active = next((v for v, r in registry.items() if r["status"] == "active"), None)
    by_status: dict[str, int] = {}
    for r in registry.values():
        by_status[r["status"]] = by_status.get(r["status"], 0) + 1
    return {
        "live": None if live is None else {
            "model_version": version_of(live), "collection": live,
            "status": row and row["status"], "metrics": row and row["metrics"],
            "snapshot_id": row and row["snapshot_id"], "catalog_id": row and row["catalog_id"],
            "promoted_at": row and row["promoted_at"]},
        "registry_agrees": active == (version_of(live) if live else None),
        "collections": [{"name": n, "model_version": version_of(n), "rows": release.store.row_count(n),
                         "live": n == live, "status": (registry.get(version_of(n)) or {}).get("status")}
                        for n in release.store.collections()],
        "counts": {"movies": release.catalog.catalog_size(row["catalog_id"]) if row else 0,
                   "vectors": release.store.row_count(live) if live else 0, "versions": by_status},
    }


def rollback(settings: Settings, to: str | None = None) -> dict[str, Any]:
    """Serve an earlier version again: `to`, or the most recently retired one whose collection is intact."""
    release = Release(settings)
    with release.lock():
        release.reconcile()
        live = release.live_version()
        if to is None:
            retired = sorted(release.catalog.versions("retired"), key=lambda r: r["retired_at"] or r["created_at"],
                             reverse=True)
            targets = [r["version"] for r in retired if release.servable(r["version"])]
            if not targets:
                raise InputError("no retired model version with an intact collection to roll back to",
                                 rule="rollback target")
            to = targets[0]
        row = release.registry.get(to)
        if row is None:
            raise InputError(f"model version {to} is not in the registry", rule="registered")
        if row["status"] not in ("retired", "active"):
            raise InputError(f"model version {to} is {row['status']}"
                             + (f" ({row['reason']})" if row["reason"] else "")
                             + ": only a version that was served can be rolled back to", rule="was served")
        if not release.servable(to):
            raise InputError(f"collection {collection_name(to)} is gone or incomplete; reload it with the pipeline",
                             rule="collection kept")
        release.serve(to, "rollback", reason=f"rolled back to {to}")
    return {"model_version": to, "collection": collection_name(to), "previous": live, "changed": live != to}
