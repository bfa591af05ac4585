"""Vector and catalog loads on Milvus Lite in-process and on a `milvus-lite server` process."""

from __future__ import annotations

import numpy as np
import pytest

from recsys_tasks import pipeline
from recsys_tasks.config import Settings
from recsys_tasks.stores.catalog import Catalog, catalog_movies, model_versions
from recsys_tasks.stores.milvus import VectorStore, collection_name
from tests.fixtures_stores import GENRES, make_release

MILVUS = [pytest.param(("lite", "sqlite"), id="lite"), pytest.param(("server", "sqlite"), id="server")]


@pytest.mark.parametrize("stores", MILVUS, indirect=True)
def test_search_equals_brute_force_and_scalars_are_stored(stores: Settings) -> None:
    release = make_release(stores, "v1")
    loaded = pipeline.load_vectors(stores, release.exported, release.processed)
    store = VectorStore.from_settings(stores)
    name = loaded.manifest["collection"]
    assert name == collection_name(release.version) and store.row_count(name) == release.ids.size == 300
    queries = np.random.default_rng(3).normal(size=(25, 16)).astype(np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    for query, hits in zip(queries, store.search(name, queries, 10)):
        assert [h.movie_id for h in hits] == release.brute_force(query, 10)
        assert np.allclose([h.score for h in hits], np.sort(release.vectors @ query)[::-1][:10], atol=1e-5)
    rows = store.client.get(name, ids=release.ids[:20].tolist(), output_fields=["movie_id", "year", "genre_mask"])
    import pyarrow.parquet as pq

    truth = {r["movie_id"]: r for r in pq.read_table(release.processed.out("movies.parquet")).to_pylist()}
    for row in rows:
        t = truth[row["movie_id"]]
        assert row["year"] == t["year"]
        assert "|".join(g for i, g in enumerate(GENRES) if row["genre_mask"] >> i & 1) == t["genres"]


@pytest.mark.parametrize("stores", MILVUS, indirect=True)
def test_load_vectors_is_judged_by_the_store(stores: Settings) -> None:
    release = make_release(stores, "v1")
    first = pipeline.load_vectors(stores, release.exported, release.processed)
    store = VectorStore.from_settings(stores)
    name = first.manifest["collection"]
    again = pipeline.load_vectors(stores, release.exported, release.processed)
    assert not first.skipped and again.skipped and again.path == first.path
    assert store.collections() == [name] and store.row_count(name) == 300

    store.drop(name)  # a wiped Milvus: the artifact folder alone must not count as done
    reloaded = pipeline.load_vectors(stores, release.exported, release.processed)
    assert not reloaded.skipped and store.is_complete(name, 300)

    store.drop(name)  # a crash mid-load: collection there, half the rows, no index, never verified
    store.create(name, 16, source="crashed")
    store.insert(name, [{"movie_id": int(m), "vector": v.tolist(), "year": None, "genre_mask": 0}
                        for m, v in zip(release.ids[:100], release.vectors[:100])])
    assert not store.is_complete(name, 300)
    rebuilt = pipeline.load_vectors(stores, release.exported, release.processed)
    assert not rebuilt.skipped and store.is_complete(name, 300) and store.properties(name)["recsys.source"] != "crashed"
    hits = store.search(name, release.vectors[150:151], 1)[0]
    assert hits[0].movie_id == release.ids[150]


@pytest.mark.parametrize("stores", MILVUS[:1], indirect=True)
def test_load_catalog_is_idempotent_and_registers_the_candidate(stores: Settings) -> None:
    release = make_release(stores, "v1", rule={"name": "history", "half_life": 1.5, "max_items": 20})
    first = pipeline.load_catalog(stores, release.processed, release.evaluated)
    catalog = Catalog.from_settings(stores)
    row = catalog.version(release.version)
    assert row["status"] == "candidate" and row["snapshot_id"] == "snapshot-catalog"
    assert row["rule"] == release.rule and row["metrics"]["val"]["pinsage_history"]["hr@10"] == 0.10
    assert row["catalog_id"] == first.manifest["catalog_id"] and row["data_ts"] == 1_000_000_000
    assert first.manifest["counts"] == {"movies": 300, "written": 300}
    state = (catalog.movies_by_id(release.ids.tolist(), row["catalog_id"]), catalog.versions())
    again = pipeline.load_catalog(stores, release.processed, release.evaluated)
    assert again.skipped and (catalog.movies_by_id(release.ids.tolist(), row["catalog_id"]), catalog.versions()) == state

    with catalog.engine.begin() as conn:  # a wiped catalog is reloaded although the folder exists
        conn.execute(catalog_movies.delete())
        conn.execute(model_versions.delete())
    reloaded = pipeline.load_catalog(stores, release.processed, release.evaluated)
    assert not reloaded.skipped and catalog.catalog_size(row["catalog_id"]) == 300
    assert catalog.version(release.version)


@pytest.mark.parametrize("stores", MILVUS[:1], indirect=True)
def test_the_live_collection_is_never_dropped(stores: Settings) -> None:
    release = make_release(stores, "v1")
    loaded = pipeline.load_vectors(stores, release.exported, release.processed)
    store = VectorStore.from_settings(stores)
    store.point_alias(loaded.manifest["collection"])
    with pytest.raises(RuntimeError, match="alias"):
        store.drop(loaded.manifest["collection"])
    assert store.live_collection() == loaded.manifest["collection"]


@pytest.mark.parametrize("stores", MILVUS, indirect=True)
def test_serving_survives_a_released_collection_and_a_reopen(stores: Settings,
                                                              caplog: pytest.LogCaptureFixture) -> None:
    from recsys_tasks.serving.recommend import recommend_similar
    from recsys_tasks.stores import milvus
    from tests.fixtures_stores import ship

    release = make_release(stores, "v1")
    ship(stores, release)
    movie = int(release.ids[9])
    expected = release.brute_force(release.vectors[9], 5, exclude={movie})
    assert [i["movie_id"] for i in recommend_similar(stores, movie, 5)["items"]] == expected
    store = VectorStore.from_settings(stores)
    store.client.release_collection(collection_name(release.version))  # what a server restart leaves
    assert [i["movie_id"] for i in recommend_similar(stores, movie, 5)["items"]] == expected
    assert "was not loaded" in caplog.text
    milvus.release(stores.resolved_milvus_uri)  # a new process opening the same data
    assert [i["movie_id"] for i in recommend_similar(stores, movie, 5)["items"]] == expected


def test_a_second_process_on_a_lite_folder_is_told_to_use_the_server(stores: Settings) -> None:
    import subprocess
    import sys

    VectorStore.from_settings(stores).collections()  # this process holds the data folder's lock
    code = ("from pathlib import Path\nfrom recsys_tasks.config import load_settings\n"
            "from recsys_tasks.stores.milvus import VectorStore\n"
            f"VectorStore.from_settings(load_settings(home=Path({str(stores.home)!r})))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    assert out.returncode != 0 and "milvus-lite server --data-dir" in out.stderr
