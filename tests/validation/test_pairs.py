"""The whole-file pair rules (validation/pairs.py) give the answers of what they replace: GX's compound
uniqueness on the whole frame, and the pandas outer join of two pair sets, on random pairs with
duplicates and nulls, in chunks, and with ids too far apart to pack by value."""

from __future__ import annotations

from pathlib import Path

import great_expectations.expectations as gxe
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from recsys_tasks.validation import runner
from recsys_tasks.validation.pairs import (
    Bounds,
    PairKeys,
    array_bounds,
    duplicate_rows_rule,
    numpy_source,
    same_pairs_rule,
)
from recsys_tasks.validation.runner import run_expectations

HUGE = 2**62  # ids spread over [-2^62, 2^62]: (a, b) cannot be packed by value


def random_pairs(seed: int, n: int, *, huge: bool = False, nulls: bool = False) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    users, movies = rng.integers(1, 12, n), rng.integers(1, 9, n)  # few values: many duplicates
    if huge:
        users = np.where(users % 2 == 0, users - HUGE, users + HUGE)
        movies = np.where(movies % 3 == 0, movies - HUGE, movies + HUGE)
    frame = pd.DataFrame({"user_id": pd.array(users, dtype="Int64"), "movie_id": pd.array(movies, dtype="Int64"),
                          "rating": rng.integers(1, 6, n).astype(np.float32)})
    if nulls:
        frame.loc[rng.random(n) < 0.1, "user_id"] = pd.NA
        frame.loc[rng.random(n) < 0.1, "movie_id"] = pd.NA
    return frame


@pytest.mark.parametrize(("huge", "nulls", "chunk"), [(False, False, 7), (False, True, 5), (True, False, 3),
                                                      (True, True, 1000)])
def test_duplicates_as_gx_finds_them(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, huge: bool, nulls: bool,
                                     chunk: int) -> None:
    monkeypatch.setattr(runner, "CHUNK_ROWS", chunk)
    frame = random_pairs(3, 60, huge=huge, nulls=nulls)
    path = tmp_path / "ratings.parquet"
    pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), path)
    got = duplicate_rows_rule("ratings.parquet", "user_movie_unique", path, ("user_id", "movie_id"), len(frame))
    want, = run_expectations(pd.read_parquet(path), "ratings.parquet", {
        "user_movie_unique": gxe.ExpectCompoundColumnsToBeUnique(column_list=["user_id", "movie_id"])})
    assert got.failing == want.failing > 0 and got.total == want.total == 60
    assert got.samples == want.samples  # the same first rows, whole, with their row numbers


def outer_join_answer(got: pd.DataFrame, want: pd.DataFrame) -> tuple[int, list[tuple]]:
    """What the gate computed before: pairs on one side only (outer join), sorted by pair."""
    both = got.merge(want, on=["a", "b"], how="outer", indicator=True)
    only = both[both["_merge"] != "both"]
    side = only["_merge"].map({"left_only": "got", "right_only": "want"}).astype(str)
    return len(only), sorted(zip(only["a"], only["b"], side))


@pytest.mark.parametrize(("huge", "chunk"), [(False, 4), (True, 6), (False, 1 << 20)])
def test_same_pairs_as_the_outer_join_finds_them(monkeypatch: pytest.MonkeyPatch, huge: bool, chunk: int) -> None:
    monkeypatch.setattr(runner, "CHUNK_ROWS", chunk)
    x, y = random_pairs(1, 40, huge=huge), random_pairs(2, 35, huge=huge)
    got = pd.DataFrame({"a": x["user_id"].to_numpy(np.int64), "b": x["movie_id"].to_numpy(np.int64)})
    want = pd.DataFrame({"a": y["user_id"].to_numpy(np.int64), "b": y["movie_id"].to_numpy(np.int64)})

    def source(frame: pd.DataFrame):  # chunks of 7 rows, whatever CHUNK_ROWS is
        return numpy_source(lambda: ((frame["a"].to_numpy()[i:i + 7], frame["b"].to_numpy()[i:i + 7])
                                     for i in range(0, len(frame), 7)))

    result = same_pairs_rule("edges.npz", "edges_equal_train_pairs", source(got), source(want), ("a", "b"),
                             ("got", "want"), (len(got), len(want)),
                             lambda: array_bounds(got["a"], got["b"]).union(array_bounds(want["a"], want["b"])))
    failing, only = outer_join_answer(got, want)
    assert result.failed and result.failing == failing and result.total == 40
    assert [(s["a"], s["b"], s["only_in"]) for s in result.samples] == only[:5]
    shuffled = got.sample(frac=1, random_state=0)  # the same pairs in another order
    same = same_pairs_rule("f", "r", source(shuffled), source(got), ("a", "b"), ("got", "want"), (40, 40),
                           lambda: array_bounds(got["a"], got["b"]))
    assert same.status == "passed" and same.failing == 0


def test_keys_sort_as_pairs_and_unpack_by_value_and_by_rank() -> None:
    a = pa.array([5, None, 5, -3, 7], pa.int64())
    b = pa.array([2, 9, None, 4, None], pa.int64())
    by_value = PairKeys(array_bounds(a, b), lambda: pytest.fail("ranks are not needed"))
    huge_a = pa.array([5 + HUGE, None, 5 + HUGE, -3 - HUGE, 7], pa.int64())
    by_rank = PairKeys(array_bounds(huge_a, b), lambda: (np.array([-3 - HUGE, 7, 5 + HUGE]), np.array([2, 4, 9])))
    assert by_rank.ranks is not None and by_value.ranks is None
    for keys, first in ((by_value, a), (by_rank, huge_a)):
        packed = keys.pack(first, b)
        pairs = list(zip(first.to_pylist(), b.to_pylist()))
        assert keys.unpack(packed) == ([p[0] for p in pairs], [p[1] for p in pairs])
        # pair order: nulls first within a column, then by value
        key = lambda p: tuple((v is not None, v or 0) for v in p)
        assert [pairs[i] for i in np.argsort(packed, kind="stable")] == sorted(pairs, key=key)
    both_null = PairKeys(Bounds((1, 2), (1, 2)), lambda: (np.zeros(0), np.zeros(0)))
    assert both_null.pack(pa.array([None, 1], pa.int64()), pa.array([None, 1], pa.int64()))[0] == -1
