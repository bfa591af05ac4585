"""The rules of each gate: which expectations run on which file, and the cross-file checks.

Each `*_rules` function reads a step folder (read-only) and returns an Outcome; gates.py turns it into a
step with a report. Schema rules run first: when a file's columns or types are wrong the value rules
would only repeat that failure (or crash), so they do not run.

Memory is bounded by the catalog and the users, not the ratings: files that grow with the ratings
(ratings.parquet, train.parquet, edges.npz, graph.bin's edges) are read a chunk at a time. Row-wise
rules run as GX expectations on each chunk (runner.run_expectations_chunked); the rules across a whole
file are numpy (validation/pairs.py: duplicate pairs, equal pair sets; 8-16 bytes per rating) or
facts gathered per chunk (per-user counts and last ratings, distinct ids, degrees). Small files (movies,
users, the val/test splits with one row per user, the id maps) are validated whole, as before.
"""

from __future__ import annotations

import json
import zipfile
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from recsys_tasks.data.formats import MAX_GENRES_CHARS, MAX_TITLE_CHARS
from recsys_tasks.validation import runner
from recsys_tasks.validation.npz import NpzArrays
from recsys_tasks.validation.pairs import (
    Bounds,
    PairKeys,
    Source,
    array_bounds,
    distinct_values,
    duplicate_rows_rule,
    numpy_source,
    parquet_bounds,
    parquet_distinct,
    parquet_source,
    same_pairs_rule,
)
from recsys_tasks.validation.report import RuleResult
from recsys_tasks.validation.runner import (
    InReference,
    check_schema,
    count_rule,
    empty_frame,
    equal_rule,
    parquet_chunks,
    rows_rule,
    run_expectations,
    run_expectations_chunked,
    skipped_rule,
)

WHOLE_STARS = [1.0, 2.0, 3.0, 4.0, 5.0]
HALF_STARS = [x / 2 for x in range(1, 11)]
ALLOWED_RATINGS = {"ml-1m": WHOLE_STARS, "ml-100k": WHOLE_STARS, "ml-10m": HALF_STARS, "csv": HALF_STARS}
EARLIEST_TIMESTAMP = int(datetime(1995, 1, 1, tzinfo=UTC).timestamp())  # MovieLens began in 1995
LATEST_SLACK_S = 86_400  # clocks differ; a rating "from tomorrow" is still plausible, later ones are not
MIN_ROWS = 1
FIRST_FILM_YEAR = 1870
MAX_TITLE_TOKENS = 8
NORM_TOLERANCE = 1e-3
MAX_MEAN_COSINE = 0.99
COSINE_SAMPLE = 512

RAW_PARAMS = {"earliest": EARLIEST_TIMESTAMP, "min_rows": MIN_ROWS, "ratings": ALLOWED_RATINGS,
              "max_title_chars": MAX_TITLE_CHARS, "max_genres_chars": MAX_GENRES_CHARS}
PROCESSED_PARAMS = {"first_year": FIRST_FILM_YEAR, "max_title_tokens": MAX_TITLE_TOKENS}
GRAPH_PARAMS: dict[str, Any] = {}
EMBEDDING_PARAMS = {"norm_tolerance": NORM_TOLERANCE, "max_mean_cosine": MAX_MEAN_COSINE,
                    "cosine_sample": COSINE_SAMPLE}

SPLIT = {"user_id": "int64", "movie_id": "int64", "rating": "float32", "timestamp": "int64"}
RAW_SCHEMAS = {
    "movies.parquet": {"movie_id": "int64", "title": "string", "year": "int32", "genres": "string"},
    "ratings.parquet": SPLIT,
    "users.parquet": {"user_id": "int64", "gender": "string", "age": "int32", "occupation": "string|int",
                      "zip": "string"},
}
PROCESSED_MOVIES = {**RAW_SCHEMAS["movies.parquet"], "genre_ids": "list<int32>",
                    "title_tokens": "list<int32>"}
KEYS = ["user_id", "movie_id"]
PAIR = ("user_id", "movie_id")


