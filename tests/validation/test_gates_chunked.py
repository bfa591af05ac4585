"""The gates on files read in chunks (CHUNK_ROWS lowered to a few rows): a bad row in a later chunk is
found and named by its row in the file, rules across chunks (duplicates, leakage, holdout order, equal
pair sets) fail exactly as on one chunk, and a passing report's counts and stats do not depend on the
chunk size."""

from __future__ import annotations

import json
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from recsys_tasks.artifacts import StepResult, run_step
from recsys_tasks.validation import runner
from recsys_tasks.validation.gates import validate_graph, validate_processed, validate_raw
from tests.validation.test_validation_gates import (
    T0,
    build_graph,
    fails,
    ingest,
    passes,
    preprocess,
    ratings_frame,
)


@pytest.fixture
def chunk_rows(monkeypatch: pytest.MonkeyPatch) -> Callable[[int], None]:
    def use(rows: int) -> None:
        monkeypatch.setattr(runner, "CHUNK_ROWS", rows)

    return use


def facts(result: StepResult) -> dict[str, Any]:
    report = json.loads(result.out("report.json").read_text())
    rules = {(r["file"], r["rule"]): (r["status"], r["failing"], r["total"]) for r in report["results"]}
    return {"counts": report["counts"], "stats": report["stats"], "rules": rules}


# ---------------------------------------------------------------- raw

def test_raw_report_is_the_same_for_any_chunk_size(tmp_path: Path, chunk_rows: Callable[[int], None]) -> None:
    reports = []
    for rows in (1 << 20, 4, 1):
        chunk_rows(rows)
        home = tmp_path / str(rows)
        result = validate_raw(ingest(home), home)
        passes(result, "validate_raw")
        reports.append(facts(result))
    assert reports[0] == reports[1] == reports[2]
    assert reports[0]["stats"]["ratings_per_value"] == {"1.0": 1, "2.0": 1, "3.0": 2, "4.0": 3, "5.0": 2}
    assert reports[0]["rules"][("ratings.parquet", "rating_in_allowed_set")] == ("passed", 0, 9)


def test_raw_bad_rows_in_later_chunks_are_named_by_file_row(tmp_path: Path,
                                                            chunk_rows: Callable[[int], None]) -> None:
    chunk_rows(2)
    ratings = ratings_frame()
    ratings.loc[[5, 8], "rating"] = [9.0, 0.0]  # rows 6 and 9: the third and the fifth chunk
    row = fails(lambda: validate_raw(ingest(tmp_path, ratings=ratings), tmp_path),
                "ratings.parquet", "rating_in_allowed_set", 2)
    assert [(s["row"], s["rating"]) for s in row["samples"]] == [(6, 9.0), (9, 0.0)]
    assert row["total"] == 9


def test_raw_duplicate_pair_across_chunks(tmp_path: Path, chunk_rows: Callable[[int], None]) -> None:
    chunk_rows(2)
    ratings = ratings_frame()
    ratings.loc[8, ["user_id", "movie_id"]] = [1, 1]  # row 9 repeats row 1, four chunks apart
    row = fails(lambda: validate_raw(ingest(tmp_path, ratings=ratings), tmp_path),
                "ratings.parquet", "user_movie_unique", 2)
    assert [(s["row"], s["user_id"], s["movie_id"]) for s in row["samples"]] == [(1, 1, 1), (9, 1, 1)]
    assert row["samples"][1]["timestamp"] == T0 + 480  # the whole row, as GX's samples


def test_raw_null_movie_ids_in_different_chunks_are_duplicates_as_in_gx(
        tmp_path: Path, chunk_rows: Callable[[int], None]) -> None:
    """(user 1, null) twice is one pair twice, as GX compares pandas rows; the not-null rule fails too."""
    chunk_rows(3)
    ratings = ratings_frame().astype({"movie_id": "Int64"})
    ratings.loc[[0, 3], "movie_id"] = pd.NA  # user 1 in both rows
    row = fails(lambda: validate_raw(ingest(tmp_path, ratings=ratings), tmp_path),
                "ratings.parquet", "user_movie_unique", 2)
    assert [(s["row"], s["movie_id"]) for s in row["samples"]] == [(1, None), (4, None)]
    report = json.loads(next((tmp_path / "validate_raw").glob("*.failed/report.json")).read_text())
    failed = {r["rule"]: r["failing"] for r in report["results"] if r["status"] == "failed"}
    assert failed == {"movie_id_not_null": 2, "user_movie_unique": 2}


