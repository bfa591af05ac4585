"""The store steps: quality gate, vector and catalog loads, smoke test, promotion, status and rollback.

These steps change external stores, so whether one is done is judged by the store, not only by its
artifact folder: a wiped Milvus or catalog is reloaded even when the folder exists. What is served
changes only in `promote` and `rollback` (one alias switch plus a registry update, both retry-safe).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from recsys_tasks.artifacts import (
    MANIFEST,
    StepResult,
    load_result,
    read_json,
    run_step,
    step_key,
    write_json,
)
from recsys_tasks.config import Settings
from recsys_tasks.errors import GateFailure, InputError
from recsys_tasks.logs import get_logger, progress
from recsys_tasks.model.rules import DEFAULT_RULE
from recsys_tasks.stores.catalog import Catalog, movies
from recsys_tasks.stores.milvus import HNSW, VectorStore, collection_name, version_of

log = get_logger(__name__)

SERVED = "pinsage_history"
BASELINES = ("popularity", "itemknn")
BATCH = 1000
VERIFY_SAMPLE = 20
SMOKE_SAMPLE = 5


def _store_step(settings: Settings, step: str, *, inputs: dict[str, Any], params: dict[str, Any],
                in_sync: Callable[[], bool], build: Callable[[Path], dict[str, Any]]) -> StepResult:
    """run_step, skipped only when the folder exists AND the store already holds what it records."""
    key = step_key(step, inputs, params, module=__name__)
    final = settings.artifacts / step / key
    if (not settings.force and (final / MANIFEST).is_file()
            and read_json(final / MANIFEST).get("status") == "done" and in_sync()):
        log.info("%s: skipped, the store already holds %s", step, key)
        return load_result(final)
    return run_step(settings.artifacts, step, inputs=inputs, params=params, build=build, force=True, key=key)


def _failed_report(settings: Settings, step: str, inputs: dict[str, Any], params: dict[str, Any],
                   name: str) -> Path:
    """Where a report will be once run_step keeps a failed step's folder as `<key>.failed`."""
    return settings.artifacts / step / f"{step_key(step, inputs, params, module=__name__)}.failed" / name


def _snapshot_id(*results: StepResult) -> str | None:
    for r in results:
        if r.manifest.get("snapshot_id"):
            return str(r.manifest["snapshot_id"])
    for r in results:  # the ingest folder is named by the snapshot id
        if r.manifest.get("inputs", {}).get("ingest"):
            return str(r.manifest["inputs"]["ingest"])
    return None


def _rule_params(settings: Settings, evaluated: StepResult) -> dict[str, Any]:
    """The served history rule's parameters: from evaluate's manifest or folder, else train's rule.json."""
    if isinstance(evaluated.manifest.get("rule"), dict):
        return dict(evaluated.manifest["rule"])
    train_key = evaluated.manifest.get("inputs", {}).get("train")
    for path in (evaluated.out("rule.json"), train_key and settings.artifacts / "train" / train_key / "rule.json"):
        if path and Path(path).is_file():
            return dict(read_json(Path(path)))
    log.warning("no rule.json found for %s; serving the default history rule", evaluated.path)
    return dict(DEFAULT_RULE)


# --- quality gate ------------------------------------------------------------------------------
def decide(version: str, metrics: dict[str, Any], active: dict[str, Any] | None, margin: float) -> dict[str, Any]:
    """The promotion rule on test hr@10, as a JSON-able decision."""
    hr = {m: (metrics.get(m) or {}).get("hr@10") for m in (SERVED, *BASELINES)}
    live_hr = ((active or {}).get("metrics") or {}).get(SERVED, {}).get("hr@10")
    decision: dict[str, Any] = {"model_version": version, "hr@10": hr, "quality_margin": margin,
                                "active_version": (active or {}).get("version"), "active_hr@10": live_hr,
                                "passed": True, "rule": None, "message": "promotable"}

    def fail(rule: str, message: str) -> dict[str, Any]:
        return {**decision, "passed": False, "rule": rule, "message": message}

    missing = sorted(m for m, v in hr.items() if v is None)
    if missing:
        return fail("metrics_present", f"evaluation has no test hr@10 for {', '.join(missing)}")
    for base in BASELINES:
        if not hr[SERVED] > hr[base]:
            return fail("beats_baselines", f"{SERVED} hr@10 {hr[SERVED]:.4f} does not beat {base} {hr[base]:.4f}")
    if active and active["version"] != version and live_hr is not None and hr[SERVED] < live_hr - margin:
        return fail("no_regression", f"{SERVED} hr@10 {hr[SERVED]:.4f} is more than {margin} below the live "
                                     f"model {active['version']} ({live_hr:.4f})")
    return decision