@dataclass
class Outcome:
    results: list[RuleResult]
    counts: dict[str, Any] = field(default_factory=dict)
    stats: dict[str, Any] = field(default_factory=dict)


def _gx() -> Any:
    import great_expectations.expectations as gxe

    return gxe


def _not_empty() -> Any:
    return _gx().ExpectTableRowCountToBeBetween(min_value=MIN_ROWS)


# ---------------------------------------------------------------- raw (ingest output)

def raw_rules(folder: Path, release: str, *, now: float) -> Outcome:
    gxe = _gx()
    files = ["movies.parquet", "ratings.parquet"]
    files += ["users.parquet"] if (folder / "users.parquet").exists() else []
    schemas = [check_schema(folder / f, RAW_SCHEMAS[f]) for f in files]
    if any(r.failed for r in schemas):
        return Outcome(schemas)
    movies = pd.read_parquet(folder / "movies.parquet")
    users = pd.read_parquet(folder / "users.parquet") if "users.parquet" in files else None
    results = schemas + run_expectations(movies, "movies.parquet", {
        "movies_not_empty": _not_empty(),
        "movie_id_not_null": gxe.ExpectColumnValuesToNotBeNull(column="movie_id"),
        "movie_id_unique": gxe.ExpectColumnValuesToBeUnique(column="movie_id"),
        "movie_id_sorted": gxe.ExpectColumnValuesToBeIncreasing(column="movie_id"),
        "title_not_null": gxe.ExpectColumnValuesToNotBeNull(column="title"),
        "genres_not_null": gxe.ExpectColumnValuesToNotBeNull(column="genres"),
        # the catalog's column sizes: a longer value would fail load_catalog on MariaDB/PostgreSQL
        f"title_at_most_{MAX_TITLE_CHARS}_chars": gxe.ExpectColumnValueLengthsToBeBetween(
            column="title", max_value=MAX_TITLE_CHARS),
        f"genres_at_most_{MAX_GENRES_CHARS}_chars": gxe.ExpectColumnValueLengthsToBeBetween(
            column="genres", max_value=MAX_GENRES_CHARS),
    })
    rating_rules = {
        **{f"{c}_not_null": gxe.ExpectColumnValuesToNotBeNull(column=c) for c in SPLIT},
        "rating_in_allowed_set": gxe.ExpectColumnValuesToBeInSet(column="rating",
                                                                 value_set=ALLOWED_RATINGS[release]),
        "timestamp_plausible": gxe.ExpectColumnValuesToBeBetween(
            column="timestamp", min_value=EARLIEST_TIMESTAMP, max_value=int(now) + LATEST_SLACK_S),
        "movie_in_movies": InReference("movie_id", movies["movie_id"].dropna()),
    }
    if users is not None:
        rating_rules["user_in_users"] = InReference("user_id", users["user_id"].dropna())
        results += run_expectations(users, "users.parquet", {
            "users_not_empty": _not_empty(),
            "user_id_not_null": gxe.ExpectColumnValuesToNotBeNull(column="user_id"),
            "user_id_unique": gxe.ExpectColumnValuesToBeUnique(column="user_id"),
            "gender_in_set": gxe.ExpectColumnValuesToBeInSet(column="gender", value_set=["F", "M"]),
        })
    path = folder / "ratings.parquet"
    rows = pq.ParquetFile(path).metadata.num_rows
    facts = _RatingFacts()
    results.append(count_rule("ratings.parquet", "ratings_not_empty", rows, MIN_ROWS))
    results += run_expectations_chunked(map(facts.add, parquet_chunks(path)), "ratings.parquet", rating_rules,
                                        empty=empty_frame(path))
    results.append(duplicate_rows_rule("ratings.parquet", "user_movie_unique", path, PAIR, rows))
    counts = {"movies": len(movies), "ratings": rows, "rated_movies": len(facts.movies),
              "users": len(facts.users)}
    stats = {"release": release, "timestamp_min": facts.first, "timestamp_max": facts.last,
             "ratings_per_value": facts.per_value.sort_index().astype("int64").to_dict()}
    return Outcome(results, counts, stats)


