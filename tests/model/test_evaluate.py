"""evaluate: the protocol on hand-built splits, and the step end to end (idempotent, contract outputs)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from recsys_tasks.artifacts import StepResult, run_step, write_json
from recsys_tasks.errors import InputError
from recsys_tasks.model.evaluate import METHODS, evaluate, evaluate_split

COLS = ["user_id", "movie_id", "timestamp"]


def frame(rows: list[tuple[int, int, int]]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=COLS).astype("int64")


def baseline_split() -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Catalog 10..60. User 9: history 40 then val 10 (the latest); test 20.

    Train popularity: 30 (4) > 10 (3) > 20 (2). 20 followed 10 twice, 30 once; 10 is co-watched with
    20 by 2 of its 3 watchers, with 30 by 1. User 8 re-watches 30 in test: skipped.
    """
    train = frame([(1, 10, 1), (1, 20, 2), (2, 10, 1), (2, 20, 2), (3, 10, 1), (3, 30, 2),
                   (4, 30, 1), (5, 30, 1), (6, 30, 1), (9, 40, 1), (8, 30, 1)])
    val = frame([(9, 10, 5), (8, 20, 2)])
    test = frame([(9, 20, 9), (8, 30, 3)])
    return train, val, test


CATALOG = np.array([10, 20, 30, 40, 50, 60], dtype=np.int64)


def test_baselines_on_a_hand_built_split() -> None:
    metrics, counts = evaluate_split(*baseline_split(), CATALOG, None)
    assert counts == {"users": 1, "skipped_rewatches": 1, "movies": 6}
    assert set(metrics) == {"popularity", "itemknn", "transitions"}
    # Popularity: 30 then 20 among the unseen (10 and 40 are in the history).
    assert metrics["popularity"]["mrr"] == pytest.approx(0.5)
    assert metrics["popularity"]["ndcg@10"] == pytest.approx(1 / math.log2(3))
    # From the val movie 10 (the latest): 20 is its most frequent successor and most co-watched movie.
    # From 40 (the latest train movie) neither would find it first.
    assert metrics["transitions"]["mrr"] == 1.0
    assert metrics["itemknn"]["mrr"] == 1.0


@pytest.mark.parametrize(("extra_test", "message"), [
    ((1, 99, 9), r"movie_id 99 .*\(file test.parquet, row 2, rule movie_in_catalog"),
    ((9, 30, 9), r"user 9 has more than one test row \(file test.parquet, row 2, rule one_test_row_per_user"),
    ((7, 30, 9), r"user 7 .* no train or val history \(file test.parquet, row 2, rule test_user_has_history"),
])
def test_bad_test_rows_are_input_errors(extra_test: tuple[int, int, int], message: str) -> None:
    train, val, test = baseline_split()
    test = pd.concat([test, frame([extra_test])], ignore_index=True)
    test.attrs["file"] = "test.parquet"
    with pytest.raises(InputError, match=message):
        evaluate_split(train, val, test, CATALOG, None)


def test_an_empty_test_split_is_an_input_error() -> None:
    train, val, test = baseline_split()
    with pytest.raises(InputError, match="rule test_not_empty"):
        evaluate_split(train, val, test.iloc[:0], CATALOG, None)
    with pytest.raises(InputError, match="rule test_not_only_rewatches"):
        evaluate_split(train, val, test.iloc[1:], CATALOG, None)


# The step end to end: movies 1..6 (index 0..5); each of 0, 2, 1 has one close neighbour (5, 3, 4).
def unit(v: list[float]) -> list[float]:
    return (np.asarray(v) / np.linalg.norm(v)).tolist()


EMB = np.array([[1, 0, 0, 0], [0, 0, 1, 0], [0, 1, 0, 0], unit([0, 1, 0, 0.2]),
                unit([0, 0, 1, 0.2]), unit([1, 0, 0, 0.2])], dtype=np.float32)