def quality_gate(settings: Settings, evaluated: StepResult) -> StepResult:
    """Decide once per evaluated model whether it may be promoted; a passed decision stands on re-runs.

    The live model's figures are part of the decision, not of the step's key: otherwise re-running a
    date that was already promoted (a backfill re-run, say) would judge the model against itself or
    its successors and change the registry.
    """
    version = str(evaluated.manifest["model_version"])
    metrics = dict(evaluated.manifest["metrics"])
    inputs = {"evaluate": evaluated.key}
    params = {"quality_margin": settings.quality_margin}
    final = settings.artifacts / "quality_gate" / step_key("quality_gate", inputs, params, module=__name__)
    if not settings.force and (final / MANIFEST).is_file():
        log.info("quality_gate: %s was already judged promotable (%s)", version, final / "decision.json")
        return load_result(final)
    catalog = Catalog.from_settings(settings)
    active = catalog.active()
    decision = decide(version, metrics, active, settings.quality_margin)
    if decision["passed"]:
        catalog.register(version, "candidate", metrics={**metrics, "rule": _rule_params(settings, evaluated)},
                         snapshot_id=_snapshot_id(evaluated))
    else:
        catalog.register(version, "rejected", metrics=metrics, snapshot_id=_snapshot_id(evaluated),
                         reason=f"quality_gate {decision['rule']}: {decision['message']}")

    def build(tmp: Path) -> dict[str, Any]:
        write_json(tmp / "decision.json", decision)
        if not decision["passed"]:
            live = f"{decision['active_version']} stays live" if active else "nothing is live yet"
            raise GateFailure(f"quality gate: {decision['message']}; {live}", rule=decision["rule"],
                              file=evaluated.path / MANIFEST,
                              report=_failed_report(settings, "quality_gate", inputs, params, "decision.json"))
        return {"model_version": version, "decision": decision}

    return run_step(settings.artifacts, "quality_gate", inputs=inputs, params=params, build=build, force=True,
                    key=final.name)


# --- load_vectors ------------------------------------------------------------------------------
def _read_embeddings(exported: StepResult) -> tuple[np.ndarray, np.ndarray]:
    path = exported.out("embeddings.parquet")
    table = pq.read_table(path, columns=["movie_id", "vector"])
    ids = table["movie_id"].to_numpy().astype(np.int64)
    dim = int(exported.manifest["dim"])
    flat = table["vector"].combine_chunks().flatten().to_numpy(zero_copy_only=False).astype(np.float32)
    if flat.size != ids.size * dim:
        raise InputError(f"vectors do not all have dim {dim}", file=path, rule="fixed dim")
    if np.unique(ids).size != ids.size:
        raise InputError("movie_id is not unique", file=path, rule="unique movie_id")
    return ids, flat.reshape(ids.size, dim)


def _scalar_fields(processed: StepResult) -> dict[int, tuple[int | None, int]]:
    """{movie_id: (year, genre bitmask over vocab.json genres)} for the collection's scalar fields."""
    genres = read_json(processed.out("vocab.json"))["genres"]
    if len(genres) > 63:
        raise InputError(f"{len(genres)} genres do not fit an int64 bitmask", file=processed.out("vocab.json"),
                         rule="at most 63 genres")
    table = pq.read_table(processed.out("movies.parquet"), columns=["movie_id", "year", "genre_ids"]).to_pylist()
    return {int(r["movie_id"]): (r["year"], sum(1 << int(g) for g in (r["genre_ids"] or []))) for r in table}