# ---------------------------------------------------------------- processed

def test_processed_report_is_the_same_for_any_chunk_size(tmp_path: Path,
                                                         chunk_rows: Callable[[int], None]) -> None:
    reports = []
    for rows in (1 << 20, 2, 1):
        chunk_rows(rows)
        home = tmp_path / str(rows)
        result = validate_processed(preprocess(home), home)
        passes(result, "validate_processed")
        reports.append(facts(result))
    assert reports[0] == reports[1] == reports[2]


def test_processed_test_pair_in_a_later_train_chunk(tmp_path: Path, chunk_rows: Callable[[int], None]) -> None:
    chunk_rows(2)

    def leak(f: dict[str, pd.DataFrame]) -> None:
        f["train"] = pd.concat([f["train"], f["test"].iloc[[1]].assign(timestamp=T0 - 60)]).sort_values(
            ["user_id", "timestamp", "movie_id"])

    row = fails(lambda: validate_processed(preprocess(tmp_path, tamper=leak), tmp_path),
                "test.parquet", "pair_not_in_train", 1)
    assert (row["samples"][0]["row"], row["samples"][0]["user_id"]) == (2, 2)


def test_processed_holdout_before_a_train_rating_in_another_chunk(tmp_path: Path,
                                                                  chunk_rows: Callable[[int], None]) -> None:
    """User 2's latest train rating is in the last chunk and later than the validation rating."""
    chunk_rows(1)

    def late_train(f: dict[str, pd.DataFrame]) -> None:
        f["train"] = f["train"].copy()
        last = f["train"].index[f["train"]["user_id"] == 2][-1]
        f["train"].loc[last, "timestamp"] = T0 + 10_000

    row = fails(lambda: validate_processed(preprocess(tmp_path, tamper=late_train), tmp_path),
                "val.parquet", "holdout_after_history", 1)
    assert row["samples"][0]["user_id"] == 2


def test_processed_duplicate_train_pair_across_chunks(tmp_path: Path, chunk_rows: Callable[[int], None]) -> None:
    chunk_rows(1)

    def repeat(f: dict[str, pd.DataFrame]) -> None:
        first = f["train"].iloc[[0]].assign(timestamp=T0 + 5)  # (1, 1) again, later
        f["train"] = pd.concat([f["train"], first]).sort_values(["user_id", "timestamp", "movie_id"],
                                                                kind="stable")

    row = fails(lambda: validate_processed(preprocess(tmp_path, tamper=repeat), tmp_path),
                "train.parquet", "user_movie_unique", 2)
    assert [(s["user_id"], s["movie_id"]) for s in row["samples"]] == [(1, 1), (1, 1)]


# ---------------------------------------------------------------- graph

def write_graph(root: Path, processed: StepResult, user_idx: np.ndarray, movie_idx: np.ndarray,
                **arrays: Any) -> StepResult:
    """edges.npz and id_map.npz with the given edges (no graph.bin, as where DGL is unavailable)."""
    movie_ids = np.sort(pd.read_parquet(processed.out("movies.parquet"))["movie_id"].to_numpy())
    user_ids = np.unique(pd.read_parquet(processed.out("train.parquet"))["user_id"].to_numpy())

    def build(tmp: Path) -> dict[str, Any]:
        n = len(user_idx)
        np.savez(tmp / "edges.npz", **{"user_idx": user_idx, "movie_idx": movie_idx,
                                       "rating": np.ones(n, np.float32), "timestamp": np.full(n, T0),
                                       "n_users": len(user_ids), "n_movies": len(movie_ids), **arrays})
        np.savez(tmp / "id_map.npz", movie_ids=movie_ids, user_ids=user_ids)
        return {"dgl_graph": False}

    return run_step(root, "build_graph", inputs={"preprocess": processed.key, "edges": user_idx.tolist()},
                    params={"movie_idx": movie_idx.tolist()}, build=build)


