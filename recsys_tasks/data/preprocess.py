"""preprocess: ingested tables -> movie features, vocabularies and the per-user leave-last-out split.

Split (the evaluation protocol): each user's ratings sorted by (timestamp, movie_id); the last is the
test item, the second-to-last the validation item, the rest train; users with fewer than 3 ratings
keep everything in train. Computed with array operations, not a loop per user: one sort of the
ratings, the split read off the user boundaries, and the sorted rows taken and written a million at
a time, so the step holds the ratings once plus ~17 bytes per rating (the order and the split codes).

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
from recsys_tasks.data.formats import MOVIES_SCHEMA, RATINGS_SCHEMA, USERS_SCHEMA, read_parquet
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
        ratings = read_parquet(ingested.out("ratings.parquet")).cast(RATINGS_SCHEMA)
        order, part, users = split_order(ratings)
        sizes = write_splits(ratings, order, part, tmp)
        newest = ingested.manifest.get("newest_rating_ts")
        if newest is None:  # an ingest folder from before the field
            newest = int(pc.max(ratings["timestamp"]).as_py())
        del ratings, order, part
        counts = {"movies": movies.num_rows, "genres": len(vocab["genres"]), "tokens": len(vocab["tokens"]),
                  **sizes}
        if ingested.out("users.parquet").is_file():
            users_table = pq.read_table(ingested.out("users.parquet")).cast(USERS_SCHEMA).sort_by("user_id")
            pq.write_table(users_table, tmp / "users.parquet")
            counts["users_with_features"] = users_table.num_rows
        counts["users"] = users  # every user keeps at least one train rating
        return {"snapshot_id": ingested.manifest.get("snapshot_id"), "newest_rating_ts": newest, "counts": counts}

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


def split_order(ratings: pa.Table, *, block: int = 1 << 20) -> tuple[np.ndarray, np.ndarray, int]:
    """The rows in (user_id, timestamp, movie_id) order, each sorted row's split (index into SPLITS),
    and the number of users. Arrow's sort is stable (ties keep file order, as np.lexsort's) and, on
    25 M ratings, 7x faster than np.lexsort, with no copy of the keys."""
    order = pc.sort_indices(ratings, sort_keys=[("user_id", "ascending"), ("timestamp", "ascending"),
                                                ("movie_id", "ascending")]).to_numpy()
    starts, previous = [], None  # where each user's sorted rows begin, found a block at a time
    for a in range(0, len(order), block):
        user = pc.take(ratings["user_id"], order[a:a + block]).to_numpy()
        new = np.concatenate([[previous is None or user[0] != previous], user[1:] != user[:-1]])
        starts.append(np.flatnonzero(new) + a)
        previous = user[-1]
    first = np.concatenate(starts) if starts else np.zeros(0, dtype=np.int64)
    ends = np.append(first[1:], len(order))
    held = ends[ends - first >= 3]  # users with fewer ratings keep everything in train
    part = np.zeros(len(order), dtype=np.int8)
    part[held - 1], part[held - 2] = 2, 1  # the latest: test; the one before: validation
    return order, part, len(first)


def write_splits(ratings: pa.Table, order: np.ndarray, part: np.ndarray, folder: Path, *,
                 rows_per_write: int = 1 << 20) -> dict[str, int]:
    """train/val/test.parquet in sorted order, taken a block at a time; returns their row counts.

    Train gets one row group per block; validation and test (a row per user) are written at the end.
    """
    held: dict[str, list[pa.Table]] = {"val": [], "test": []}
    with pq.ParquetWriter(folder / "train.parquet", RATINGS_SCHEMA) as train:
        for a in range(0, len(order), rows_per_write):
            block = ratings.take(pa.array(order[a:a + rows_per_write]))
            codes = part[a:a + rows_per_write]
            train.write_table(block.filter(pa.array(codes == 0)), row_group_size=rows_per_write)
            for i, name in enumerate(SPLITS[1:], 1):
                held[name].append(block.filter(pa.array(codes == i)))
    sizes = {"train": int((part == 0).sum())}
    for name, blocks in held.items():
        table = pa.concat_tables(blocks) if blocks else RATINGS_SCHEMA.empty_table()
        pq.write_table(table, folder / f"{name}.parquet")
        sizes[name] = table.num_rows
    return sizes


def split_ratings(ratings: pa.Table) -> dict[str, pa.Table]:
    """train/val/test in memory, each sorted by (user_id, timestamp, movie_id) (tests and benchmarks)."""
    ratings = ratings.cast(RATINGS_SCHEMA)
    order, part, _ = split_order(ratings)
    table = ratings.take(pa.array(order))
    return {name: table.filter(pa.array(part == i)) for i, name in enumerate(SPLITS)}