class _RatingFacts:
    """What the raw report says about the ratings, gathered from the chunks as they stream past."""

    def __init__(self) -> None:
        self.users, self.movies = np.zeros(0), np.zeros(0)
        self.first: Any = None
        self.last: Any = None
        self.per_value = pd.Series(dtype="int64")

    def add(self, chunk: pd.DataFrame) -> pd.DataFrame:
        self.users = np.union1d(self.users, chunk["user_id"].dropna().unique())
        self.movies = np.union1d(self.movies, chunk["movie_id"].dropna().unique())
        ts = chunk["timestamp"].dropna()
        if len(ts):
            self.first = ts.min() if self.first is None else min(self.first, ts.min())
            self.last = ts.max() if self.last is None else max(self.last, ts.max())
        self.per_value = self.per_value.add(chunk["rating"].value_counts(), fill_value=0)
        return chunk


# ---------------------------------------------------------------- processed (preprocess output)

def processed_rules(folder: Path, *, now: float) -> Outcome:
    gxe = _gx()
    splits = ("train", "val", "test")
    schemas = [check_schema(folder / "movies.parquet", PROCESSED_MOVIES)]
    schemas += [check_schema(folder / f"{s}.parquet", SPLIT) for s in splits]
    vocab, vocab_rule = _vocab(folder / "vocab.json")
    schemas.append(vocab_rule)
    if any(r.failed for r in schemas):
        return Outcome(schemas)
    movies = pd.read_parquet(folder / "movies.parquet")
    held = {s: pd.read_parquet(folder / f"{s}.parquet") for s in ("val", "test")}  # a row per user at most
    results = schemas + run_expectations(movies, "movies.parquet", {
        "movie_id_unique": gxe.ExpectColumnValuesToBeUnique(column="movie_id"),
        "movie_id_sorted": gxe.ExpectColumnValuesToBeIncreasing(column="movie_id"),
        "year_plausible": gxe.ExpectColumnValuesToBeBetween(
            column="year", min_value=FIRST_FILM_YEAR, max_value=datetime.fromtimestamp(now, UTC).year + 1),
    })
    for column, size in (("genre_ids", len(vocab["genres"])), ("title_tokens", len(vocab["tokens"]))):
        # GX has no list-element expectation: explode keeps each movie's index, so samples are movie rows.
        values = movies[[column]].explode(column).dropna().astype({column: "int64"})
        results += run_expectations(values, "movies.parquet", {
            f"{column}_in_vocab": gxe.ExpectColumnValuesToBeBetween(column=column, min_value=0,
                                                                    max_value=size - 1),
        }, rows=movies)
    lengths = movies["title_tokens"].map(len).to_frame("n_title_tokens")
    results += run_expectations(lengths, "movies.parquet", {
        f"title_tokens_at_most_{MAX_TITLE_TOKENS}": gxe.ExpectColumnValuesToBeBetween(column="n_title_tokens",
                                                                    max_value=MAX_TITLE_TOKENS),
    }, rows=movies)
    path = folder / "train.parquet"
    rows = pq.ParquetFile(path).metadata.num_rows
    train = _TrainFacts(held, PairKeys(parquet_bounds([folder / f"{s}.parquet" for s in splits], PAIR),
                                       lambda: distinct_values(*(parquet_source(folder / f"{s}.parquet", PAIR)
                                                                 for s in splits))))
    results.append(count_rule("train.parquet", "train_not_empty", rows, MIN_ROWS))
    results.append(duplicate_rows_rule("train.parquet", "user_movie_unique", path, PAIR, rows))
    results += run_expectations_chunked(map(train.add, parquet_chunks(path)), "train.parquet", {
        "movie_in_catalog": InReference("movie_id", movies["movie_id"]),
    }, empty=empty_frame(path))
    for split, frame in held.items():
        results += run_expectations(frame, f"{split}.parquet", {
            "user_movie_unique": gxe.ExpectCompoundColumnsToBeUnique(column_list=KEYS),
            "movie_in_catalog": InReference("movie_id", movies["movie_id"]),
        })
    sizes = train.sizes(held)
    results += _split_rules(held, train, sizes)
    counts = {"movies": len(movies), "train": rows, **{s: len(f) for s, f in held.items()}, "users": len(sizes)}
    stats = {"users_with_holdout": int((sizes["test"] > 0).sum()),
             "users_train_only": int((sizes["test"] == 0).sum())}
    return Outcome(results, counts, stats)