def _verify(store: VectorStore, name: str, ids: np.ndarray, vectors: np.ndarray) -> list[str]:
    """Problems with a freshly loaded collection: row count, stored vectors, self-search."""
    problems = []
    if (rows := store.row_count(name)) != ids.size:
        problems.append(f"{rows} rows in {name}, expected {ids.size}")
    sample = np.unique(np.linspace(0, ids.size - 1, min(VERIFY_SAMPLE, ids.size)).astype(int))
    stored = store.vectors(name, ids[sample])
    for i in sample:
        if ids[i] not in stored or not np.allclose(stored[ids[i]], vectors[i], atol=1e-6):
            problems.append(f"movie {ids[i]}: stored vector missing or different")
    for i, hits in zip(sample, store.search(name, vectors[sample], min(10, ids.size))):
        own = [h.score for h in hits if h.movie_id == ids[i]]
        # identical vectors tie: itself must be there with the best score
        if not own or own[0] < hits[0].score - 1e-5:
            problems.append(f"movie {ids[i]}: self-search top hit is {hits[0].movie_id if hits else None}")
    return problems


def load_vectors(settings: Settings, exported: StepResult, processed: StepResult) -> StepResult:
    version = str(exported.manifest["model_version"])
    name = collection_name(version)
    metric = str(exported.manifest.get("metric", "IP"))
    store = VectorStore.from_settings(settings)
    ids, vectors = _read_embeddings(exported)

    def build(tmp: Path) -> dict[str, Any]:
        reloaded = not store.is_complete(name, ids.size)
        if reloaded:
            if store.exists(name):
                log.warning("load_vectors: %s exists but is incomplete; dropping and rebuilding it", name)
                store.drop(name)  # refuses the live collection
            scalars = _scalar_fields(processed)
            store.create(name, vectors.shape[1], source=exported.key)
            starts = range(0, ids.size, BATCH)
            for start in progress(starts, desc=f"load {name}", total=len(starts), unit="batch"):
                store.insert(name, [{"movie_id": int(m), "vector": v.tolist(),
                                     "year": scalars.get(int(m), (None, 0))[0],
                                     "genre_mask": scalars.get(int(m), (None, 0))[1]}
                                    for m, v in zip(ids[start:start + BATCH], vectors[start:start + BATCH])])
            store.finish(name, metric)
            problems = _verify(store, name, ids, vectors)
            if problems:
                write_json(tmp / "verify.json", {"collection": name, "problems": problems})
                raise GateFailure(f"load_vectors: {name} failed verification: {problems[0]}", rule="self_search",
                                  report=_failed_report(settings, "load_vectors", inputs, params, "verify.json"))
            store.mark_verified(name)
        store.ensure_loaded(name)
        write_json(tmp / "load.json", {"collection": name, "reloaded": reloaded, "rows": int(ids.size)})
        return {"model_version": version, "collection": name, "dim": int(vectors.shape[1]), "metric": metric,
                "counts": {"vectors": int(ids.size)}}

    inputs = {"export_embeddings": exported.key, "preprocess": processed.key}
    params = {"index": "HNSW", **HNSW, "uri": settings.public()["milvus_uri"]}
    return _store_step(settings, "load_vectors", inputs=inputs, params=params,
                       in_sync=lambda: store.is_complete(name, ids.size), build=build)


# --- load_catalog ------------------------------------------------------------------------------
def load_catalog(settings: Settings, processed: StepResult, evaluated: StepResult) -> StepResult:
    version = str(evaluated.manifest["model_version"])
    metrics = {**evaluated.manifest["metrics"], "rule": _rule_params(settings, evaluated)}
    snapshot = _snapshot_id(processed, evaluated)
    catalog = Catalog.from_settings(settings)
    rows = [{"movie_id": int(r["movie_id"]), "title": r["title"], "year": r["year"], "genres": r["genres"] or ""}
            for r in pq.read_table(processed.out("movies.parquet"),
                                   columns=["movie_id", "title", "year", "genres"]).to_pylist()]

    def registered() -> bool:
        row = catalog.version(version)
        return row is not None and row["metrics"] == metrics and (snapshot is None or row["snapshot_id"] == snapshot)

    def build(tmp: Path) -> dict[str, Any]:
        changed = catalog.changed_movies(rows)
        catalog.upsert_movies(changed, batch_size=BATCH)
        row = catalog.version(version)
        if row is None or row["status"] != "rejected":  # a rejected version stays rejected
            catalog.register(version, "candidate", metrics=metrics, snapshot_id=snapshot)
        write_json(tmp / "catalog.json", {"upserted": len(changed), "movies": len(rows)})
        return {"model_version": version, "snapshot_id": snapshot,
                "counts": {"movies": len(rows), "upserted": len(changed)}}

    return _store_step(settings, "load_catalog", inputs={"preprocess": processed.key, "evaluate": evaluated.key},
                       params={"db_url": settings.public()["db_url"]},
                       in_sync=lambda: not catalog.changed_movies(rows) and registered(), build=build)


