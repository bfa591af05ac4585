"""Vector and catalog loads on Milvus Lite in-process and on a `milvus-lite server` process."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import psutil
import pytest

from recsys_tasks import pipeline
from recsys_tasks.config import Settings, load_settings
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
    assert first.manifest["counts"] == {"movies": 300, "written": 300, "users": 60}
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


def _other_process(home: Path, code: str) -> str:
    """Run `code` in a fresh interpreter on `home`'s default settings; returns its stdout."""
    prelude = ("from pathlib import Path\nfrom recsys_tasks.config import load_settings\n"
               "from recsys_tasks.stores.milvus import VectorStore\n"
               f"store = VectorStore.from_settings(load_settings(home=Path({str(home)!r}), milvus_linger_s=1))\n")
    out = subprocess.run([sys.executable, "-c", prelude + code], capture_output=True, text=True, timeout=180,
                         check=False)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout


def _wait_for(condition: Callable[[], bool], seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.2)
    return condition()


def _gone(pid: int) -> bool:
    return not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE


def test_processes_on_the_default_home_share_one_local_server_that_stops_when_unused(tmp_path: Path) -> None:
    from recsys_tasks.stores import milvus, milvus_local

    settings = load_settings(home=tmp_path / "home", milvus_linger_s=1)
    folder = settings.resolved_milvus_uri
    store = VectorStore.from_settings(settings)  # starts the server for the home's data folder
    server = milvus_local.running(folder)
    assert server is not None and store.uri == f"http://127.0.0.1:{server['port']}" and server["pid"] != os.getpid()
    store.create("movies_shared", 4, source="test")
    # another process (the CLI while the API runs) reuses that server and sees the same data
    assert _other_process(settings.home, "print(store.collections(), store.uri)").split() == [
        "['movies_shared']", store.uri]
    assert milvus_local.running(folder) == server
    time.sleep(2)  # past the linger: this process still holds its lease, so the server stays
    assert milvus_local.running(folder) == server

    milvus.release(folder)  # the last user leaves: the server stops cleanly after the linger
    assert _wait_for(lambda: _gone(server["pid"]), 30) and milvus_local.running(folder) is None
    assert "stopped" in (milvus_local.control(folder) / "server.log").read_text()

    again = VectorStore.from_settings(settings)  # a new one on the same data
    assert again.collections() == ["movies_shared"]
    crashed = milvus_local.running(folder)["pid"]
    os.kill(crashed, signal.SIGKILL)  # a crashed server: the next user starts another one
    assert _wait_for(lambda: milvus_local.running(folder) is None, 10)  # its lock went with its last thread
    assert VectorStore.from_settings(settings).collections() == ["movies_shared"]
    assert milvus_local.running(folder)["pid"] != crashed
    last = milvus_local.running(folder)["pid"]
    milvus.release(folder)
    assert _wait_for(lambda: _gone(last), 30)


def test_a_default_process_on_a_folder_opened_in_process_is_told_why(stores: Settings) -> None:
    VectorStore.from_settings(stores).collections()  # this process opened the data folder in-process (a path URI)
    code = "print(store.collections())\n"
    prelude = ("from pathlib import Path\nfrom recsys_tasks.config import load_settings\n"
               "from recsys_tasks.stores.milvus import VectorStore\n"
               f"store = VectorStore.from_settings(load_settings(home=Path({str(stores.home)!r})))\n")
    out = subprocess.run([sys.executable, "-c", prelude + code], capture_output=True, text=True, timeout=180,
                         check=False)
    assert out.returncode != 0 and "did not start" in out.stderr and "RECSYS_MILVUS_URI" in out.stderr