def _vocab(path: Path) -> tuple[dict[str, list[str]], RuleResult]:
    try:
        vocab = json.loads(path.read_text())
        ok = (isinstance(vocab.get("genres"), list) and isinstance(vocab.get("tokens"), list)
              and vocab["tokens"][:2] == ["<pad>", "<unk>"] and vocab["genres"] == sorted(vocab["genres"]))
        message = "" if ok else 'needs "genres" (sorted) and "tokens" starting with "<pad>", "<unk>"'
    except (OSError, ValueError, AttributeError, TypeError) as exc:
        vocab, ok, message = {}, False, f"unreadable: {exc}"
    rule = equal_rule(path.name, "schema", ok, True, detail={"message": message} if message else {})
    return vocab, rule


ORDER = ["user_id", "timestamp", "movie_id"]  # the split's order within a user


class _TrainFacts:
    """What the split rules need from train.parquet, gathered chunk by chunk: ratings per user, each
    user's last rating in (timestamp, movie_id) order, and which held-out rows' pairs occur in train."""

    def __init__(self, held: dict[str, pd.DataFrame], keys: PairKeys) -> None:
        self.keys = keys
        self.held = {s: np.sort(self._pack(f)) for s, f in held.items()}
        self.labels = {s: f.index.to_numpy()[np.argsort(self._pack(f), kind="stable")] for s, f in held.items()}
        self.in_train = {s: np.zeros(len(f), dtype=bool) for s, f in held.items()}
        self.per_user = pd.Series(dtype="int64")
        self.last = pa.table({c: pa.array([], pa.int64()) for c in ORDER})

    def _pack(self, frame: pd.DataFrame) -> np.ndarray:
        table = pa.Table.from_pandas(frame[KEYS], preserve_index=False)
        return self.keys.pack(table.column(0).combine_chunks(), table.column(1).combine_chunks())

    def add(self, chunk: pd.DataFrame) -> pd.DataFrame:
        self.per_user = self.per_user.add(chunk.groupby("user_id").size(), fill_value=0)
        table = pa.Table.from_pandas(chunk[ORDER], preserve_index=False)
        self.last = _last_per_user(pa.concat_tables([self.last, table], promote_options="permissive"))
        pairs = self._pack(chunk)
        for split, keys in self.held.items():
            at = np.minimum(np.searchsorted(keys, pairs), max(len(keys) - 1, 0))
            found = keys[at][keys[at] == pairs] if len(keys) else keys
            if len(found):  # every held-out row with a found key (a key may repeat in a broken split)
                self.in_train[split] |= np.isin(keys, found)
        return chunk

    def leaked(self, split: str) -> np.ndarray:
        """Index labels of the split's rows whose pair occurs in train, in label order."""
        return np.sort(self.labels[split][self.in_train[split]])

    def last_frame(self) -> pd.DataFrame:
        return self.last.to_pandas()

    def sizes(self, held: dict[str, pd.DataFrame]) -> pd.DataFrame:
        """Ratings per user and split (users of any split; 0 where a split lacks them)."""
        per_split = {"train": self.per_user.astype("int64"),
                     **{s: f.groupby("user_id").size() for s, f in held.items()}}
        return pd.DataFrame(per_split).fillna(0).astype("int64")


def _last_per_user(table: pa.Table) -> pa.Table:
    """Each user's last row in (timestamp, movie_id) order (nulls last, as pandas sorts; no null users)."""
    table = table.filter(pc.is_valid(table["user_id"]))
    table = table.take(pc.sort_indices(table, sort_keys=[(c, "ascending") for c in ORDER]))
    user = table["user_id"].to_numpy()
    return table.take(pa.array(np.flatnonzero(np.append(user[1:] != user[:-1], True)))) if len(user) else table


