"""The synthetic generator writes real MovieLens files: every format ingests, seeded bytes, planted structure."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from recsys_tasks.artifacts import dir_checksums
from recsys_tasks.data import synthetic as generator
from recsys_tasks.data.formats import MOVIES_SCHEMA, RATINGS_SCHEMA, USERS_SCHEMA
from recsys_tasks.data.ingest import ingest_snapshot
from recsys_tasks.data.synthetic import FORMATS, write_snapshot


@pytest.mark.parametrize(("fmt", "files", "has_users"), [
    ("ml-1m", {"ratings.dat", "movies.dat", "users.dat"}, True),
    ("ml-10m", {"ratings.dat", "movies.dat"}, False),
    ("ml-100k", {"u.data", "u.item", "u.genre", "u.user", "u.occupation", "u.info"}, True),
    ("csv", {"ratings.csv", "movies.csv"}, False),
])
def test_each_format_ingests_to_the_canonical_schema(synthetic: Callable[..., Path], tmp_path: Path, fmt: str,
                                                      files: set[str], has_users: bool) -> None:
    folder = synthetic(fmt)
    assert {p.name for p in folder.iterdir()} == files
    result = ingest_snapshot(str(folder), tmp_path, downloads=tmp_path / "dl", skip_checksum=True)
    assert result.manifest["release"] == fmt
    assert pq.read_schema(result.out("movies.parquet")).remove_metadata() == MOVIES_SCHEMA
    assert pq.read_schema(result.out("ratings.parquet")).remove_metadata() == RATINGS_SCHEMA
    assert result.out("users.parquet").is_file() == has_users
    if has_users:
        assert pq.read_schema(result.out("users.parquet")).remove_metadata() == USERS_SCHEMA
    counts = result.manifest["counts"]
    assert counts["users"] == 60 and counts["ratings"] >= 60 * 15
    ratings = pd.read_parquet(result.out("ratings.parquet"))
    assert not ratings.duplicated(["user_id", "movie_id"]).any()
    movies = pd.read_parquet(result.out("movies.parquet"))
    assert set(ratings["movie_id"]) <= set(movies["movie_id"])


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path: Path) -> None:
    for fmt in FORMATS:
        a = write_snapshot(tmp_path / f"a-{fmt}", n_users=40, fmt=fmt, seed=7)
        b = write_snapshot(tmp_path / f"b-{fmt}", n_users=40, fmt=fmt, seed=7)
        c = write_snapshot(tmp_path / f"c-{fmt}", n_users=40, fmt=fmt, seed=8)
        assert dir_checksums(a) == dir_checksums(b)
        assert dir_checksums(a) != dir_checksums(c)


def test_blocks_do_not_change_a_byte(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Users and lines are processed in blocks for memory; any block size writes the same files."""
    args = {"n_users": 70, "n_movies": 300, "ratings_per_user": (5, 90), "seed": 4}
    whole = {fmt: dir_checksums(write_snapshot(tmp_path / f"whole-{fmt}", fmt=fmt, **args)) for fmt in FORMATS}
    monkeypatch.setattr(generator, "USER_BLOCK", 3)
    monkeypatch.setattr(generator, "LINES_PER_WRITE", 97)
    for fmt in FORMATS:
        assert dir_checksums(write_snapshot(tmp_path / f"blocks-{fmt}", fmt=fmt, **args)) == whole[fmt], fmt


def test_ml10m_layout_half_stars_utf8_and_sorted_by_user_then_movie(synthetic: Callable[..., Path],
                                                                    tmp_path: Path) -> None:
    folder = synthetic("ml-10m")
    lines = (folder / "ratings.dat").read_text().splitlines()
    fields = [line.split("::") for line in lines]
    assert all(len(f) == 4 for f in fields)
    ratings = {f[2] for f in fields}
    assert ratings <= {"0.5", "1", "1.5", "2", "2.5", "3", "3.5", "4", "4.5", "5"}  # as ml-10m writes them
    assert ratings & {"0.5", "1.5", "2.5", "3.5", "4.5"} and ratings & {"1", "2", "3", "4", "5"}
    pairs = [(int(f[0]), int(f[1])) for f in fields]
    assert pairs == sorted(pairs)
    movies = (folder / "movies.dat").read_bytes()
    assert "Café".encode() in movies or "Noël".encode() in movies  # UTF-8, not latin-1
    result = ingest_snapshot(str(folder), tmp_path, downloads=tmp_path / "dl")
    assert result.manifest["release"] == "ml-10m" and not result.out("users.parquet").exists()
    titles = pd.read_parquet(result.out("movies.parquet"))["title"]
    assert titles.str.contains("Café|Noël").any()
    stored = pd.read_parquet(result.out("ratings.parquet"))["rating"]
    assert sorted(set(stored)) == sorted({float(r) for r in ratings})


def test_csv_round_trip_half_stars_quotes_and_utf8(synthetic: Callable[..., Path], tmp_path: Path) -> None:
    folder = synthetic("csv")
    raw = pd.read_csv(folder / "ratings.csv")
    result = ingest_snapshot(str(folder), tmp_path, downloads=tmp_path / "dl")
    ratings = pd.read_parquet(result.out("ratings.parquet"))
    assert ratings["rating"].tolist() == raw["rating"].astype("float32").tolist()
    assert ratings["user_id"].tolist() == raw["userId"].tolist()
    assert set(ratings["rating"]) - {1.0, 2.0, 3.0, 4.0, 5.0}, "half stars expected in the csv layout"
    assert set(ratings["rating"]) <= {x / 2 for x in range(1, 11)}
    movies = pd.read_parquet(result.out("movies.parquet"))
    raw_movies = pd.read_csv(folder / "movies.csv", encoding="utf-8")
    assert movies["title"].tolist() == raw_movies["title"].tolist()
    with_comma = movies.loc[movies["title"].str.contains(","), "title"]
    assert len(with_comma) and f'"{with_comma.iloc[0]}"' in (folder / "movies.csv").read_text(encoding="utf-8")
    assert movies["title"].str.contains("Café|Noël").any()  # non-ASCII survives as UTF-8
    assert movies["year"].isna().any()  # ml-latest has titles without a year
    assert not movies.loc[movies["year"].isna(), "title"].str.contains(r"\(\d{4}\)").any()


def test_planted_structure_is_learnable(tmp_path: Path) -> None:
    """The next movie is predictable from the previous one far beyond popularity (the sequential signal)."""
    folder = write_snapshot(tmp_path / "s", n_users=400, fmt="ml-1m", seed=3)
    r = pd.read_csv(folder / "ratings.dat", sep="::", engine="python", names=["u", "m", "r", "t"])
    r = r.sort_values(["u", "t", "m"])
    prev = r.groupby("u")["m"].shift()
    pairs = pd.DataFrame({"prev": prev, "next": r["m"]}).dropna().astype(int)
    half = len(pairs) // 2
    fit, held = pairs.iloc[:half], pairs.iloc[half:]
    best_next = fit.groupby("prev")["next"].agg(lambda s: s.value_counts().index[:10].tolist())
    hits = [n in best_next.get(p, []) for p, n in zip(held["prev"], held["next"])]
    top10 = set(fit["next"].value_counts().index[:10])
    popular = np.mean([n in top10 for n in held["next"]])
    assert np.mean(hits) > 3 * popular
