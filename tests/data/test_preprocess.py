"""preprocess: the per-user split rule on a hand-built example, features and vocabularies, no leakage."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest

from recsys_tasks.artifacts import StepResult
from recsys_tasks.data.ingest import ingest_snapshot
from recsys_tasks.data.preprocess import PROCESSED_MOVIES_SCHEMA, preprocess

MOVIES = """\
3::Toy Story (1995)::Animation|Children's|Comedy
5::Toy Story 2 (1999)::Animation|Children's|Comedy
7::Story of Us, The (1999)::Comedy|Drama
10::Heat (1995)::Action|Crime|Thriller
11::One Two Three Four Five Six Seven Eight Nine Ten (1961)::
"""
# user 1: timestamps tie at 300 -> movie id breaks the tie: 3 before 5
RATINGS = """\
1::5::4::300
1::10::3::100
1::7::5::200
1::3::2::300
2::3::4::500
2::5::5::400
3::7::1::900
3::10::2::700
3::3::3::800
4::11::5::100
"""
USERS = "".join(f"{u}::M::25::1::12345\n" for u in range(1, 5))


@pytest.fixture
def tiny(tmp_path: Path) -> tuple[StepResult, Path]:
    src = tmp_path / "tiny"
    src.mkdir()
    for name, text in {"movies.dat": MOVIES, "ratings.dat": RATINGS, "users.dat": USERS}.items():
        (src / name).write_text(text, encoding="latin-1")
    root = tmp_path / "artifacts"
    return ingest_snapshot(str(src), root, downloads=tmp_path / "dl", skip_checksum=True), root


def _pairs(result: StepResult, split: str) -> list[tuple[int, int]]:
    frame = pd.read_parquet(result.out(f"{split}.parquet"))
    return list(zip(frame["user_id"], frame["movie_id"]))


def test_split_rule_on_a_hand_built_example(tiny: tuple[StepResult, Path]) -> None:
    result = preprocess(*tiny)
    assert _pairs(result, "test") == [(1, 5), (3, 7)]
    assert _pairs(result, "val") == [(1, 3), (3, 3)]
    assert _pairs(result, "train") == [(1, 10), (1, 7), (2, 5), (2, 3), (3, 10), (4, 11)]  # < 3 ratings: all train
    train = pq.read_table(result.out("train.parquet"))
    assert train.schema.remove_metadata() == pq.read_schema(tiny[0].out("ratings.parquet")).remove_metadata()
    assert train.slice(0, 1).to_pylist() == [{"user_id": 1, "movie_id": 10, "rating": 3.0, "timestamp": 100}]
    counts = result.manifest["counts"]
    assert (counts["train"], counts["val"], counts["test"], counts["users"]) == (6, 2, 2, 4)
    assert result.manifest["snapshot_id"] == tiny[0].manifest["snapshot_id"]
    assert result.manifest["inputs"] == {"ingest": tiny[0].key}


def test_movie_features_and_vocabularies(tiny: tuple[StepResult, Path]) -> None:
    result = preprocess(*tiny)
    vocab = json.loads(result.out("vocab.json").read_text())
    assert vocab["genres"] == ["Action", "Animation", "Children's", "Comedy", "Crime", "Drama", "Thriller"]
    assert vocab["tokens"] == ["<pad>", "<unk>", "story", "toy"]  # in >= 2 titles; by count, then token
    table = pq.read_table(result.out("movies.parquet"))
    assert table.schema.remove_metadata() == PROCESSED_MOVIES_SCHEMA
    rows = {r["movie_id"]: r for r in table.to_pylist()}
    assert table["movie_id"].to_pylist() == [3, 5, 7, 10, 11]
    assert rows[3]["title_tokens"] == [3, 2] and rows[3]["genre_ids"] == [1, 2, 3]
    assert rows[5]["title_tokens"] == [3, 2, 1]  # "2" is in one title only: <unk>
    assert rows[7]["title_tokens"] == [2, 1, 1, 1] and rows[7]["year"] == 1999
    assert rows[11]["title_tokens"] == [1] * 8 and rows[11]["genre_ids"] == []  # at most 8 tokens
    assert rows[11]["title"] == "One Two Three Four Five Six Seven Eight Nine Ten (1961)"
    assert pq.read_table(result.out("users.parquet")).num_rows == 4


def test_no_leakage_on_a_synthetic_snapshot(synthetic: Callable[..., Path], tmp_path: Path) -> None:
    ingested = ingest_snapshot(str(synthetic("ml-100k")), tmp_path, downloads=tmp_path / "dl")
    result = preprocess(ingested, tmp_path)
    ratings = pd.read_parquet(ingested.out("ratings.parquet"))
    splits = {s: pd.read_parquet(result.out(f"{s}.parquet")) for s in ("train", "val", "test")}
    keys = ["user_id", "timestamp", "movie_id"]
    for frame in splits.values():
        assert frame.equals(frame.sort_values(keys, kind="stable").reset_index(drop=True))
    together = pd.concat(splits.values()).sort_values(keys).reset_index(drop=True)
    assert together.equals(ratings.sort_values(keys).reset_index(drop=True))  # a partition of the ratings
    per_user = ratings.groupby("user_id").size()
    eligible = set(per_user.index[per_user >= 3])
    for held in ("val", "test"):
        assert splits[held]["user_id"].is_unique and set(splits[held]["user_id"]) == eligible
    last_train = splits["train"].groupby("user_id")[["timestamp", "movie_id"]].max()
    val = splits["val"].set_index("user_id")
    test = splits["test"].set_index("user_id")
    assert (val["timestamp"] >= last_train.loc[val.index, "timestamp"]).all()
    assert ((test["timestamp"] > val["timestamp"]) |
            ((test["timestamp"] == val["timestamp"]) & (test["movie_id"] > val["movie_id"]))).all()
    train_pairs = set(zip(splits["train"]["user_id"], splits["train"]["movie_id"]))
    held_out = set(zip(val.index, val["movie_id"])) | set(zip(test.index, test["movie_id"]))
    assert len(held_out) == 2 * len(eligible) and not train_pairs & held_out