def _split_rules(held: dict[str, pd.DataFrame], train: _TrainFacts, sizes: pd.DataFrame) -> list[RuleResult]:
    """Split sizes, leakage and holdout order: the evaluation protocol, checked per user."""
    eligible = sizes.sum(axis=1) >= 3  # users with fewer ratings keep everything in train
    out = []
    for split in ("val", "test"):
        bad = sizes[sizes[split] != eligible.astype("int64")].reset_index(names="user_id")
        out.append(rows_rule(f"{split}.parquet", "one_per_eligible_user", bad, len(sizes), row_numbers=False,
                             detail={"message": "users with >= 3 ratings need exactly one, others none"}))
        leaked = held[split].loc[train.leaked(split)]
        out.append(rows_rule(f"{split}.parquet", "pair_not_in_train", leaked, len(held[split])))
    out.append(rows_rule("test.parquet", "disjoint_from_val", _matches(held["test"], held["val"][KEYS]),
                         len(held["test"])))
    for later, earlier in (("val", train.last_frame()), ("test", held["val"])):
        out.append(rows_rule(f"{later}.parquet", "holdout_after_history", _not_after(held[later], earlier),
                             len(held[later]), detail={"message": "must follow the user's earlier items in "
                                                                  "(timestamp, movie_id) order"}))
    return out


def _matches(frame: pd.DataFrame, pairs: pd.DataFrame) -> pd.DataFrame:
    """Rows of `frame` (original index kept) whose (user_id, movie_id) occurs in `pairs`."""
    hit = frame[KEYS].reset_index().merge(pairs.drop_duplicates(), on=KEYS)["index"]
    return frame.loc[sorted(set(hit))]


def _not_after(frame: pd.DataFrame, earlier: pd.DataFrame) -> pd.DataFrame:
    """Rows of `frame` not strictly after the user's row in `earlier`, ordered by (timestamp, movie_id)."""
    both = frame.reset_index().merge(earlier[["user_id", "timestamp", "movie_id"]], on="user_id",
                                     suffixes=("", "_prev"))
    before = (both["timestamp"] < both["timestamp_prev"]) | (
        (both["timestamp"] == both["timestamp_prev"]) & (both["movie_id"] <= both["movie_id_prev"]))
    return frame.loc[sorted(set(both.loc[before, "index"]))]


# ---------------------------------------------------------------- graph (build_graph output)

EDGE_ARRAYS = ("user_idx", "movie_idx", "rating", "timestamp", "n_users", "n_movies")
ID_ARRAYS = ("movie_ids", "user_ids")
INDEX_PAIR = ("user_idx", "movie_idx")


def graph_rules(graph: Path, processed: Path, *, use_graph_bin: bool) -> Outcome:
    gxe = _gx()
    with ExitStack() as stack:
        edges, edges_rule = _npz(stack, graph / "edges.npz", EDGE_ARRAYS, same_length=INDEX_PAIR)
        ids, ids_rule = _npz(stack, graph / "id_map.npz", ID_ARRAYS)
        if edges_rule.failed or ids_rule.failed:
            return Outcome([edges_rule, ids_rule])
        return _graph_rules(graph, processed, edges, ids.read("movie_ids"), ids.read("user_ids"), gxe,
                            [edges_rule, ids_rule], use_graph_bin)