def train_edges(processed: StepResult) -> tuple[np.ndarray, np.ndarray]:
    graph = build_graph(processed.path.parent.parent / "ref", processed, dgl_graph=False)
    with np.load(graph.out("edges.npz")) as edges:
        return edges["user_idx"], edges["movie_idx"]


def test_graph_report_is_the_same_for_any_chunk_size(tmp_path: Path, chunk_rows: Callable[[int], None]) -> None:
    reports = []
    for rows in (1 << 20, 2, 1):
        chunk_rows(rows)
        home = tmp_path / str(rows)
        processed = preprocess(home)
        result = validate_graph(build_graph(home, processed), processed, home)
        passes(result, "validate_graph")
        reports.append(facts(result))
    assert reports[0] == reports[1] == reports[2]
    assert reports[0]["stats"]["movie_degree"] == {"min": 0, "median": 1.0, "max": 2, "isolated": 2}


def test_graph_index_out_of_range_in_the_last_chunk(tmp_path: Path, chunk_rows: Callable[[int], None]) -> None:
    chunk_rows(2)
    processed = preprocess(tmp_path)
    users, movies = train_edges(processed)
    movies = movies.copy()
    movies[-1] = 99  # edge 5: the third chunk
    row = fails(lambda: validate_graph(write_graph(tmp_path, processed, users, movies), processed, tmp_path),
                "edges.npz", "movie_idx_in_range", 1)
    assert row["samples"] == [{"row": 5, "user_idx": int(users[-1]), "movie_idx": 99}]
    report = json.loads(next((tmp_path / "validate_graph").glob("*.failed/report.json")).read_text())
    skipped = {r["rule"]: r["status"] for r in report["results"]}
    assert skipped["edges_equal_train_pairs"] == "skipped" and report["stats"]["movie_degree"] == {}


def test_graph_edges_in_another_order_are_the_same_pairs(tmp_path: Path,
                                                         chunk_rows: Callable[[int], None]) -> None:
    """Not in train's order: the rule compares the pair sets (sorted keys), and they are equal."""
    chunk_rows(2)
    processed = preprocess(tmp_path)
    users, movies = train_edges(processed)
    order = np.arange(len(users))[::-1]
    result = validate_graph(write_graph(tmp_path, processed, users[order], movies[order]), processed, tmp_path)
    passes(result, "validate_graph")


def test_graph_edge_pairs_differ_from_train(tmp_path: Path, chunk_rows: Callable[[int], None]) -> None:
    chunk_rows(2)
    processed = preprocess(tmp_path)
    users, movies = train_edges(processed)
    movies = movies.copy()
    movies[3] = 4  # user 3 watched movie 1 in train; the edge says the movie with index 4 (id 5)
    row = fails(lambda: validate_graph(write_graph(tmp_path, processed, users, movies), processed, tmp_path),
                "edges.npz", "edges_equal_train_pairs", 2)
    assert sorted((s["only_in"], s["user_id"], s["movie_id"]) for s in row["samples"]) == [
        ("edges", 3, 5), ("train", 3, 1)]


def test_graph_edge_arrays_of_different_lengths(tmp_path: Path) -> None:
    processed = preprocess(tmp_path)
    users, movies = train_edges(processed)
    row = fails(lambda: validate_graph(write_graph(tmp_path, processed, users, movies[:-1]), processed, tmp_path),
                "edges.npz", "schema", 2)
    assert {s["array"] for s in row["samples"]} == {"user_idx", "movie_idx"}


def test_graph_truncated_npz(tmp_path: Path) -> None:
    processed = preprocess(tmp_path)
    graph = build_graph(tmp_path, processed, dgl_graph=False)
    edges = graph.out("edges.npz")
    edges.write_bytes(edges.read_bytes()[: edges.stat().st_size // 2])
    with pytest.raises(zipfile.BadZipFile):
        zipfile.ZipFile(edges)
    row = fails(lambda: validate_graph(graph, processed, tmp_path), "edges.npz", "schema", 1)
    assert "unreadable" in row["detail"]["message"]