# --- smoke test --------------------------------------------------------------------------------
def _smoke_checks(settings: Settings, name: str, version: str, ids: np.ndarray, expected: int) -> list[str]:
    from recsys_tasks.serving.recommend import history_in, similar_in

    store, catalog = VectorStore.from_settings(settings), Catalog.from_settings(settings)
    if not store.is_complete(name, expected):
        return [f"{name} is not complete (verified, {expected} rows, index built)"]
    problems = []
    known = catalog.movies_by_id(ids.tolist())
    if len(known) != ids.size:
        missing = sorted(set(ids.tolist()) - set(known))
        problems.append(f"{len(missing)} vectors have no catalog record, e.g. {missing[:5]}")
    k = min(10, ids.size - 1)
    sample = ids[np.unique(np.linspace(0, ids.size - 1, min(SMOKE_SAMPLE, ids.size)).astype(int))]
    for movie_id in sample.tolist():
        items = similar_in(store, catalog, name, movie_id, k)["items"]
        if len(items) != k or any(i["title"] is None for i in items) or movie_id in {i["movie_id"] for i in items}:
            problems.append(f"similar({movie_id}): {len(items)} items, expected {k} catalog movies without itself")
    history = sample.tolist()[:3]
    rule = ((catalog.version(version) or {}).get("metrics") or {}).get("rule")
    items = history_in(store, catalog, name, history, k, rule)["items"]
    if len(items) < min(k, ids.size - len(history)) or set(history) & {i["movie_id"] for i in items}:
        problems.append(f"recommendations for history {history}: {len(items)} items or history not excluded")
    return problems


def smoke_test(settings: Settings, loaded: StepResult, exported: StepResult) -> StepResult:
    version, name = str(loaded.manifest["model_version"]), str(loaded.manifest["collection"])
    ids, _ = _read_embeddings(exported)

    def build(tmp: Path) -> dict[str, Any]:
        problems = _smoke_checks(settings, name, version, ids, int(loaded.manifest["counts"]["vectors"]))
        write_json(tmp / "smoke.json", {"collection": name, "passed": not problems, "problems": problems})
        if problems:
            Catalog.from_settings(settings).register(version, "rejected", reason=f"smoke_test: {problems[0]}")
            raise GateFailure(f"smoke test of {name}: {problems[0]}", rule="smoke_test",
                              report=_failed_report(settings, "smoke_test", inputs, {}, "smoke.json"))
        return {"model_version": version, "collection": name}

    inputs = {"load_vectors": loaded.key, "export_embeddings": exported.key}
    # always re-run: it checks the stores as they are now
    return run_step(settings.artifacts, "smoke_test", inputs=inputs, params={}, build=build, force=True)


# --- promote, status, rollback -----------------------------------------------------------------
def _servable(store: VectorStore, name: str) -> bool:
    return store.exists(name) and store.is_complete(name, store.row_count(name))


def _activate(store: VectorStore, catalog: Catalog, name: str, version: str, reason: str) -> str | None:
    """Alias first, then registry: a retry after a crash in between finishes the registry update."""
    previous = store.live_collection()
    if previous != name:
        store.ensure_loaded(name)
        store.point_alias(name)
    if (catalog.active() or {}).get("version") != version:
        catalog.activate(version, reason=reason)
    return version_of(previous) if previous and previous != name else None