def _graph_rules(graph: Path, processed: Path, edges: NpzArrays, movie_ids: np.ndarray, user_ids: np.ndarray,
                 gxe: Any, results: list[RuleResult], use_graph_bin: bool) -> Outcome:
    catalog = pd.read_parquet(processed / "movies.parquet", columns=["movie_id"])["movie_id"]
    train_path = processed / "train.parquet"
    train_rows = pq.ParquetFile(train_path).metadata.num_rows
    n_users, n_movies = int(edges.read("n_users")), int(edges.read("n_movies"))
    n_edges = edges.length("user_idx")
    results += [equal_rule("id_map.npz", "movie_count_equals_catalog", len(movie_ids), len(catalog)),
                equal_rule("id_map.npz", "user_count_equals_train", len(user_ids),
                           len(parquet_distinct(train_path, "user_id"))),
                equal_rule("edges.npz", "n_movies_equals_id_map", n_movies, len(movie_ids)),
                equal_rule("edges.npz", "n_users_equals_id_map", n_users, len(user_ids)),
                equal_rule("edges.npz", "edge_count_equals_train", n_edges, train_rows)]
    results += run_expectations(pd.DataFrame({"movie_id": movie_ids}), "id_map.npz", {
        "movie_ids_sorted_unique": gxe.ExpectColumnValuesToBeIncreasing(column="movie_id", strictly=True),
        "movie_ids_in_catalog": InReference("movie_id", catalog),
    })
    results += run_expectations(pd.DataFrame({"user_id": user_ids}), "id_map.npz", {
        "user_ids_unique": gxe.ExpectColumnValuesToBeUnique(column="user_id"),
    })
    degrees = _Degrees(len(user_ids), len(movie_ids))
    chunks = (degrees.add(frame) for frame in _edge_frames(edges))
    results += run_expectations_chunked(chunks, "edges.npz", {
        "user_idx_in_range": gxe.ExpectColumnValuesToBeBetween(column="user_idx", min_value=0,
                                                               max_value=n_users - 1),
        "movie_idx_in_range": gxe.ExpectColumnValuesToBeBetween(column="movie_idx", min_value=0,
                                                                max_value=n_movies - 1),
    }, empty=pd.DataFrame({"user_idx": np.zeros(0, np.int64), "movie_idx": np.zeros(0, np.int64)}))
    if degrees.in_range:
        as_ids = numpy_source(lambda: ((user_ids[u], movie_ids[m]) for u, m in _edge_chunks(edges)))
        train = parquet_source(train_path, PAIR)
        results.append(same_pairs_rule(
            "edges.npz", "edges_equal_train_pairs", as_ids, train, PAIR, ("edges", "train"), (n_edges, train_rows),
            lambda: array_bounds(user_ids, movie_ids).union(parquet_bounds([train_path], PAIR))))
    else:
        results.append(skipped_rule("edges.npz", "edges_equal_train_pairs", "node indices out of range"))
    for split in ("val", "test"):
        frame = pd.read_parquet(processed / f"{split}.parquet", columns=KEYS)
        results += run_expectations(frame, f"{split}.parquet", {
            "movie_in_id_map": InReference("movie_id", movie_ids),
            "user_in_id_map": InReference("user_id", user_ids),
        })
    results += _graph_bin_rules(graph / "graph.bin", edges, n_users, n_movies) if use_graph_bin else [
        skipped_rule("graph.bin", "mirrored_edges", "graph.bin not written (DGL unavailable at build time)")]
    stats = {"user_degree": degrees.stats("user"), "movie_degree": degrees.stats("movie")}
    counts = {"users": n_users, "movies": n_movies, "edges": n_edges}
    return Outcome(results, counts, stats)


def _npz(stack: ExitStack, path: Path, names: tuple[str, ...],
         same_length: tuple[str, ...] = ()) -> tuple[NpzArrays | None, RuleResult]:
    """The arrays of an .npz file (opened, not loaded), and a schema rule: every name present, node/edge
    indices integers, the `same_length` arrays equally long."""
    try:
        arrays = stack.enter_context(NpzArrays(path))
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        return None, equal_rule(path.name, "schema", False, True, detail={"message": f"unreadable: {exc}"})
    bad = [{"array": n, "found": str(arrays.dtype(n)) if n in arrays.headers else "missing"} for n in names
           if n not in arrays.headers or (n != "rating" and not np.issubdtype(arrays.dtype(n), np.integer))]
    if not bad and len({arrays.length(n) for n in same_length}) > 1:
        bad = [{"array": n, "found": f"{arrays.length(n)} values"} for n in same_length]
    status = "failed" if bad else "passed"
    return arrays, RuleResult(path.name, "schema", status, len(bad), len(names), "custom", bad,
                              {"arrays": arrays.names})


