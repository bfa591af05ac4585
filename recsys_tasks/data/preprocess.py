"""preprocess: ingested tables -> movie features, vocabularies and the per-user leave-last-out split.

Split (the evaluation protocol): each user's ratings sorted by (timestamp, movie_id); the last is the
test item, the second-to-last the validation item, the rest train; users with fewer than 3 ratings
keep everything in train. Computed with array operations, not a loop per user.

Title tokens: lowercase word tokens of the title without its trailing "(year)". The vocabulary holds
the tokens found in at least MIN_TITLES titles, ordered by (-count, token) so it is the same on every
run, capped at MAX_VOCAB; index 0 is padding, 1 stands for any other token.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from recsys_tasks.artifacts import StepResult, run_step
from recsys_tasks.data.formats import MOVIES_SCHEMA, RATINGS_SCHEMA, USERS_SCHEMA
from recsys_tasks.logs import get_logger

log = get_logger(__name__)
MAX_TITLE_TOKENS = 8
MAX_VOCAB = 5000
MIN_TITLES = 2
PAD, UNK = "<pad>", "<unk>"
_YEAR_SUFFIX = re.compile(r"\s*\(\d{4}(?:[-\u2013](?:\d{4})?)?\)\s*$")
_WORD = re.compile(r"[^\W_]+")
PROCESSED_MOVIES_SCHEMA = MOVIES_SCHEMA.append(pa.field("genre_ids", pa.list_(pa.int32()))).append(
    pa.field("title_tokens", pa.list_(pa.int32())))
SPLITS = ("train", "val", "test")


def preprocess(ingested: StepResult, root: Path, *, force: bool = False) -> StepResult:
    params = {"max_title_tokens": MAX_TITLE_TOKENS, "max_vocab": MAX_VOCAB, "min_titles": MIN_TITLES}

    def build(tmp: Path) -> dict[str, Any]:
        movies, vocab = movie_features(pq.read_table(ingested.out("movies.parquet")))
        pq.write_table(movies, tmp / "movies.parquet")
        (tmp / "vocab.json").write_text(json.dumps(vocab, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
        ratings = pq.read_table(ingested.out("ratings.parquet"))
        splits = split_ratings(ratings)
        for name, table in splits.items():
            pq.write_table(table, tmp / f"{name}.parquet")
        counts = {"movies": movies.num_rows, "genres": len(vocab["genres"]), "tokens": len(vocab["tokens"]),
                  **{name: t.num_rows for name, t in splits.items()}}
        if ingested.out("users.parquet").is_file():
            users = pq.read_table(ingested.out("users.parquet")).cast(USERS_SCHEMA).sort_by("user_id")
            pq.write_table(users, tmp / "users.parquet")
            counts["users_with_features"] = users.num_rows
        counts["users"] = len(np.unique(splits["train"]["user_id"].to_numpy()))
        return {"snapshot_id": ingested.manifest.get("snapshot_id"), "counts": counts,
                "newest_rating_ts": int(pc.max(ratings["timestamp"]).as_py())}

    return run_step(root, "preprocess", inputs={"ingest": ingested.key}, params=params, build=build, force=force)


def title_words(title: str) -> list[str]:
    return _WORD.findall(_YEAR_SUFFIX.sub("", title).lower())


def movie_features(movies: pa.Table) -> tuple[pa.Table, dict[str, list[str]]]:
    """Movies sorted by id with genre_ids and title_tokens, and the vocabularies they index."""
    movies = movies.cast(MOVIES_SCHEMA).sort_by("movie_id")
    genre_lists = [[g for g in (text or "").split("|") if g] for text in movies["genres"].to_pylist()]
    genres = sorted({g for gs in genre_lists for g in gs})
    genre_index = {g: i for i, g in enumerate(genres)}
    words = [title_words(t or "") for t in movies["title"].to_pylist()]
    titles_with = Counter(w for ws in words for w in set(ws))
    frequent = sorted((w for w, n in titles_with.items() if n >= MIN_TITLES), key=lambda w: (-titles_with[w], w))
    tokens = [PAD, UNK, *frequent[:MAX_VOCAB]]
    token_index = {w: i for i, w in enumerate(tokens)}
    table = movies.append_column("genre_ids", pa.array(
        [sorted(genre_index[g] for g in set(gs)) for gs in genre_lists], pa.list_(pa.int32())))
    table = table.append_column("title_tokens", pa.array(
        [[token_index.get(w, 1) for w in ws[:MAX_TITLE_TOKENS]] for ws in words], pa.list_(pa.int32())))
    return table.cast(PROCESSED_MOVIES_SCHEMA), {"genres": genres, "tokens": tokens}


def split_ratings(ratings: pa.Table) -> dict[str, pa.Table]:
    """train/val/test, each sorted by (user_id, timestamp, movie_id)."""
    ratings = ratings.cast(RATINGS_SCHEMA)
    user = ratings["user_id"].to_numpy()
    movie = ratings["movie_id"].to_numpy()
    ts = ratings["timestamp"].to_numpy()
    order = np.lexsort((movie, ts, user))
    user = user[order]
    first = np.searchsorted(user, user, side="left")
    last = np.searchsorted(user, user, side="right") - 1
    from_end = last - np.arange(len(user))  # 0 = the user's latest rating
    size = last - first + 1
    part = np.where(size < 3, 0, np.select([from_end == 0, from_end == 1], [2, 1], 0))
    table = ratings.take(pa.array(order))
    return {name: table.filter(pa.array(part == i)) for i, name in enumerate(SPLITS)}
