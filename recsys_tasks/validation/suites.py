"""The rules of each gate: which expectations run on which file, and the cross-file checks.

Each `*_rules` function reads a step folder (read-only) and returns an Outcome; gates.py turns it into a
step with a report. Schema rules run first: when a file's columns or types are wrong the value rules
would only repeat that failure (or crash), so they do not run.
"""

from __future__ import annotations

import json
import zipfile
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from recsys_tasks.validation.report import RuleResult
from recsys_tasks.validation.runner import (
    InReference,
    check_schema,
    equal_rule,
    rows_rule,
    run_expectations,
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

RAW_PARAMS = {"earliest": EARLIEST_TIMESTAMP, "min_rows": MIN_ROWS, "ratings": ALLOWED_RATINGS}
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
    ratings = pd.read_parquet(folder / "ratings.parquet")
    users = pd.read_parquet(folder / "users.parquet") if "users.parquet" in files else None
    results = schemas + run_expectations(movies, "movies.parquet", {
        "movies_not_empty": _not_empty(),
        "movie_id_not_null": gxe.ExpectColumnValuesToNotBeNull(column="movie_id"),
        "movie_id_unique": gxe.ExpectColumnValuesToBeUnique(column="movie_id"),
        "movie_id_sorted": gxe.ExpectColumnValuesToBeIncreasing(column="movie_id"),
        "title_not_null": gxe.ExpectColumnValuesToNotBeNull(column="title"),
        "genres_not_null": gxe.ExpectColumnValuesToNotBeNull(column="genres"),
    })
    rating_rules = {
        "ratings_not_empty": _not_empty(),
        **{f"{c}_not_null": gxe.ExpectColumnValuesToNotBeNull(column=c) for c in SPLIT},
        "user_movie_unique": gxe.ExpectCompoundColumnsToBeUnique(column_list=KEYS),
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
    results += run_expectations(ratings, "ratings.parquet", rating_rules)
    counts = {"movies": len(movies), "ratings": len(ratings),
              "rated_movies": int(ratings["movie_id"].nunique()), "users": int(ratings["user_id"].nunique())}
    stats = {"release": release, "timestamp_min": ratings["timestamp"].min(),
             "timestamp_max": ratings["timestamp"].max(),
             "ratings_per_value": ratings["rating"].value_counts().sort_index().to_dict()}
    return Outcome(results, counts, stats)


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
    frames = {s: pd.read_parquet(folder / f"{s}.parquet") for s in splits}
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
    for split, frame in frames.items():
        results += run_expectations(frame, f"{split}.parquet", {
            **({"train_not_empty": _not_empty()} if split == "train" else {}),
            "user_movie_unique": gxe.ExpectCompoundColumnsToBeUnique(column_list=KEYS),
            "movie_in_catalog": InReference("movie_id", movies["movie_id"]),
        })
    results += _split_rules(frames)
    sizes = _per_user(frames)
    counts = {"movies": len(movies), **{s: len(f) for s, f in frames.items()}, "users": len(sizes)}
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


def _per_user(frames: dict[str, pd.DataFrame]) -> pd.DataFrame:
    return pd.DataFrame({s: f.groupby("user_id").size() for s, f in frames.items()}).fillna(0).astype("int64")


def _split_rules(frames: dict[str, pd.DataFrame]) -> list[RuleResult]:
    """Split sizes, leakage and holdout order: the evaluation protocol, checked per user."""
    sizes = _per_user(frames)
    eligible = sizes.sum(axis=1) >= 3  # users with fewer ratings keep everything in train
    train_pairs = frames["train"][KEYS]
    out = []
    for split in ("val", "test"):
        bad = sizes[sizes[split] != eligible.astype("int64")].reset_index(names="user_id")
        out.append(rows_rule(f"{split}.parquet", "one_per_eligible_user", bad, len(sizes), row_numbers=False,
                             detail={"message": "users with >= 3 ratings need exactly one, others none"}))
        out.append(rows_rule(f"{split}.parquet", "pair_not_in_train", _matches(frames[split], train_pairs),
                             len(frames[split])))
    out.append(rows_rule("test.parquet", "disjoint_from_val", _matches(frames["test"], frames["val"][KEYS]),
                         len(frames["test"])))
    last_train = frames["train"].sort_values(["user_id", "timestamp", "movie_id"]).groupby("user_id").tail(1)
    for later, earlier in (("val", last_train), ("test", frames["val"])):
        out.append(rows_rule(f"{later}.parquet", "holdout_after_history", _not_after(frames[later], earlier),
                             len(frames[later]), detail={"message": "must follow the user's earlier items in "
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


def graph_rules(graph: Path, processed: Path, *, use_graph_bin: bool) -> Outcome:
    gxe = _gx()
    edges, edges_rule = _npz(graph / "edges.npz", EDGE_ARRAYS)
    ids, ids_rule = _npz(graph / "id_map.npz", ID_ARRAYS)
    if edges_rule.failed or ids_rule.failed:
        return Outcome([edges_rule, ids_rule])
    catalog = pd.read_parquet(processed / "movies.parquet", columns=["movie_id"])["movie_id"]
    train = pd.read_parquet(processed / "train.parquet", columns=KEYS)
    n_users, n_movies = int(edges["n_users"]), int(edges["n_movies"])
    movie_ids, user_ids = ids["movie_ids"], ids["user_ids"]
    results = [edges_rule, ids_rule,
               equal_rule("id_map.npz", "movie_count_equals_catalog", len(movie_ids), len(catalog)),
               equal_rule("id_map.npz", "user_count_equals_train", len(user_ids),
                          int(train["user_id"].nunique())),
               equal_rule("edges.npz", "n_movies_equals_id_map", n_movies, len(movie_ids)),
               equal_rule("edges.npz", "n_users_equals_id_map", n_users, len(user_ids)),
               equal_rule("edges.npz", "edge_count_equals_train", len(edges["user_idx"]), len(train))]
    results += run_expectations(pd.DataFrame({"movie_id": movie_ids}), "id_map.npz", {
        "movie_ids_sorted_unique": gxe.ExpectColumnValuesToBeIncreasing(column="movie_id", strictly=True),
        "movie_ids_in_catalog": InReference("movie_id", catalog),
    })
    results += run_expectations(pd.DataFrame({"user_id": user_ids}), "id_map.npz", {
        "user_ids_unique": gxe.ExpectColumnValuesToBeUnique(column="user_id"),
    })
    edge_frame = pd.DataFrame({"user_idx": edges["user_idx"], "movie_idx": edges["movie_idx"]})
    results += run_expectations(edge_frame, "edges.npz", {
        "user_idx_in_range": gxe.ExpectColumnValuesToBeBetween(column="user_idx", min_value=0,
                                                               max_value=n_users - 1),
        "movie_idx_in_range": gxe.ExpectColumnValuesToBeBetween(column="movie_idx", min_value=0,
                                                                max_value=n_movies - 1),
    })
    in_range = bool(((edge_frame["user_idx"] >= 0) & (edge_frame["user_idx"] < len(user_ids))
                     & (edge_frame["movie_idx"] >= 0) & (edge_frame["movie_idx"] < len(movie_ids))).all())
    if in_range:
        as_ids = pd.DataFrame({"user_id": user_ids[edges["user_idx"]],
                               "movie_id": movie_ids[edges["movie_idx"]]})
        results.append(_same_pairs("edges.npz", "edges_equal_train_pairs", as_ids, train, "edges", "train"))
    else:
        results.append(skipped_rule("edges.npz", "edges_equal_train_pairs", "node indices out of range"))
    for split in ("val", "test"):
        frame = pd.read_parquet(processed / f"{split}.parquet", columns=KEYS)
        results += run_expectations(frame, f"{split}.parquet", {
            "movie_in_id_map": InReference("movie_id", movie_ids),
            "user_in_id_map": InReference("user_id", user_ids),
        })
    results += _graph_bin_rules(graph / "graph.bin", edge_frame, n_users, n_movies) if use_graph_bin else [
        skipped_rule("graph.bin", "mirrored_edges", "graph.bin not written (DGL unavailable at build time)")]
    user_deg = np.bincount(edges["user_idx"], minlength=n_users) if in_range else np.zeros(0)
    movie_deg = np.bincount(edges["movie_idx"], minlength=n_movies) if in_range else np.zeros(0)
    stats = {"user_degree": _degree_stats(user_deg), "movie_degree": _degree_stats(movie_deg)}
    counts = {"users": n_users, "movies": n_movies, "edges": len(edge_frame)}
    return Outcome(results, counts, stats)


def _npz(path: Path, names: tuple[str, ...]) -> tuple[dict[str, np.ndarray], RuleResult]:
    """The arrays of an .npz file, and a schema rule: every name present, node/edge indices integers."""
    try:
        with np.load(path) as data:
            arrays = {k: data[k] for k in data.files}
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        return {}, equal_rule(path.name, "schema", False, True, detail={"message": f"unreadable: {exc}"})
    bad = [{"array": n, "found": str(arrays[n].dtype) if n in arrays else "missing"} for n in names
           if n not in arrays or (n != "rating" and not np.issubdtype(arrays[n].dtype, np.integer))]
    status = "failed" if bad else "passed"
    return arrays, RuleResult(path.name, "schema", status, len(bad), len(names), "custom", bad,
                              {"arrays": sorted(arrays)})


def _same_pairs(file: str, rule: str, got: pd.DataFrame, want: pd.DataFrame, got_name: str,
                want_name: str) -> RuleResult:
    """Equal (user, movie) pair sets; failing = pairs on one side only, samples from both sides."""
    both = got.merge(want, on=list(got.columns), how="outer", indicator=True)
    only = both[both["_merge"] != "both"].copy()
    only["only_in"] = only.pop("_merge").map({"left_only": got_name, "right_only": want_name}).astype(str)
    return rows_rule(file, rule, only, max(len(got), len(want)), row_numbers=False)


def _graph_bin_rules(path: Path, edges: pd.DataFrame, n_users: int, n_movies: int) -> list[RuleResult]:
    """graph.bin's node counts and both edge types against edges.npz; needs DGL, else reported skipped."""
    if not path.is_file():
        return [equal_rule("graph.bin", "schema", False, True, detail={"message": f"{path} is missing"})]
    try:
        import dgl
    except Exception as exc:  # noqa: BLE001 - DGL fails in many ways on an unsupported torch
        return [skipped_rule("graph.bin", "mirrored_edges", f"DGL cannot be imported: {exc}")]
    graph = dgl.load_graphs(str(path))[0][0]
    user, movie = (t.numpy() for t in graph.edges(etype="watched"))
    watched = pd.DataFrame({"user_idx": user, "movie_idx": movie})
    movie, user = (t.numpy() for t in graph.edges(etype="watched-by"))
    mirrored = pd.DataFrame({"user_idx": user, "movie_idx": movie})
    return [
        equal_rule("graph.bin", "node_counts_equal_edges_npz",
                   {"user": graph.num_nodes("user"), "movie": graph.num_nodes("movie")},
                   {"user": n_users, "movie": n_movies}),
        _same_pairs("graph.bin", "watched_equals_edges_npz", watched, edges, "graph.bin", "edges.npz"),
        _same_pairs("graph.bin", "mirrored_edges", mirrored, watched, "watched-by", "watched"),
    ]


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