def _edge_chunks(edges: NpzArrays) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    rows = runner.CHUNK_ROWS
    return zip(edges.chunks("user_idx", rows), edges.chunks("movie_idx", rows))


def _edge_frames(edges: NpzArrays) -> Iterator[pd.DataFrame]:
    start = 0
    for user, movie in _edge_chunks(edges):
        yield pd.DataFrame({"user_idx": user, "movie_idx": movie}, index=pd.RangeIndex(start, start + len(user)))
        start += len(user)


class _Degrees:
    """Node degrees counted chunk by chunk, while every index is within the id maps."""

    def __init__(self, n_users: int, n_movies: int) -> None:
        self.size = {"user": n_users, "movie": n_movies}
        self.degree = {"user": np.zeros(n_users, np.int64), "movie": np.zeros(n_movies, np.int64)}
        self.in_range = True

    def add(self, frame: pd.DataFrame) -> pd.DataFrame:
        for kind in ("user", "movie"):
            index = frame[f"{kind}_idx"].to_numpy()
            self.in_range = self.in_range and bool(((index >= 0) & (index < self.size[kind])).all())
            if self.in_range:
                self.degree[kind] += np.bincount(index, minlength=self.size[kind])
        return frame

    def stats(self, kind: str) -> dict[str, Any]:
        return _degree_stats(self.degree[kind]) if self.in_range else {}


def _graph_bin_rules(path: Path, edges: NpzArrays, n_users: int, n_movies: int) -> list[RuleResult]:
    """graph.bin's node counts and both edge types against edges.npz; needs DGL, else reported skipped."""
    if not path.is_file():
        return [equal_rule("graph.bin", "schema", False, True, detail={"message": f"{path} is missing"})]
    try:
        import dgl
    except Exception as exc:  # noqa: BLE001 - DGL fails in many ways on an unsupported torch
        return [skipped_rule("graph.bin", "mirrored_edges", f"DGL cannot be imported: {exc}")]
    graph = dgl.load_graphs(str(path))[0][0]
    watched = tuple(t.numpy() for t in graph.edges(etype="watched"))  # (user, movie)
    movie, user = (t.numpy() for t in graph.edges(etype="watched-by"))
    mirrored = (user, movie)
    rows = runner.CHUNK_ROWS

    def pairs(arrays: tuple[np.ndarray, np.ndarray]) -> Source:
        return numpy_source(lambda: ((arrays[0][i:i + rows], arrays[1][i:i + rows])
                                     for i in range(0, len(arrays[0]), rows)))

    n_edges = edges.length("user_idx")

    def index_bounds() -> Bounds:
        return array_bounds(*watched).union(array_bounds(*mirrored))
    return [
        equal_rule("graph.bin", "node_counts_equal_edges_npz",
                   {"user": graph.num_nodes("user"), "movie": graph.num_nodes("movie")},
                   {"user": n_users, "movie": n_movies}),
        same_pairs_rule("graph.bin", "watched_equals_edges_npz", pairs(watched), numpy_source(
            lambda: _edge_chunks(edges)), INDEX_PAIR, ("graph.bin", "edges.npz"), (len(watched[0]), n_edges),
            lambda: index_bounds().union(_npz_index_bounds(edges))),
        same_pairs_rule("graph.bin", "mirrored_edges", pairs(mirrored), pairs(watched), INDEX_PAIR,
                        ("watched-by", "watched"), (len(mirrored[0]), len(watched[0])), index_bounds),
    ]


def _npz_index_bounds(edges: NpzArrays) -> Bounds:
    out = Bounds(None, None)
    for user, movie in _edge_chunks(edges):
        out = out.union(array_bounds(user, movie))
    return out


def _degree_stats(degree: np.ndarray) -> dict[str, Any]:
    if not len(degree):
        return {}
    return {"min": int(degree.min()), "median": float(np.median(degree)), "max": int(degree.max()),
            "isolated": int((degree == 0).sum())}


# ---------------------------------------------------------------- embeddings (export_embeddings output)