# User 1: 1, 2, val 3 (latest, index 2) -> test 4 (index 3). User 2: 2, 5 (the same second: by movie id),
# val 1 (index 0) -> test 6 (index 5). Rows out of order: the history is sorted by (timestamp, movie id).
TRAIN = [(1, 2, 20), (2, 5, 10), (1, 1, 10), (2, 2, 10), (3, 5, 10), (3, 6, 20)]
VAL = [(1, 3, 30), (2, 1, 30)]
TEST = [(1, 4, 40), (2, 6, 40)]
# Weight only on the third-newest movie (the oldest here): user 1 queries with 1 (index 0), user 2 with 2
# (index 1); read newest -> oldest by mistake, it would be DGL's rule.
RULE = {"name": "history", "weights": [0.0, 0.0, 1.0]}


def fake_step(root: Path, name: str, files: dict[str, object], facts: dict | None = None,
              tag: str = "") -> StepResult:
    """A finished upstream step folder holding `files` (the contract formats), made by run_step."""

    def build(tmp: Path) -> dict:
        for fname, obj in files.items():
            if isinstance(obj, pd.DataFrame):
                obj.to_parquet(tmp / fname, index=False)
            elif fname.endswith(".npz"):
                np.savez(tmp / fname, **obj)
            elif fname.endswith(".npy"):
                np.save(tmp / fname, obj)
            else:
                write_json(tmp / fname, obj)
        return facts or {}

    return run_step(root, name, inputs={}, params={"files": sorted(files), "tag": tag}, build=build)


@pytest.fixture
def upstream(tmp_path: Path) -> tuple[StepResult, StepResult, StepResult, Path]:
    root = tmp_path / "artifacts"
    processed = fake_step(root, "preprocess", {"train.parquet": frame(TRAIN), "val.parquet": frame(VAL),
                                               "test.parquet": frame(TEST)})
    graph = fake_step(root, "build_graph", {"id_map.npz": {"movie_ids": np.arange(1, 7, dtype=np.int64),
                                                           "user_ids": np.arange(1, 4, dtype=np.int64)}})
    trained = fake_step(root, "train", {"embeddings.npy": EMB, "rule.json": RULE},
                        facts={"model_version": "v0123456789ab"})
    return processed, graph, trained, root


def test_step_end_to_end_and_skipped_on_rerun(upstream) -> None:
    processed, graph, trained, root = upstream
    result = evaluate(processed, graph, trained, root)
    assert not result.skipped
    metrics = result.manifest["metrics"]
    assert result.manifest["model_version"] == "v0123456789ab"
    assert list(metrics) == list(METHODS)
    for m in metrics.values():
        assert set(m) == {"hr@10", "ndcg@10", "recall@20", "mrr", "users"} and m["users"] == 2
    # The latest movie's nearest unseen neighbour is each user's test movie.
    assert metrics["pinsage_latest"]["mrr"] == 1.0
    # rule.json is applied to the history oldest -> newest: user 1's query (index 0) puts index 5 first
    # and ties the target with index 4 -> rank 3 of 3 unseen; user 2's (index 1) scores all 3 at 0 -> 3.
    assert metrics["pinsage_history"]["mrr"] == pytest.approx(1 / 3)
    saved = json.loads(result.out("metrics.json").read_text())
    assert saved["metrics"] == metrics and saved["model_version"] == "v0123456789ab"

    again = evaluate(processed, graph, trained, root)
    assert again.skipped and again.path == result.path
    assert not evaluate(processed, graph, trained, root, force=True).skipped


def test_embeddings_must_cover_the_catalog(upstream) -> None:
    processed, graph, _, root = upstream
    trained = fake_step(root, "train", {"embeddings.npy": EMB[:5], "rule.json": RULE},
                        facts={"model_version": "v0123456789ab"}, tag="short")
    with pytest.raises(InputError, match="one_row_per_movie"):
        evaluate(processed, graph, trained, root)
