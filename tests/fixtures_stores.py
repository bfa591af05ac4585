"""Fixtures for the store and serving tests: real Milvus Lite (in-process and a `milvus-lite server`
process), SQLite and MariaDB, and small releases written in the artifact contract formats.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import NoReturn

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from recsys_tasks.artifacts import StepResult, fingerprint, run_step, write_json
from recsys_tasks.config import Settings, load_settings

GENRES = ["Action", "Comedy", "Drama", "Horror", "Romance", "Sci-Fi"]
MARIADB = {"host": "127.0.0.1", "port": 3306, "user": "root", "password": ""}
SPECIAL_TITLES = {0: "100% Pure_Fun (1999)", 1: "O'Brien's \"Quoted\" Story (1987)", 2: "Back\\slash Movie (2001)"}


# --- engines -------------------------------------------------------------------------------------
def service_unavailable(message: str) -> NoReturn:
    """A service the test needs is unreachable: skip, except under CI (environment CI=true), whose machine
    provides the services, so that a silent skip cannot hide the test there: fail with the message."""
    __tracebackhide__ = True  # report the caller's line
    if os.environ.get("CI", "").strip().lower() == "true":
        pytest.fail(f"{message} (CI=true: the CI machine must provide this service; a skip would hide the test)",
                    pytrace=False)
    pytest.skip(message)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def milvus_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A `milvus-lite server` process on a free loopback port; yields its http URI."""
    from pymilvus import MilvusClient

    from recsys_tasks.stores.milvus import CONNECTION

    port = _free_port()
    data = tmp_path_factory.mktemp("milvus-server")
    log = (data / "server.log").open("w")
    proc = subprocess.Popen([sys.executable, "-m", "milvus_lite", "server", "--data-dir", str(data / "data"),
                             "--host", "127.0.0.1", "--port", str(port)], stdout=log, stderr=subprocess.STDOUT)
    uri = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    try:
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"milvus-lite server exited with {proc.returncode}: "
                                   f"{(data / 'server.log').read_text()[-2000:]}")
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                    pass
                client = MilvusClient(uri=uri, timeout=5, **CONNECTION)
                client.list_collections()
                client.close()
                break
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        yield uri
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def server_database(server_uri: str) -> tuple[str, Callable[[], None]]:
    """A fresh database on the shared server (aliases are per database); returns (uri, cleanup)."""
    from pymilvus import MilvusClient

    from recsys_tasks.stores import milvus
    from recsys_tasks.stores.milvus import CONNECTION

    name = f"t_{uuid.uuid4().hex[:12]}"
    admin = MilvusClient(uri=server_uri, **CONNECTION)
    admin.create_database(name)
    admin.close()
    uri = f"{server_uri}/{name}"

    def cleanup() -> None:
        milvus.release(uri)
        db = MilvusClient(uri=uri, **CONNECTION)
        for collection in db.list_collections():
            db.drop_collection(collection)
        db.close()
        admin = MilvusClient(uri=server_uri, **CONNECTION)
        admin.drop_database(name)
        admin.close()

    return uri, cleanup