def embedding_rules(folder: Path, manifest: dict[str, Any], processed: Path) -> Outcome:
    gxe = _gx()
    path = folder / "embeddings.parquet"
    dim, normalized = manifest.get("dim"), manifest.get("normalized")
    facts = equal_rule("manifest.json", "manifest_facts",
                       isinstance(dim, int) and dim > 0 and isinstance(normalized, bool), True,
                       detail={"dim": dim, "normalized": normalized, "metric": manifest.get("metric")})
    schema = check_schema(path, {"movie_id": "int64", "vector": "fixed_size_list<float32>"})
    if facts.failed or schema.failed:
        return Outcome([facts, schema])
    table = pq.read_table(path)
    column = table.column("vector").combine_chunks()
    size = column.type.list_size
    results = [facts, schema, equal_rule("embeddings.parquet", "dimension_equals_manifest", size, dim)]
    # FixedSizeListArray.values ignores the array's offset, hence the explicit slice.
    flat = column.values.slice(column.offset * size, len(column) * size).to_numpy(zero_copy_only=False)
    vectors = flat.astype(np.float32).reshape(len(column), size)
    finite = np.isfinite(vectors).all(axis=1) & ~column.is_null().to_numpy(zero_copy_only=False)
    catalog = pd.read_parquet(processed / "movies.parquet", columns=["movie_id", "title"])
    norms = np.where(finite, np.linalg.norm(np.where(finite[:, None], vectors, 0.0), axis=1), np.nan)
    frame = pd.DataFrame({"movie_id": table.column("movie_id").to_numpy(), "finite": finite,
                          "norm": norms})  # NaN norm: GX skips it, so a bad vector fails only vector_finite
    rules = {
        "movie_id_not_null": gxe.ExpectColumnValuesToNotBeNull(column="movie_id"),
        "movie_id_unique": gxe.ExpectColumnValuesToBeUnique(column="movie_id"),
        "movie_in_catalog": InReference("movie_id", catalog["movie_id"]),
        "one_row_per_catalog_movie": gxe.ExpectTableRowCountToEqual(value=len(catalog)),
        "vector_finite": gxe.ExpectColumnValuesToBeInSet(column="finite", value_set=[True]),
    }
    if normalized:
        rules["unit_norm"] = gxe.ExpectColumnValuesToBeBetween(
            column="norm", min_value=1 - NORM_TOLERANCE, max_value=1 + NORM_TOLERANCE)
    results += run_expectations(frame, "embeddings.parquet", rules)
    missing = catalog[~catalog["movie_id"].isin(frame["movie_id"])]
    results.append(rows_rule("embeddings.parquet", "catalog_movie_has_vector", missing, len(catalog),
                             row_numbers=False))
    results.append(_not_degenerate(vectors[finite]))
    counts = {"movies": len(frame), "catalog": len(catalog), "dim": size}
    stats = {"norm_min": frame["norm"].min(), "norm_max": frame["norm"].max()}
    return Outcome(results, counts, stats)


def _not_degenerate(vectors: np.ndarray) -> RuleResult:
    """Mean pairwise cosine of a fixed sample < MAX_MEAN_COSINE: a collapsed model maps everything alike."""
    if len(vectors) < 2:
        return skipped_rule("embeddings.parquet", "not_degenerate", "fewer than 2 finite vectors")
    rng = np.random.default_rng(0)
    picked = rng.choice(len(vectors), size=min(COSINE_SAMPLE, len(vectors)), replace=False)
    sample = vectors[picked].astype(np.float64)
    unit = sample / np.maximum(np.linalg.norm(sample, axis=1, keepdims=True), 1e-12)
    cos = unit @ unit.T
    n = len(unit)
    mean = float((cos.sum() - np.trace(cos)) / (n * (n - 1)))
    ok = mean < MAX_MEAN_COSINE
    return RuleResult("embeddings.parquet", "not_degenerate", "passed" if ok else "failed", 0 if ok else n, n,
                      "custom", detail={"mean_pairwise_cosine": round(mean, 6),
                                        "max_allowed": MAX_MEAN_COSINE})
