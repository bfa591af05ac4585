"""build_graph on a small planted catalog: node ids from the id map, every catalog movie a node, bad input."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from recsys_tasks.artifacts import StepResult
from recsys_tasks.errors import InputError
from recsys_tasks.graph.arrays import load_arrays
from recsys_tasks.graph.build import build_graph, graph_arrays

os.environ.setdefault("DGLBACKEND", "pytorch")
GENRES = ["Action", "Comedy", "Drama"]


def write_planted(
    folder: Path,
    *,
    n_users: int = 150,
    n_movies: int = 40,
    unrated: int = 2,
    length: int = 12,
    noise: float = 0.1,
    seed: int = 0,
) -> StepResult:
    """Preprocess-format files where each user walks the catalog in steps of +1 (mod n_movies) from a random
    start, with `noise` random picks: next-movie structure a model can learn and popularity cannot.
    The last `unrated` catalog movies (ids above the rest) are never watched."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    ids = np.arange(1, n_movies + unrated + 1, dtype=np.int64) * 10
    movies = pd.DataFrame(
        {
            "movie_id": ids,
            "title": [f"Movie {i}" for i in ids],
            "year": pd.array([1950 + int(i) % 50 if i % 7 else None for i in ids], dtype="Int32"),
            "genres": ["|".join(GENRES[j] for j in range(3) if (i // 10 + j) % 3 == 0) for i in ids],
        }
    )
    movies["genre_ids"] = [[GENRES.index(g) for g in s.split("|") if g] for s in movies["genres"]]
    movies["title_tokens"] = [[2, 3 + int(i // 10) % 5] for i in ids]
    movies.to_parquet(folder / "movies.parquet", index=False)
    (folder / "vocab.json").write_text(
        json.dumps({"genres": GENRES, "tokens": ["<pad>", "<unk>", "movie", *"abcde"]})
    )
    rows = []
    for user in range(1, n_users + 1):
        pos, watched = int(rng.integers(n_movies)), []
        while len(watched) < length:
            if pos not in watched:
                watched.append(pos)
            pos = int(rng.integers(n_movies)) if rng.random() < noise else (pos + 1) % n_movies
        rows += [(user, int(ids[m]), 4.0, 1_000_000 + 60 * t) for t, m in enumerate(watched)]
    r = pd.DataFrame(rows, columns=["user_id", "movie_id", "rating", "timestamp"]).astype(
        {"rating": "float32"}
    )
    last = r.groupby("user_id").cumcount(ascending=False)
    r[last >= 2].to_parquet(folder / "train.parquet", index=False)
    r[last == 1].to_parquet(folder / "val.parquet", index=False)
    r[last == 0].to_parquet(folder / "test.parquet", index=False)
    return StepResult("preprocess", folder, {"key": f"planted{seed}-{n_users}-{n_movies}"}, skipped=True)


def test_graph_has_every_catalog_movie_and_only_train_edges(tmp_path: Path) -> None:
    processed = write_planted(tmp_path / "pre", n_users=30)
    result = build_graph(processed, tmp_path / "art")
    g = load_arrays(result.path)
    movies = pd.read_parquet(processed.out("movies.parquet"))
    train = pd.read_parquet(processed.out("train.parquet"))
    assert np.array_equal(g.movie_ids, np.sort(movies["movie_id"].to_numpy()))
    assert g.n_movies == 42 and g.n_users == 30 and len(g.movie_idx) == len(train) == 30 * 10
    assert np.array_equal(g.movie_ids[g.movie_idx], train["movie_id"].to_numpy())
    assert np.array_equal(g.user_ids[g.user_idx], train["user_id"].to_numpy())
    assert (g.movie_degree()[-2:] == 0).all()
    assert g.genres.shape == (42, 3) and g.title_tokens.shape == (42, 8) and (g.year[6::7] >= 0).all()
    assert result.manifest["counts"] == {"users": 30, "movies": 42, "edges": 300, "rated_movies": 40}

    import dgl

    graph = dgl.load_graphs(str(result.out("graph.bin")))[0][0]
    assert set(graph.canonical_etypes) == {("user", "watched", "movie"), ("movie", "watched-by", "user")}
    assert graph.num_nodes("movie") == 42 and graph.num_edges("watched") == 300
    assert set(graph.edges["watched-by"].data) == {"rating", "timestamp"}
    src, dst = graph.edges(etype="watched")
    assert np.array_equal(dst.numpy(), g.movie_idx) and np.array_equal(src.numpy(), g.user_idx)
    assert graph.nodes["movie"].data["genres"].shape == (42, 3)
    assert build_graph(processed, tmp_path / "art").skipped


def test_empty_train_split_is_bad_input(tmp_path: Path) -> None:
    processed = write_planted(tmp_path / "pre", n_users=5)
    pd.read_parquet(processed.out("train.parquet")).iloc[:0].to_parquet(processed.out("train.parquet"))
    with pytest.raises(InputError, match="train split is empty.*train_not_empty"):
        build_graph(processed, tmp_path / "art")


def test_movie_outside_the_catalog_is_bad_input(tmp_path: Path) -> None:
    processed = write_planted(tmp_path / "pre", n_users=5)
    train = pd.read_parquet(processed.out("train.parquet"))
    train.loc[3, "movie_id"] = 99_999
    train.to_parquet(processed.out("train.parquet"), index=False)
    with pytest.raises(InputError, match="99999.*row 3.*movie_in_catalog"):
        build_graph(processed, tmp_path / "art")


def test_arrays_are_writable_for_torch_to_share(tmp_path: Path) -> None:
    """to_dgl hands the arrays to torch without a copy; torch needs them writable (Arrow's and pandas'
    zero-copy views are read-only: a plain int32 year column without nulls came back as one)."""
    processed = write_planted(tmp_path / "pre", n_users=5)
    movies = pd.read_parquet(processed.out("movies.parquet"))
    movies["year"] = movies["year"].fillna(1990).astype("int32")
    movies.to_parquet(processed.out("movies.parquet"), index=False)
    g = graph_arrays(processed.path)
    assert all(getattr(g, name).flags.writeable for name in g.__dataclass_fields__)
