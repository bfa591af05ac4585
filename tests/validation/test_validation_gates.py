"""The four validation gates on small step folders written here in the contract formats.

Every failing case checks the whole chain a person relies on: GateFailure names the file and the rule,
report.json exists where the exception says (inside the kept `<key>.failed` folder) with the failing
count and sample rows, and report.html is beside it.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from recsys_tasks.artifacts import StepResult, run_step
from recsys_tasks.data.formats import MAX_GENRES_CHARS, MAX_TITLE_CHARS
from recsys_tasks.errors import GateFailure, InputError
from recsys_tasks.validation.gates import (
    validate_embeddings,
    validate_graph,
    validate_processed,
    validate_raw,
)

T0 = 978_300_000  # 2001-01-01, inside every plausibility window
SPLIT_TYPES = {"user_id": pa.int64(), "movie_id": pa.int64(), "rating": pa.float32(), "timestamp": pa.int64()}


# ---------------------------------------------------------------- builders (contract formats)

def write(path: Path, columns: dict[str, tuple[list[Any], pa.DataType]]) -> None:
    pq.write_table(pa.table({name: pa.array(values, type=t) for name, (values, t) in columns.items()}), path)


def write_split(path: Path, frame: pd.DataFrame) -> None:
    write(path, {c: (frame[c].tolist(), t) for c, t in SPLIT_TYPES.items()})


def movies_frame() -> pd.DataFrame:
    return pd.DataFrame({
        "movie_id": [1, 2, 3, 4, 5],
        "title": ["Toy Story (1995)", "Heat (1995)", "Alien (1979)", "Metropolis (1927)", "Untitled"],
        "year": [1995, 1995, 1979, 1927, None],
        "genres": ["Animation|Comedy", "Action", "Horror|Sci-Fi", "Sci-Fi", ""]})


def ratings_frame() -> pd.DataFrame:
    """Users 1-3 rate 4, 3 and 2 movies (user 3 too few for a holdout); distinct timestamps."""
    pairs = [(1, 1), (1, 2), (1, 3), (1, 4), (2, 2), (2, 3), (2, 5), (3, 1), (3, 4)]
    return pd.DataFrame({"user_id": [u for u, _ in pairs], "movie_id": [m for _, m in pairs],
                         "rating": [4.0, 5.0, 3.0, 1.0, 2.0, 4.0, 5.0, 3.0, 4.0],
                         "timestamp": [T0 + 60 * i for i in range(len(pairs))]})


def ingest(root: Path, *, release: str = "ml-1m", ratings: pd.DataFrame | None = None,
           movies: pd.DataFrame | None = None,
           rating_type: pa.DataType = SPLIT_TYPES["rating"]) -> StepResult:
    ratings = ratings_frame() if ratings is None else ratings
    movies = movies_frame() if movies is None else movies

    def build(tmp: Path) -> dict[str, Any]:
        write(tmp / "movies.parquet", {"movie_id": (movies["movie_id"].tolist(), pa.int64()),
                                       "title": (movies["title"].tolist(), pa.string()),
                                       "year": (nullable(movies["year"]), pa.int32()),
                                       "genres": (movies["genres"].tolist(), pa.string())})
        types = SPLIT_TYPES | {"rating": rating_type}
        write(tmp / "ratings.parquet", {c: (nullable(ratings[c]), t) for c, t in types.items()})
        if release in ("ml-1m", "ml-100k"):  # the releases that ship a users file
            write(tmp / "users.parquet", {
                "user_id": ([1, 2, 3], pa.int64()), "gender": (["F", "M", "M"], pa.string()),
                "age": ([25, 35, 18], pa.int32()), "occupation": ([1, 2, 3], pa.int64()),
                "zip": (["10001", "94110", "60601"], pa.string())})
        return {"release": release, "snapshot_id": "snap"}

    return run_step(root, "ingest", inputs={}, params={}, build=build, key="snap")


def nullable(column: pd.Series) -> list[Any]:
    return column.astype(object).where(column.notna(), None).tolist()


def split(ratings: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """The evaluation protocol: per user by (timestamp, movie_id), last -> test, second-to-last -> val."""
    ordered = ratings.sort_values(["user_id", "timestamp", "movie_id"]).reset_index(drop=True)
    size = ordered.groupby("user_id")["movie_id"].transform("size")
    from_end = ordered.groupby("user_id").cumcount(ascending=False)
    held = size >= 3
    return {"train": ordered[~held | (from_end >= 2)], "val": ordered[held & (from_end == 1)],
            "test": ordered[held & (from_end == 0)]}


VOCAB = {"genres": ["Action", "Animation", "Comedy", "Horror", "Sci-Fi"],
         "tokens": ["<pad>", "<unk>", "toy", "story", "heat", "alien", "metropolis", "untitled"]}


def preprocess(root: Path, *, tamper: Callable[[dict[str, pd.DataFrame]], None] = lambda f: None,
               genre_ids: list[list[int]] | None = None, years: list[Any] | None = None) -> StepResult:
    frames = split(ratings_frame())
    tamper(frames)
    movies = movies_frame()

    def build(tmp: Path) -> dict[str, Any]:
        write(tmp / "movies.parquet", {
            "movie_id": (movies["movie_id"].tolist(), pa.int64()),
            "title": (movies["title"].tolist(), pa.string()),
            "year": (years or [1995, 1995, 1979, 1927, None], pa.int32()),
            "genres": (movies["genres"].tolist(), pa.string()),
            "genre_ids": (genre_ids or [[1, 2], [0], [3, 4], [4], []], pa.list_(pa.int32())),
            "title_tokens": ([[2, 3], [4], [5], [6], [7]], pa.list_(pa.int32()))})
        (tmp / "vocab.json").write_text(json.dumps(VOCAB))
        for name, frame in frames.items():
            write_split(tmp / f"{name}.parquet", frame)
        return {}

    return run_step(root, "preprocess", inputs={}, params={}, build=build)


Mirror = Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]


def build_graph(root: Path, processed: StepResult, *, drop_edge: bool = False,
                mirror: Mirror | None = None, dgl_graph: bool = True) -> StepResult:
    import dgl
    import torch

    train = pd.read_parquet(processed.out("train.parquet"))
    movie_ids = np.sort(pd.read_parquet(processed.out("movies.parquet"))["movie_id"].to_numpy())
    user_ids, user_idx = np.unique(train["user_id"].to_numpy(), return_inverse=True)
    movie_idx = np.searchsorted(movie_ids, train["movie_id"].to_numpy())
    if drop_edge:
        user_idx, movie_idx = user_idx[1:], movie_idx[1:]
    back_src, back_dst = mirror(movie_idx, user_idx) if mirror else (movie_idx, user_idx)

    def build(tmp: Path) -> dict[str, Any]:
        n = len(user_idx)
        np.savez(tmp / "edges.npz", user_idx=user_idx.astype(np.int64), movie_idx=movie_idx.astype(np.int64),
                 rating=np.ones(n, np.float32), timestamp=np.full(n, T0, np.int64), n_users=len(user_ids),
                 n_movies=len(movie_ids))
        np.savez(tmp / "id_map.npz", movie_ids=movie_ids, user_ids=user_ids)
        if not dgl_graph:  # as build_graph does where DGL cannot be imported
            return {"dgl_graph": False}
        graph = dgl.heterograph(
            {("user", "watched", "movie"): (torch.tensor(user_idx), torch.tensor(movie_idx)),
             ("movie", "watched-by", "user"): (torch.tensor(back_src), torch.tensor(back_dst))},
            num_nodes_dict={"user": len(user_ids), "movie": len(movie_ids)})
        dgl.save_graphs(str(tmp / "graph.bin"), [graph])
        return {"dgl_graph": True}

    return run_step(root, "build_graph", inputs={"preprocess": processed.key}, params={}, build=build)


def export(root: Path, vectors: np.ndarray, movie_ids: list[int], *, dim: int | None = None,
           normalized: bool = True) -> StepResult:
    def build(tmp: Path) -> dict[str, Any]:
        flat = pa.array(vectors.astype(np.float32).ravel(), pa.float32())
        table = pa.table({"movie_id": pa.array(movie_ids, pa.int64()),
                          "vector": pa.FixedSizeListArray.from_arrays(flat, vectors.shape[1])})
        pq.write_table(table, tmp / "embeddings.parquet")
        return {"dim": dim or vectors.shape[1], "metric": "IP", "normalized": normalized,
                "counts": {"movies": len(movie_ids)}}

    return run_step(root, "export_embeddings", inputs={}, params={}, build=build)


def unit_vectors(n: int = 5, dim: int = 8) -> np.ndarray:
    v = np.random.default_rng(1).normal(size=(n, dim))
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def fails(call: Callable[[], StepResult], file: str, rule: str, failing: int) -> dict[str, Any]:
    """Assert a gate fails on `rule` of `file` with `failing` offenders; return that report row."""
    with pytest.raises(GateFailure) as info:
        call()
    error = info.value
    assert file in str(error) and rule in str(error)
    assert error.report is not None and error.report.is_file(), error.report
    assert error.report.parent.name.endswith(".failed")
    assert (error.report.parent / "report.html").is_file()
    report = json.loads(error.report.read_text())
    assert report["passed"] is False
    row = next(r for r in report["results"] if r["file"] == file and r["rule"] == rule)
    assert row["status"] == "failed" and row["failing"] == failing, row
    assert rule in (error.report.parent / "report.html").read_text()
    return row


def passes(result: StepResult, gate: str) -> None:
    facts = result.manifest
    assert facts["gate"] == gate and facts["passed"] is True and facts["rules"] > 5
    report = json.loads(result.out("report.json").read_text())
    assert report["passed"] and all(r["status"] != "failed" for r in report["results"])
    assert result.out("report.html").is_file()


# ---------------------------------------------------------------- raw

def test_raw_passes_and_rerun_is_skipped(tmp_path: Path) -> None:
    raw = ingest(tmp_path)
    result = validate_raw(raw, tmp_path)
    passes(result, "validate_raw")
    assert result.manifest["counts"] == {"movies": 5, "ratings": 9, "rated_movies": 5, "users": 3}
    again = validate_raw(raw, tmp_path)
    assert again.skipped and again.path == result.path


def test_raw_duplicate_pair(tmp_path: Path) -> None:
    ratings = ratings_frame()
    ratings.loc[4, ["user_id", "movie_id"]] = [1, 3]  # row 5 repeats row 3's (user, movie)
    row = fails(lambda: validate_raw(ingest(tmp_path, ratings=ratings), tmp_path),
                "ratings.parquet", "user_movie_unique", 2)
    assert [s["row"] for s in row["samples"]] == [3, 5]
    assert row["samples"][1] | {"rating": None} == {"row": 5, "user_id": 1, "movie_id": 3, "rating": None,
                                                    "timestamp": T0 + 240}


@pytest.mark.parametrize("release", ["ml-1m", "ml-100k", "ml-10m", "csv"])
def test_raw_rating_out_of_range(tmp_path: Path, release: str) -> None:
    ratings = ratings_frame()
    ratings.loc[[2, 6], "rating"] = [5.5, 0.0]
    row = fails(lambda: validate_raw(ingest(tmp_path, release=release, ratings=ratings), tmp_path),
                "ratings.parquet", "rating_in_allowed_set", 2)
    assert [(s["row"], s["rating"]) for s in row["samples"]] == [(3, 5.5), (7, 0.0)]


@pytest.mark.parametrize(("release", "allowed"), [("ml-1m", False), ("ml-100k", False), ("ml-10m", True),
                                                  ("csv", True)])
def test_raw_half_stars_only_where_the_release_has_them(tmp_path: Path, release: str, allowed: bool) -> None:
    ratings = ratings_frame()
    ratings.loc[0, "rating"] = 2.5
    gate = lambda: validate_raw(ingest(tmp_path, release=release, ratings=ratings), tmp_path)
    if allowed:
        passes(gate(), "validate_raw")
    else:
        fails(gate, "ratings.parquet", "rating_in_allowed_set", 1)


def test_raw_null_key(tmp_path: Path) -> None:
    ratings = ratings_frame().astype({"user_id": "Int64"})
    ratings.loc[1, "user_id"] = pd.NA
    row = fails(lambda: validate_raw(ingest(tmp_path, ratings=ratings), tmp_path),
                "ratings.parquet", "user_id_not_null", 1)
    assert row["samples"][0]["row"] == 2 and row["samples"][0]["user_id"] is None


def test_raw_unknown_movie_rated(tmp_path: Path) -> None:
    ratings = ratings_frame()
    ratings.loc[8, "movie_id"] = 99
    row = fails(lambda: validate_raw(ingest(tmp_path, ratings=ratings), tmp_path),
                "ratings.parquet", "movie_in_movies", 1)
    assert row["samples"][0]["row"] == 9 and row["samples"][0]["movie_id"] == 99


@pytest.mark.parametrize(("column", "limit"), [("title", MAX_TITLE_CHARS), ("genres", MAX_GENRES_CHARS)])
def test_raw_value_longer_than_the_catalog_column(tmp_path: Path, column: str, limit: int) -> None:
    """A title over 512 characters (genres over 255) would pass every step and then fail load_catalog on
    MariaDB: the raw gate names the file, the row and the rule. Exactly the limit passes (in characters,
    not bytes: 'é' is one)."""
    movies = movies_frame()
    movies.loc[2, column] = "é" * (limit + 1)
    movies.loc[3, column] = "é" * limit
    with pytest.raises(GateFailure) as info:
        validate_raw(ingest(tmp_path, movies=movies), tmp_path)
    rule = f"{column}_at_most_{limit}_chars"
    assert "movies.parquet" in str(info.value) and rule in str(info.value) and '"row": 3' in str(info.value)
    assert info.value.rule == rule and Path(info.value.file).name == "movies.parquet"
    report = json.loads(info.value.report.read_text())
    failed = [r for r in report["results"] if r["status"] == "failed"]
    assert [(r["file"], r["rule"], r["failing"]) for r in failed] == [("movies.parquet", rule, 1)]
    assert failed[0]["samples"][0]["row"] == 3 and failed[0]["samples"][0]["movie_id"] == 3
    assert failed[0]["check"] == "expect_column_value_lengths_to_be_between"


def test_raw_implausible_timestamps(tmp_path: Path) -> None:
    ratings = ratings_frame()
    ratings.loc[0, "timestamp"] = 631_152_000  # 1990, before MovieLens
    ratings.loc[3, "timestamp"] = 4_102_444_800  # 2100
    row = fails(lambda: validate_raw(ingest(tmp_path, ratings=ratings), tmp_path),
                "ratings.parquet", "timestamp_plausible", 2)
    assert [s["row"] for s in row["samples"]] == [1, 4]


def test_raw_missing_file(tmp_path: Path) -> None:
    raw = ingest(tmp_path)
    raw.out("movies.parquet").unlink()
    row = fails(lambda: validate_raw(raw, tmp_path), "movies.parquet", "schema", 1)
    assert "movies.parquet" in row["detail"]["message"]


def test_raw_wrong_column_type_stops_before_value_rules(tmp_path: Path) -> None:
    row = fails(lambda: validate_raw(ingest(tmp_path, rating_type=pa.float64()), tmp_path),
                "ratings.parquet", "schema", 1)
    assert row["samples"] == [{"column": "rating", "expected": "float32", "found": "double"}]


def test_raw_unknown_release_is_bad_input(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="known_release"):
        validate_raw(ingest(tmp_path, release="ml-25x"), tmp_path)


# ---------------------------------------------------------------- processed

def test_processed_passes(tmp_path: Path) -> None:
    result = validate_processed(preprocess(tmp_path), tmp_path)
    passes(result, "validate_processed")
    assert result.manifest["counts"] == {"movies": 5, "train": 5, "val": 2, "test": 2, "users": 3}


def test_processed_leakage_test_pair_in_train(tmp_path: Path) -> None:
    def leak(f: dict[str, pd.DataFrame]) -> None:
        f["train"] = pd.concat([f["train"], f["test"].iloc[[0]].assign(timestamp=T0 - 60)]).sort_values(
            ["user_id", "timestamp", "movie_id"])

    row = fails(lambda: validate_processed(preprocess(tmp_path, tamper=leak), tmp_path),
                "test.parquet", "pair_not_in_train", 1)
    sample = row["samples"][0]
    assert (sample["row"], sample["user_id"], sample["movie_id"]) == (1, 1, 4)


def test_processed_test_and_val_overlap(tmp_path: Path) -> None:
    def overlap(f: dict[str, pd.DataFrame]) -> None:
        f["test"] = f["test"].copy()
        f["test"].iloc[1, f["test"].columns.get_loc("movie_id")] = f["val"]["movie_id"].iloc[1]

    fails(lambda: validate_processed(preprocess(tmp_path, tamper=overlap), tmp_path),
          "test.parquet", "disjoint_from_val", 1)


def test_processed_wrong_split_counts(tmp_path: Path) -> None:
    def drop_val(f: dict[str, pd.DataFrame]) -> None:  # user 2's val item moved back into train
        moved = f["val"][f["val"]["user_id"] == 2]
        f["train"] = pd.concat([f["train"], moved]).sort_values(["user_id", "timestamp", "movie_id"])
        f["val"] = f["val"][f["val"]["user_id"] != 2]

    row = fails(lambda: validate_processed(preprocess(tmp_path, tamper=drop_val), tmp_path),
                "val.parquet", "one_per_eligible_user", 1)
    assert row["samples"] == [{"user_id": 2, "train": 2, "val": 0, "test": 1}]


def test_processed_holdout_not_latest(tmp_path: Path) -> None:
    def reorder(f: dict[str, pd.DataFrame]) -> None:
        f["test"] = f["test"].assign(timestamp=T0 - 1)

    fails(lambda: validate_processed(preprocess(tmp_path, tamper=reorder), tmp_path),
          "test.parquet", "holdout_after_history", 2)


def test_processed_feature_ranges(tmp_path: Path) -> None:
    processed = preprocess(tmp_path, genre_ids=[[1, 2], [0], [3, 9], [4], []],
                           years=[1995, 1700, 1979, 1927, None])
    with pytest.raises(GateFailure) as info:
        validate_processed(processed, tmp_path)
    report = json.loads(info.value.report.read_text())
    failed = {r["rule"]: r for r in report["results"] if r["status"] == "failed"}
    assert set(failed) == {"year_plausible", "genre_ids_in_vocab"}
    assert failed["year_plausible"]["samples"][0]["row"] == 2
    assert failed["genre_ids_in_vocab"]["samples"][0] | {"title_tokens": None} == {
        "row": 3, "movie_id": 3, "title": "Alien (1979)", "year": 1979, "genres": "Horror|Sci-Fi",
        "genre_ids": [3, 9], "title_tokens": None}


# ---------------------------------------------------------------- graph

def test_graph_passes_with_degree_stats(tmp_path: Path) -> None:
    processed = preprocess(tmp_path)
    result = validate_graph(build_graph(tmp_path, processed), processed, tmp_path)
    passes(result, "validate_graph")
    report = json.loads(result.out("report.json").read_text())
    assert report["stats"]["movie_degree"] == {"min": 0, "median": 1.0, "max": 2, "isolated": 2}
    assert report["stats"]["user_degree"]["min"] == 1
    assert next(r for r in report["results"] if r["rule"] == "mirrored_edges")["status"] == "passed"


def test_graph_without_graph_bin_checks_the_arrays(tmp_path: Path) -> None:
    processed = preprocess(tmp_path)
    result = validate_graph(build_graph(tmp_path, processed, dgl_graph=False), processed, tmp_path)
    passes(result, "validate_graph")
    report = json.loads(result.out("report.json").read_text())
    assert next(r for r in report["results"] if r["rule"] == "mirrored_edges")["status"] == "skipped"


def test_graph_edge_count_mismatch(tmp_path: Path) -> None:
    processed = preprocess(tmp_path)
    row = fails(lambda: validate_graph(build_graph(tmp_path, processed, drop_edge=True), processed, tmp_path),
                "edges.npz", "edge_count_equals_train", 1)
    assert row["detail"] == {"observed": 4, "expected": 5}


def test_graph_mirrored_edges_mismatch(tmp_path: Path) -> None:
    processed = preprocess(tmp_path)
    # watched-by gets (movie, user) pairs with users shifted: 2 watched pairs lost, 1 made up
    graph = build_graph(tmp_path, processed, mirror=lambda m, u: (m, np.roll(u, 1)))
    row = fails(lambda: validate_graph(graph, processed, tmp_path), "graph.bin", "mirrored_edges", 3)
    assert {s["only_in"] for s in row["samples"]} == {"watched", "watched-by"}


# ---------------------------------------------------------------- embeddings

def test_embeddings_pass(tmp_path: Path) -> None:
    processed = preprocess(tmp_path)
    result = validate_embeddings(export(tmp_path, unit_vectors(), [1, 2, 3, 4, 5]), processed, tmp_path)
    passes(result, "validate_embeddings")
    assert result.manifest["counts"] == {"movies": 5, "catalog": 5, "dim": 8}


def test_embeddings_nan(tmp_path: Path) -> None:
    vectors = unit_vectors()
    vectors[3, 2] = np.nan
    row = fails(lambda: validate_embeddings(export(tmp_path, vectors, [1, 2, 3, 4, 5]), preprocess(tmp_path),
                                            tmp_path), "embeddings.parquet", "vector_finite", 1)
    assert row["samples"][0]["row"] == 4 and row["samples"][0]["movie_id"] == 4


def test_embeddings_missing_movie(tmp_path: Path) -> None:
    exported = export(tmp_path, unit_vectors(4), [1, 2, 4, 5])
    row = fails(lambda: validate_embeddings(exported, preprocess(tmp_path), tmp_path),
                "embeddings.parquet", "catalog_movie_has_vector", 1)
    assert row["samples"] == [{"movie_id": 3, "title": "Alien (1979)"}]


def test_embeddings_wrong_norm(tmp_path: Path) -> None:
    vectors = unit_vectors()
    vectors[0] *= 1.01
    row = fails(lambda: validate_embeddings(export(tmp_path, vectors, [1, 2, 3, 4, 5]), preprocess(tmp_path),
                                            tmp_path), "embeddings.parquet", "unit_norm", 1)
    assert row["samples"][0]["row"] == 1 and row["samples"][0]["norm"] == pytest.approx(1.01, abs=1e-5)


def test_embeddings_dimension_differs_from_manifest(tmp_path: Path) -> None:
    fails(lambda: validate_embeddings(export(tmp_path, unit_vectors(), [1, 2, 3, 4, 5], dim=16),
                                      preprocess(tmp_path), tmp_path),
          "embeddings.parquet", "dimension_equals_manifest", 8)


def test_embeddings_degenerate(tmp_path: Path) -> None:
    same = np.tile(unit_vectors(1), (5, 1))
    exported = export(tmp_path, same, [1, 2, 3, 4, 5])
    row = fails(lambda: validate_embeddings(exported, preprocess(tmp_path), tmp_path),
                "embeddings.parquet", "not_degenerate", 5)
    assert row["detail"]["mean_pairwise_cosine"] == pytest.approx(1.0)
