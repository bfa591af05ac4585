"""load_vectors and load_catalog: a candidate's vectors into its own Milvus collection, its movie records
into the catalog under its catalog id, and its registry row. Nothing served changes here.

Both change external stores, so whether one is done is judged by the store as well as by its folder
(`run_step(in_sync=…)`): a wiped Milvus or catalog is reloaded even when the folder exists. Neither
key holds a store's address, so spelling the same server another way never reloads anything.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
from sqlalchemy.exc import DataError

from recsys_tasks.artifacts import StepResult, read_json, run_step, write_json
from recsys_tasks.config import Settings
from recsys_tasks.errors import InputError
from recsys_tasks.logs import get_logger, progress
from recsys_tasks.release.facts import catalog_id, movie_rows, registration
from recsys_tasks.release.registry import Registry
from recsys_tasks.stores.catalog import Catalog
from recsys_tasks.stores.milvus import HNSW, VectorStore, collection_name

log = get_logger(__name__)
INSERT_BYTES = 8 << 20  # per insert call: well under a Milvus server's 64 MiB gRPC message limit
CATALOG_BATCH = 1000
VERIFY_SAMPLE = 20


def read_embeddings(exported: StepResult) -> tuple[np.ndarray, np.ndarray]:
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
    """Problems with a loaded collection: row count, a sample of stored vectors, self-search."""
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


def _insert_all(store: VectorStore, name: str, ids: np.ndarray, vectors: np.ndarray,
                scalars: dict[int, tuple[int | None, int]]) -> None:
    batch = max(1, INSERT_BYTES // (vectors.shape[1] * 4 + 64))
    starts = range(0, ids.size, batch)
    for start in progress(starts, desc=f"load {name}", total=len(starts), unit="batch"):
        store.insert(name, [{"movie_id": int(m), "vector": v.tolist(), "year": scalars.get(int(m), (None, 0))[0],
                             "genre_mask": scalars.get(int(m), (None, 0))[1]}
                            for m, v in zip(ids[start:start + batch], vectors[start:start + batch])])


def load_vectors(settings: Settings, exported: StepResult, processed: StepResult) -> StepResult:
    """The candidate's collection, built, indexed, verified and loaded; `force` rebuilds it (unless live)."""
    version = str(exported.manifest["model_version"])
    name = collection_name(version)
    metric = str(exported.manifest.get("metric", "IP"))
    store = VectorStore.from_settings(settings)
    ids, vectors = read_embeddings(exported)

    def build(tmp: Path) -> dict[str, Any]:
        live = store.live_collection() == name
        reload = not store.is_complete(name, ids.size) or (settings.force and not live)
        if reload:
            if store.exists(name):
                log.info("load_vectors: dropping %s to rebuild it", name)
                store.drop(name)  # refuses the live collection
            store.create(name, vectors.shape[1], source=exported.key)
            _insert_all(store, name, ids, vectors, _scalar_fields(processed))
            store.finish(name, metric)
        store.ensure_loaded(name)
        problems = _verify(store, name, ids, vectors)
        if problems:  # the store did not keep what was written: a store fault, retried as the step is
            raise RuntimeError(f"load_vectors: {name} failed verification: {'; '.join(problems[:3])}")
        store.mark_verified(name)
        write_json(tmp / "load.json", {"collection": name, "reloaded": reload, "rows": int(ids.size),
                                       "live": live})
        return {"model_version": version, "collection": name, "dim": int(vectors.shape[1]), "metric": metric,
                "counts": {"vectors": int(ids.size)}}

    return run_step(settings.artifacts, "load_vectors", inputs={"export_embeddings": exported.key,
                                                                 "preprocess": processed.key},
                    params={"index": "HNSW", **HNSW}, build=build, force=settings.force,
                    in_sync=lambda: store.is_complete(name, ids.size))


def load_catalog(settings: Settings, processed: StepResult, evaluated: StepResult) -> StepResult:
    """The candidate's movie records under its catalog id, and its registry row (a candidate)."""
    version = str(evaluated.manifest["model_version"])
    rows = movie_rows(processed)
    cid = catalog_id(rows)
    catalog = Catalog.from_settings(settings)
    registry = Registry(catalog)

    def in_sync() -> bool:
        return catalog.catalog_size(cid) == len(rows) and registry.get(version) is not None

    def build(tmp: Path) -> dict[str, Any]:
        registry.register(version, **registration(settings, processed, evaluated))
        written = 0
        if catalog.catalog_size(cid) != len(rows):
            try:
                catalog.write_catalog(cid, rows, batch_size=CATALOG_BATCH)
            except DataError as exc:  # validate_raw checks the sizes; a database with other limits may not
                raise InputError(f"the catalog database refused a movie record: {exc.orig}",
                                 file=processed.out("movies.parquet"), rule="movie record fits the catalog") from None
            written = len(rows)
        write_json(tmp / "catalog.json", {"catalog_id": cid, "movies": len(rows), "written": written})
        return {"model_version": version, "catalog_id": cid, "snapshot_id": processed.manifest.get("snapshot_id"),
                "counts": {"movies": len(rows), "written": written}}

    return run_step(settings.artifacts, "load_catalog", inputs={"preprocess": processed.key,
                                                                 "evaluate": evaluated.key},
                    params={}, build=build, force=settings.force, in_sync=in_sync)