def _retain(store: VectorStore, catalog: Catalog, keep: int) -> list[str]:
    """Drop collections of rejected versions and of retired versions beyond the newest `keep`."""
    live = store.live_collection()
    existing = set(store.collections())
    statuses = {r["version"]: r["status"] for r in catalog.versions()}
    retired = [collection_name(r["version"]) for r in catalog.versions("retired")
               if collection_name(r["version"]) in existing]
    kept = {live, *retired[:keep]}
    dropped = [n for n in sorted(existing - kept) if statuses.get(version_of(n)) in ("retired", "rejected")]
    for name in dropped:
        store.drop(name)
    return dropped


def promote(settings: Settings, loaded: StepResult) -> StepResult:
    version, name = str(loaded.manifest["model_version"]), str(loaded.manifest["collection"])
    store, catalog = VectorStore.from_settings(settings), Catalog.from_settings(settings)
    row = catalog.version(version)
    if row is None:
        raise InputError(f"model version {version} is not in the registry (run load_catalog first)",
                         rule="registered")
    if row["status"] == "rejected":
        raise GateFailure(f"model version {version} was rejected: {row['reason']}", rule="not_rejected")
    if not store.is_complete(name, int(loaded.manifest["counts"]["vectors"])):
        raise GateFailure(f"{name} is not complete; run load_vectors again", rule="collection_complete")

    def build(tmp: Path) -> dict[str, Any]:
        previous = _activate(store, catalog, name, version, reason=f"replaced by {version}")
        dropped = _retain(store, catalog, settings.keep_versions)
        write_json(tmp / "promotion.json", {"live": name, "previous": previous, "dropped": dropped})
        return {"model_version": version, "collection": name, "previous": previous, "dropped": dropped}

    return _store_step(settings, "promote", inputs={"load_vectors": loaded.key},
                       params={"keep_versions": settings.keep_versions},
                       in_sync=lambda: _promoted_before(store, catalog, name, version), build=build)


def _promoted_before(store: VectorStore, catalog: Catalog, name: str, version: str) -> bool:
    """True when this version is live, or was live and a later promotion replaced it.

    Re-running an old date must not switch the alias back to its model: `recsys rollback` does that.
    """
    if store.live_collection() == name and (catalog.active() or {}).get("version") == version:
        return True
    row = catalog.version(version) or {}
    return row.get("status") == "retired" and row.get("promoted_at") is not None


def status(settings: Settings) -> dict[str, Any]:
    store, catalog = VectorStore.from_settings(settings), Catalog.from_settings(settings)
    live = store.live_collection()
    registry = {r["version"]: r for r in catalog.versions()}
    row = registry.get(version_of(live)) if live else None
    by_status: dict[str, int] = {}
    for r in registry.values():
        by_status[r["status"]] = by_status.get(r["status"], 0) + 1
    return {
        "live": None if live is None else {
            "model_version": version_of(live), "collection": live,
            "status": row and row["status"], "metrics": row and row["metrics"],
            "snapshot_id": row and row["snapshot_id"], "promoted_at": row and row["promoted_at"]},
        "collections": [{"name": n, "model_version": version_of(n), "rows": store.row_count(n), "live": n == live,
                         "status": (registry.get(version_of(n)) or {}).get("status")} for n in store.collections()],
        "counts": {"movies": catalog.count(movies), "vectors": store.row_count(live) if live else 0,
                   "versions": by_status},
    }


def rollback(settings: Settings, to: str | None = None) -> dict[str, Any]:
    """Serve an earlier version again: `to`, or the most recently retired one whose collection is intact."""
    store, catalog = VectorStore.from_settings(settings), Catalog.from_settings(settings)
    live = store.live_collection()
    if to is None:
        targets = [r["version"] for r in catalog.versions("retired") if _servable(store, collection_name(r["version"]))]
        if not targets:
            raise InputError("no retired model version with an intact collection to roll back to",
                             rule="rollback target")
        to = targets[0]
    row = catalog.version(to)
    if row is None:
        raise InputError(f"model version {to} is not in the registry", rule="registered")
    if row["status"] == "rejected":
        raise InputError(f"model version {to} was rejected: {row['reason']}", rule="not rejected")
    name = collection_name(to)
    if not _servable(store, name):
        raise InputError(f"collection {name} is gone or incomplete; reload it with the pipeline",
                         rule="collection kept")
    _activate(store, catalog, name, to, reason=f"rolled back to {to}")
    return {"model_version": to, "collection": name, "previous": live and version_of(live), "changed": live != name}