def mariadb_database() -> tuple[str, Callable[[], None]]:
    """A database of this test's own on the local MariaDB (skips when the server is unreachable; fails
    under CI=true)."""
    import pymysql

    from recsys_tasks.stores import catalog

    try:
        conn = pymysql.connect(**MARIADB, connect_timeout=3, autocommit=True)
    except pymysql.err.OperationalError as exc:
        service_unavailable(f"MariaDB/MySQL not reachable at {MARIADB['host']}:{MARIADB['port']} as "
                            f"{MARIADB['user']}: {exc}")
    name = f"recsys_test_{uuid.uuid4().hex[:12]}"
    with conn.cursor() as cur:
        cur.execute(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4")  # name generated above, not input
    url = f"mysql+pymysql://root@127.0.0.1:3306/{name}?charset=utf8mb4"

    def cleanup() -> None:
        catalog.dispose(url)
        with conn.cursor() as cur:
            cur.execute(f"DROP DATABASE IF EXISTS `{name}`")
        conn.close()

    return url, cleanup


def make_settings(home: Path, milvus: str, db: str,
                  milvus_server: str | None) -> tuple[Settings, list[Callable[[], None]]]:
    """Settings for one engine pair ('lite' in-process |'server', 'sqlite'|'mariadb') and the cleanups to run."""
    from recsys_tasks.stores import catalog
    from recsys_tasks.stores import milvus as mv

    cleanups: list[Callable[[], None]] = []
    milvus_uri, db_url = "", ""
    if milvus == "server":
        assert milvus_server is not None
        milvus_uri, cleanup = server_database(milvus_server)
        cleanups.append(cleanup)
    if db == "mariadb":
        db_url, cleanup = mariadb_database()
        cleanups.append(cleanup)
    if milvus == "lite":  # in-process: a path (unset would share a local milvus-lite server process)
        milvus_uri = str((home / "milvus.db").resolve())
    settings = load_settings(home=home, milvus_uri=milvus_uri or None, db_url=db_url or None)
    if milvus == "lite":
        cleanups.append(lambda: mv.release(settings.resolved_milvus_uri))
    if db == "sqlite":
        cleanups.append(lambda: catalog.dispose(settings.resolved_db_url))
    return settings, cleanups


@pytest.fixture
def stores(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Settings]:
    """Settings on real engines; parametrise indirectly with ('lite'|'server', 'sqlite'|'mariadb')."""
    milvus, db = getattr(request, "param", ("lite", "sqlite"))
    server = request.getfixturevalue("milvus_server") if milvus == "server" else None
    settings, cleanups = make_settings(tmp_path / "home", milvus, db, server)
    yield settings
    for cleanup in reversed(cleanups):
        cleanup()


# --- releases in the artifact contract formats ---------------------------------------------------
@dataclass
class Release:
    """One model version's upstream step results, and its vectors for brute-force checks."""

    version: str
    processed: StepResult
    graph: StepResult
    evaluated: StepResult
    exported: StepResult
    ids: np.ndarray
    vectors: np.ndarray
    rule: dict = field(default_factory=dict)

    def brute_force(self, query: np.ndarray, k: int, exclude: set[int] = frozenset()) -> list[int]:
        order = np.argsort(-(self.vectors @ query), kind="stable")
        return [int(self.ids[i]) for i in order if int(self.ids[i]) not in exclude][:k]


def movie_ids(n: int) -> np.ndarray:
    """Sparse, non-contiguous MovieLens-like ids (so nothing can depend on row order)."""
    return np.sort(np.random.default_rng(7).choice(np.arange(1, 4 * n), size=n, replace=False)).astype(np.int64)


TRUTH_DIM = 16
USERS = 60


def truth_vectors(ids: np.ndarray) -> np.ndarray:
    """The movie vectors the fixture users' tastes follow (a model with these vectors is the best one)."""
    vectors = np.random.default_rng(5).normal(size=(ids.size, TRUTH_DIM)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def _interactions(ids: np.ndarray, newest: int) -> dict[str, pa.Table]:
    """train/val/test of USERS users: one train movie each, then its nearest movie under the truth
    vectors (val), then that one's nearest (test). So a model serving the truth vectors hits every
    validation target, and random vectors almost none."""
    truth = truth_vectors(ids)
    rows: dict[str, list[tuple[int, int, int]]] = {"train": [], "val": [], "test": []}
    for user in range(1, USERS + 1):
        seen = [int((user * 7) % ids.size)]
        for split in ("val", "test"):
            scores = truth @ truth[seen[-1]]
            scores[seen] = -np.inf
            seen.append(int(np.argmax(scores)))
        for split, movie, ts in zip(("train", "val", "test"), seen, (newest - 300, newest - 200, newest - user)):
            rows[split].append((user, int(ids[movie]), ts))
    return {split: pa.table({"user_id": pa.array([r[0] for r in r_], pa.int64()),
                             "movie_id": pa.array([r[1] for r in r_], pa.int64()),
                             "rating": pa.array([4.0] * len(r_), pa.float32()),
                             "timestamp": pa.array([r[2] for r in r_], pa.int64())}) for split, r_ in rows.items()}


def write_processed(settings: Settings, n: int = 300, tag: str = "catalog", newest: int = 1_000_000_000,
                    titles: dict[int, str] | None = None, idle_users: int = 0) -> StepResult:
    """A preprocess folder with `n` movies (titles by row index overridable) and USERS users' splits, from
    a snapshot `tag` whose newest rating is `newest`; with `idle_users`, a users table that also lists
    that many users without ratings (ids after USERS)."""
    ids = movie_ids(n)
    rng = np.random.default_rng(11)

    def build(tmp: Path) -> dict:
        genre_ids = [sorted(set(rng.choice(len(GENRES), size=int(rng.integers(0, 3)), replace=False).tolist()))
                     for _ in range(n)]
        years = [None if i % 17 == 0 else int(1930 + i % 70) for i in range(n)]
        names = {**SPECIAL_TITLES, **(titles or {})}
        titles_ = [names.get(i, f"Movie {m} ({years[i] or '?'})") for i, m in enumerate(ids)]
        table = pa.table({
            "movie_id": pa.array(ids, pa.int64()), "title": pa.array(titles_, pa.string()),
            "year": pa.array(years, pa.int32()), "genres": pa.array(["|".join(GENRES[g] for g in gs) for gs in genre_ids]),
            "genre_ids": pa.array(genre_ids, pa.list_(pa.int32())),
            "title_tokens": pa.array([[1, 2] for _ in range(n)], pa.list_(pa.int32())),
        })
        pq.write_table(table, tmp / "movies.parquet")
        write_json(tmp / "vocab.json", {"genres": GENRES, "tokens": ["<pad>", "<unk>", "movie"]})
        for split, frame in _interactions(ids, newest).items():
            pq.write_table(frame, tmp / f"{split}.parquet")
        if idle_users:
            pq.write_table(pa.table({"user_id": pa.array(range(1, USERS + idle_users + 1), pa.int64())}),
                           tmp / "users.parquet")
        return {"counts": {"movies": n}, "snapshot_id": f"snapshot-{tag}", "newest_rating_ts": newest}

    return run_step(settings.artifacts, "preprocess", inputs={"ingest": f"snapshot-{tag}"},
                    params={"n": n, "newest": newest, "titles": titles or {}, "idle_users": idle_users}, build=build)


def write_graph(settings: Settings, processed: StepResult) -> StepResult:
    """The build_graph folder's id map (what evaluation's score_vectors reads)."""
    def build(tmp: Path) -> dict:
        movies = pq.read_table(processed.out("movies.parquet"), columns=["movie_id"])["movie_id"].to_numpy()
        np.savez(tmp / "id_map.npz", movie_ids=np.sort(movies).astype(np.int64),
                 user_ids=np.arange(1, USERS + 1, dtype=np.int64))
        return {"counts": {"movies": int(movies.size)}}

    return run_step(settings.artifacts, "build_graph", inputs={"preprocess": processed.key}, params={}, build=build)


def _metrics(hr: float, baselines: tuple[float, float]) -> dict:
    return {m: {"hr@10": v, "hr@20": v * 1.5, "ndcg@10": v / 2, "ndcg@20": v / 1.8, "recall@10": v,
                "recall@20": v * 1.5, "mrr": v / 3, "users": USERS}
            for m, v in (("pinsage_history", hr), ("pinsage_latest", hr * 0.9), ("popularity", baselines[0]),
                         ("itemknn", baselines[1]), ("transitions", baselines[0]))}


def make_release(settings: Settings, tag: str, *, processed: StepResult | None = None, dim: int = 16,
                 hr: float = 0.10, baselines: tuple[float, float] = (0.04, 0.05), extra_ids: int = 0,
                 rule: dict | None = None, truth: bool = False) -> Release:
    """A model version `tag` with validation hr@10 `hr` (test a little lower): normalised random vectors
    for the catalog's movies (+ `extra_ids` unknown ones), or with `truth` the users' own taste vectors."""
    processed = processed or write_processed(settings)
    ids = pq.read_table(processed.out("movies.parquet"), columns=["movie_id"])["movie_id"].to_numpy()
    ids = np.concatenate([ids, 10_000_000 + np.arange(extra_ids)]).astype(np.int64)
    rng = np.random.default_rng(int(fingerprint(tag)[:8], 16))
    vectors = rng.normal(size=(ids.size, dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    if truth:
        vectors = truth_vectors(ids)
    version = "v" + fingerprint(tag)[:12]
    rule = rule or {"name": "history", "half_life": 2.0, "max_items": 50}
    metrics = {"val": _metrics(hr, baselines), "test": _metrics(hr * 0.9, baselines)}

    def train(tmp: Path) -> dict:
        write_json(tmp / "rule.json", rule)
        return {"model_version": version}

    def evaluate(tmp: Path) -> dict:
        write_json(tmp / "metrics.json", metrics)
        return {"model_version": version, "served": "pinsage_history",
                "baselines": ["popularity", "itemknn", "transitions"], "metrics": metrics}

    def export(tmp: Path) -> dict:
        vec = pa.FixedSizeListArray.from_arrays(pa.array(vectors.ravel(), pa.float32()), dim)
        pq.write_table(pa.table({"movie_id": pa.array(ids, pa.int64()), "vector": vec}), tmp / "embeddings.parquet")
        return {"model_version": version, "dim": dim, "metric": "IP", "normalized": True,
                "counts": {"movies": int(ids.size)}}

    trained = run_step(settings.artifacts, "train", inputs={"preprocess": processed.key}, params={"tag": tag},
                       build=train, key=version[1:] + "0000")
    evaluated = run_step(settings.artifacts, "evaluate", inputs={"train": trained.key},
                         params={"hr": hr, "baselines": list(baselines)}, build=evaluate)
    exported = run_step(settings.artifacts, "export_embeddings", inputs={"train": trained.key},
                        params={"dim": dim, "extra": extra_ids}, build=export)
    return Release(version, processed, write_graph(settings, processed), evaluated, exported, ids, vectors, rule)


def gate(settings: Settings, release: Release) -> StepResult:
    from recsys_tasks import pipeline

    return pipeline.quality_gate(settings, release.processed, release.graph, release.evaluated)


def ship(settings: Settings, release: Release) -> dict[str, StepResult]:
    """The store steps in pipeline order, as pipeline.run calls them."""
    from recsys_tasks import pipeline

    out = {"quality_gate": gate(settings, release)}
    out["load_vectors"] = pipeline.load_vectors(settings, release.exported, release.processed)
    out["load_catalog"] = pipeline.load_catalog(settings, release.processed, release.evaluated)
    out["smoke_test"] = pipeline.smoke_test(settings, out["load_vectors"], release.exported, release.processed,
                                            release.graph)
    out["promote"] = pipeline.promote(settings, out["quality_gate"], out["load_vectors"])
    return out
