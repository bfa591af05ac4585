"""evaluate: every method on validation and test, under leave-one-out and a global time split.

One evaluator for the whole project: the train step calls `leave_one_out(..., "val")` once and
`score_rule` every epoch; this step scores every method on both splits of both protocols; the
release gate scores the live model's vectors on this candidate's data with `score_vectors`.
docs/evaluation.md describes the protocols, their leaks and the tie order.

Leave-one-out (the manifest's `metrics`): the preprocess split holds each user's last movie by
(timestamp, movie id) as test and the one before as validation. Validation history = train; test
history = train + the validation movie. Time split (`protocols.time_split`): cut-offs at the 80%
and 90% quantiles of all rating timestamps; a user's target is their first interaction at or after
the cut-off (validation: before the test cut-off), their history everything before it.

In both, every catalog movie is scored, the history's movies are excluded, ties count against the
target (metrics.py). Users are scored in chunks, so memory never grows with users x movies. A user
whose target is already in their history (a re-watch) cannot be ranked and is skipped (counted).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import scipy.sparse as sp

from recsys_tasks.artifacts import StepResult, read_json, run_step, write_json
from recsys_tasks.errors import InputError
from recsys_tasks.logs import get_logger
from recsys_tasks.model import baselines, rules
from recsys_tasks.model.metrics import metrics_from_ranks, ranks_excluding

log = get_logger(__name__)
SERVED = "pinsage_history"
MODEL_METHODS = ("pinsage_latest", SERVED)
BASELINES = ("popularity", "itemknn", "transitions")
METHODS = MODEL_METHODS + BASELINES
SPLITS = ("val", "test")
COLUMNS = ["user_id", "movie_id", "timestamp"]
TIME_QUANTILES = (0.8, 0.9)  # validation and test cut-offs: the last 20% / 10% of ratings are "future"
CHUNK_BYTES = 64 << 20  # one chunk of float64 scores [users, movies]
LATEST_RULE: dict[str, Any] = {"name": "latest"}
Split = Literal["val", "test"]
Scorer = Callable[[np.ndarray], np.ndarray]  # user rows -> [len(rows), n_movies] scores
M = dict[str, float]


@dataclass(frozen=True)
class Heldout:
    """Evaluated users: histories (movie indices, oldest first, concatenated) and one target each."""

    items: np.ndarray  # int64: movie indices, user by user
    starts: np.ndarray  # int64 [n + 1]: user r's history is items[starts[r]:starts[r + 1]]
    targets: np.ndarray  # int64 [n]: the held-out movie index of each user
    n_movies: int
    user_ids: np.ndarray  # int64 [n]: MovieLens user ids, ascending
    skipped_rewatches: int = 0  # users left out because their target is in their history

    @property
    def n_users(self) -> int:
        return len(self.targets)

    @property
    def latest(self) -> np.ndarray:
        return self.items[self.starts[1:] - 1]

    def chunk(self, lo: int, hi: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Users lo..hi-1: (history items, their starts from 0, the (row, item) pairs they have seen)."""
        items = self.items[self.starts[lo]:self.starts[hi]]
        starts = self.starts[lo:hi + 1] - self.starts[lo]
        return items, starts, np.repeat(np.arange(hi - lo), np.diff(starts))

    def seen(self) -> sp.csr_matrix:
        """[n_users, n_movies] CSR of the history movies (for callers that want a matrix)."""
        _, _, rows = self.chunk(0, self.n_users)
        return sp.csr_matrix((np.ones(len(rows), np.float32), (rows, self.items)),
                             shape=(self.n_users, self.n_movies))


# ---- reading the splits ----------------------------------------------------------------------------

def read_interactions(folder: Path, name: str) -> pd.DataFrame:
    path = Path(folder) / f"{name}.parquet"
    df = pd.read_parquet(path, columns=COLUMNS)
    df.attrs["file"] = str(path)  # named in InputError messages
    return df


def movie_index(movie_ids: np.ndarray, df: pd.DataFrame, name: str) -> np.ndarray:
    """Catalog index of each row's movie; a movie outside the catalog is an InputError naming the row."""
    ids = df["movie_id"].to_numpy(np.int64)
    if len(movie_ids) == 0:
        raise InputError("the catalog (id_map movie_ids) is empty", file=df.attrs.get("file", name),
                         rule="movie_in_catalog")
    idx = np.minimum(np.searchsorted(movie_ids, ids), len(movie_ids) - 1)
    bad = np.flatnonzero(movie_ids[idx] != ids)
    if len(bad):
        raise InputError(f"movie_id {ids[bad[0]]} is not in the catalog (id_map movie_ids)",
                         file=df.attrs.get("file", name), row=int(bad[0]), rule="movie_in_catalog")
    return idx


def _histories(user: np.ndarray, movie: np.ndarray, ts: np.ndarray, target_users: np.ndarray,
               target_movies: np.ndarray, n_movies: int) -> tuple[Heldout, np.ndarray]:
    """Heldout of the target users (sorted, unique) from history rows; also the users without history.

    Histories are ordered by (timestamp, movie id), the split's own tie order. Users without a
    history row and re-watches are left out; the former are returned (as positions in target_users).
    """
    row = np.minimum(np.searchsorted(target_users, user), max(len(target_users) - 1, 0))
    keep = target_users[row] == user if len(target_users) else np.zeros(len(user), bool)
    row, movie, ts = row[keep], movie[keep], ts[keep]
    srt = np.lexsort((movie, ts, row))
    row, movie = row[srt], movie[srt]
    sizes = np.bincount(row, minlength=len(target_users))
    rewatch = np.zeros(len(target_users), bool)
    rewatch[row[movie == target_movies[row]]] = True
    ok = (sizes > 0) & ~rewatch
    starts = np.zeros(int(ok.sum()) + 1, np.int64)
    np.cumsum(sizes[ok], out=starts[1:])
    h = Heldout(movie[ok[row]], starts, target_movies[ok], n_movies, target_users[ok], int(rewatch.sum()))
    return h, np.flatnonzero(sizes == 0)


def heldout_from(history: pd.DataFrame, held: pd.DataFrame, movie_ids: np.ndarray) -> Heldout:
    """Leave-one-out Heldout: one `held` row per user, history = that user's `history` rows.

    An empty or duplicated held-out split, a movie outside the catalog or a held-out user without
    history is an InputError naming the file and row.
    """
    held_file = held.attrs.get("file", "held-out split")
    if len(held) == 0:
        raise InputError("the held-out split is empty: nothing to evaluate", file=held_file, rule="split_not_empty")
    users = held["user_id"].to_numpy(np.int64)
    order = np.argsort(users, kind="stable")
    users_sorted = users[order]
    dup = np.flatnonzero(users_sorted[1:] == users_sorted[:-1])
    if len(dup):
        raise InputError(f"user {users_sorted[dup[0]]} has more than one held-out row", file=held_file,
                         row=int(order[dup[0] + 1]), rule="one_heldout_row_per_user")
    targets = movie_index(movie_ids, held, "held-out split")[order]
    h, no_history = _histories(history["user_id"].to_numpy(np.int64), movie_index(movie_ids, history, "history"),
                               history["timestamp"].to_numpy(np.int64), users_sorted, targets, len(movie_ids))
    if len(no_history):
        r = int(no_history[0])
        raise InputError(f"user {users_sorted[r]} has a held-out movie but no history", file=held_file,
                         row=int(order[r]), rule="heldout_user_has_history")
    if h.n_users == 0:
        raise InputError("no held-out user can be evaluated (every held-out movie is a re-watch)",
                         file=held_file, rule="split_not_only_rewatches")
    return h


def _concat(frames: list[pd.DataFrame]) -> pd.DataFrame:
    out = pd.concat([f[COLUMNS] for f in frames], ignore_index=True)
    out.attrs["file"] = " + ".join(str(f.attrs.get("file", "?")) for f in frames)
    return out


def loo_frames(frames: dict[str, pd.DataFrame], split: Split) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(history, held-out) frames of a leave-one-out split: val <- train; test <- train + val."""
    if split == "val":
        return frames["train"], frames["val"]
    if split == "test":
        return _concat([frames["train"], frames["val"]]), frames["test"]
    raise ValueError(f"split must be 'val' or 'test', got {split!r}")


def leave_one_out(processed_folder: Path, movie_ids: np.ndarray, split: Split) -> Heldout:
    """The leave-one-out Heldout of a preprocess folder: val (history = train) or test (train + val)."""
    names = ("train",) if split == "val" else ("train", "val")
    frames = {name: read_interactions(processed_folder, name) for name in (*names, split)}
    return heldout_from(*loo_frames(frames, split), movie_ids)


def time_cutoffs(timestamps: np.ndarray, quantiles: tuple[float, ...] = TIME_QUANTILES) -> tuple[int, ...]:
    """The rating timestamps at the given quantiles (by count): ratings at or after one are its "future"."""
    ts = np.sort(np.asarray(timestamps, np.int64))
    if len(ts) == 0:
        raise InputError("no ratings: no time split", rule="ratings_not_empty")
    return tuple(int(ts[min(int(q * len(ts)), len(ts) - 1)]) for q in quantiles)


@dataclass(frozen=True)
class TimeSplit:
    heldout: Heldout
    fit: pd.DataFrame  # every rating before the cut-off: what a model retrained at the cut-off knows
    cutoff: int
    new_users: int  # users whose first interaction in the window has no earlier history (cold start)


def time_split(ratings: pd.DataFrame, movie_ids: np.ndarray, start: int, end: int | None = None) -> TimeSplit:
    """Global time split at `start`: each user's first rating in [start, end) by (timestamp, movie id) is
    the target, their ratings before `start` the history. Users with no rating before `start` are new
    (cold start, counted, not scored)."""
    ts = ratings["timestamp"].to_numpy(np.int64)
    before = ts < start
    window = ~before if end is None else ~before & (ts < end)
    post = ratings[window]
    movie = movie_index(movie_ids, ratings, "ratings")
    p_user, p_movie, p_ts = post["user_id"].to_numpy(np.int64), movie[window], ts[window]
    order = np.lexsort((p_movie, p_ts, p_user))
    first = order[np.r_[True, p_user[order][1:] != p_user[order][:-1]]] if len(order) else order
    fit = ratings[before]
    h, no_history = _histories(fit["user_id"].to_numpy(np.int64), movie[before], ts[before],
                               p_user[first], p_movie[first], len(movie_ids))
    return TimeSplit(h, fit, int(start), len(no_history))


# ---- scoring ---------------------------------------------------------------------------------------

def default_chunk(n_movies: int) -> int:
    return max(1, CHUNK_BYTES // (8 * max(n_movies, 1)))


def rank_users(h: Heldout, score_chunk: Callable[[int, int], np.ndarray], *, recommendable: np.ndarray | None = None,
               chunk_users: int | None = None) -> np.ndarray:
    """Each user's pessimistic target rank; score_chunk(lo, hi) -> [hi - lo, n_movies] scores of users lo..hi-1."""
    chunk = chunk_users or default_chunk(h.n_movies)
    ranks = []
    for lo in range(0, h.n_users, chunk):
        hi = min(lo + chunk, h.n_users)
        items, _, rows = h.chunk(lo, hi)
        ranks.append(ranks_excluding(score_chunk(lo, hi), h.targets[lo:hi], rows, items, recommendable))
    return np.concatenate(ranks) if ranks else np.array([])


def rule_queries(embeddings: np.ndarray, items: np.ndarray, starts: np.ndarray, rule: dict[str, Any]) -> np.ndarray:
    """The query vector of each history (items[starts[r]:starts[r+1]], oldest first) under `rule`."""
    if rule.get("name") == "latest":
        return np.asarray(embeddings[items[starts[1:] - 1]], np.float32)
    return rules.history_queries(embeddings, items, starts, rule)


def score_rule(h: Heldout, embeddings: np.ndarray, rule: dict[str, Any], *, chunk_users: int | None = None,
               recommendable: np.ndarray | None = None) -> M:
    """Metrics of movie embeddings [n_movies, dim] (row = movie index) with a query rule: rule.json's
    params (the served history rule, via rules.history_queries) or {"name": "latest"} (DGL's rule).

    recommendable: optional bool [n_movies]; False marks movies the model cannot recommend (a target
    among them is a miss).
    """
    emb = np.asarray(embeddings, np.float32)
    if emb.ndim != 2 or emb.shape[0] != h.n_movies:
        raise ValueError(f"embeddings have shape {emb.shape}, expected ({h.n_movies}, dim)")

    def scores(lo: int, hi: int) -> np.ndarray:
        items, starts, _ = h.chunk(lo, hi)
        return rule_queries(emb, items, starts, rule) @ emb.T

    return metrics_from_ranks(rank_users(h, scores, recommendable=recommendable, chunk_users=chunk_users))


@dataclass(frozen=True)
class Baselines:
    """The baselines fitted on one set of interactions (movie index space)."""

    popularity: np.ndarray
    neighbours: sp.csr_matrix
    transitions: sp.csr_matrix

    @classmethod
    def fit(cls, interactions: pd.DataFrame, movie_ids: np.ndarray, latest: np.ndarray | None = None) -> Baselines:
        """Fit on (user_id, movie_id, timestamp) rows; `latest`: the only movies item-kNN will be asked about."""
        movie = movie_index(movie_ids, interactions, "baseline interactions")
        _, user = np.unique(interactions["user_id"].to_numpy(np.int64), return_inverse=True)
        n_users, n_movies = int(user.max(initial=-1)) + 1, len(movie_ids)
        return cls(baselines.popularity(movie, n_movies),
                   baselines.itemknn_neighbours(user, movie, n_users, n_movies, rows=latest),
                   baselines.transition_counts(user, movie, interactions["timestamp"].to_numpy(np.int64), n_movies))

    def scorers(self, h: Heldout) -> dict[str, Callable[[int, int], np.ndarray]]:
        latest = h.latest
        return {
            "popularity": lambda lo, hi: np.broadcast_to(self.popularity, (hi - lo, h.n_movies)),
            "itemknn": lambda lo, hi: baselines.itemknn_scores(self.neighbours, latest[lo:hi], self.popularity),
            "transitions": lambda lo, hi: baselines.transition_scores(self.transitions, latest[lo:hi],
                                                                      self.popularity),
        }

    def score(self, h: Heldout, *, chunk_users: int | None = None) -> dict[str, M]:
        return {name: metrics_from_ranks(rank_users(h, fn, chunk_users=chunk_users))
                for name, fn in self.scorers(h).items()}


def score_methods(h: Heldout, fitted: Baselines, embeddings: np.ndarray | None, rule: dict[str, Any] | None,
                  *, chunk_users: int | None = None) -> dict[str, M]:
    """Every method on one Heldout: both model rules (when embeddings are given) and the baselines."""
    out: dict[str, M] = {}
    if embeddings is not None:
        out["pinsage_latest"] = score_rule(h, embeddings, LATEST_RULE, chunk_users=chunk_users)
        out[SERVED] = score_rule(h, embeddings, rule or {}, chunk_users=chunk_users)
    return out | fitted.score(h, chunk_users=chunk_users)


# ---- another model's vectors on this candidate's data (champion / challenger) ---------------------

def score_vectors(processed: StepResult, graph: StepResult, split: str, movie_ids: np.ndarray,
                  vectors: np.ndarray, rule: dict[str, Any], *, chunk_users: int | None = None) -> M:
    """Metrics of another model's vectors (row i = MovieLens movie movie_ids[i]) on this candidate's split.

    split: "val" or "test" (leave-one-out), "time_val" or "time_test" (the time split). A catalog
    movie the other model lacks is never recommended, and a target it lacks is a miss; its movies
    outside this catalog are ignored. A history is queried from the movies the model has (in order);
    a user none of whose history movies it has is a miss. The user count is the candidate's.
    """
    catalog = _catalog(graph)
    h = _split_heldout(processed, catalog, split)
    ids = np.asarray(movie_ids, np.int64)
    vecs = np.asarray(vectors, np.float32)
    if vecs.ndim != 2 or len(vecs) != len(ids):
        raise InputError(f"vectors have shape {vecs.shape}, expected one row per movie id ({len(ids)})",
                         rule="one_vector_per_movie_id")
    if len(np.unique(ids)) != len(ids):
        raise InputError("movie ids of the vectors are not unique", rule="unique_movie_ids")
    pos = np.searchsorted(catalog, ids)
    inside = (pos < len(catalog)) & (catalog[np.minimum(pos, len(catalog) - 1)] == ids)
    known = np.zeros(len(catalog), bool)
    known[pos[inside]] = True
    emb = np.zeros((len(catalog), vecs.shape[1]), np.float32)
    emb[pos[inside]] = vecs[inside]

    keep = known[h.items]
    kept = np.add.reduceat(keep.astype(np.int64), h.starts[:-1]) if len(h.items) else np.zeros(h.n_users, np.int64)
    kept[np.diff(h.starts) == 0] = 0
    queried = kept > 0
    starts = np.zeros(int(queried.sum()) + 1, np.int64)
    np.cumsum(kept[queried], out=starts[1:])
    has = Heldout(h.items[keep], starts, h.targets[queried], h.n_movies, h.user_ids[queried])

    def scores(lo: int, hi: int) -> np.ndarray:
        items, st, _ = has.chunk(lo, hi)
        return rule_queries(emb, items, st, rule) @ emb.T

    ranks = rank_users(has, scores, recommendable=known, chunk_users=chunk_users)
    return metrics_from_ranks(np.concatenate([ranks, np.full(int((~queried).sum()), np.inf)]))


def _catalog(graph: StepResult) -> np.ndarray:
    with np.load(graph.out("id_map.npz")) as ids:
        return ids["movie_ids"].astype(np.int64)


def _split_heldout(processed: StepResult, catalog: np.ndarray, split: str) -> Heldout:
    if split in SPLITS:
        return leave_one_out(processed.path, catalog, split)  # type: ignore[arg-type]
    if split in ("time_val", "time_test"):
        ratings = _concat([read_interactions(processed.path, name) for name in ("train", "val", "test")])
        t_val, t_test = time_cutoffs(ratings["timestamp"].to_numpy())
        return (time_split(ratings, catalog, t_val, t_test) if split == "time_val"
                else time_split(ratings, catalog, t_test)).heldout
    raise ValueError(f"split must be one of val, test, time_val, time_test; got {split!r}")


# ---- what leave-one-out leaks, and what the time split can say about the model --------------------

def later_share(fit: pd.DataFrame, events: pd.DataFrame) -> dict[str, float]:
    """How much of the fit data about each event's movie postdates the event (the cross-user time leak).

    mean: the average over events (with any fit rating of their movie) of the share of that movie's
    fit ratings later than the event; pooled: the same over all such ratings together.
    """
    f_movie, f_ts = fit["movie_id"].to_numpy(np.int64), fit["timestamp"].to_numpy(np.int64)
    order = np.lexsort((f_ts, f_movie))
    f_movie, f_ts = f_movie[order], f_ts[order]
    e_movie, e_ts = events["movie_id"].to_numpy(np.int64), events["timestamp"].to_numpy(np.int64)
    lo, hi = np.searchsorted(f_movie, e_movie, "left"), np.searchsorted(f_movie, e_movie, "right")
    total = hi - lo
    # Within a movie's segment the timestamps are sorted: the later ones start at the first ts > event.
    later = hi - np.searchsorted(f_movie * 2**33 + f_ts, e_movie * 2**33 + e_ts, "right")  # ts < 2**33
    has = total > 0
    return {"mean": float(np.mean(later[has] / total[has])) if has.any() else 0.0,
            "pooled": float(later.sum() / max(total.sum(), 1)), "events": int(has.sum())}


def same_second(a: pd.DataFrame, b: pd.DataFrame) -> float:
    """Share of the users in both frames (one row each) whose two rows share a timestamp."""
    m = a[["user_id", "timestamp"]].merge(b[["user_id", "timestamp"]], on="user_id")
    return float((m["timestamp_x"] == m["timestamp_y"]).mean()) if len(m) else 0.0


def loo_facts(frames: dict[str, pd.DataFrame]) -> dict[str, Any]:
    """The leave-one-out protocol's leak and tie facts on this data."""
    train = frames["train"]
    last_train = train.sort_values(["user_id", "timestamp", "movie_id"]).groupby("user_id").tail(1)
    return {
        "history": {"val": "train", "test": "train + val"},
        "baselines_fitted_on": "train (the data the model's graph and training use), for val and test",
        "tie_order": "a user's ratings are ordered by (timestamp, movie_id)",
        "same_second": {"val_test": same_second(frames["val"], frames["test"]),
                        "train_val": same_second(last_train, frames["val"])},
        "train_ratings_after_heldout": {"val": later_share(train, frames["val"]),
                                        "test": later_share(train, frames["test"])},
    }


def model_leak(train: pd.DataFrame, cutoff: int, h: Heldout, movie_ids: np.ndarray) -> dict[str, float]:
    """What the leave-one-out-trained embeddings know about the time split's future."""
    ts = train["timestamp"].to_numpy(np.int64)
    pairs = set(zip(train["user_id"].to_numpy(np.int64)[ts >= cutoff].tolist(),
                    train["movie_id"].to_numpy(np.int64)[ts >= cutoff].tolist()))
    target_ids = movie_ids[h.targets]
    in_train = sum((u, m) in pairs for u, m in zip(h.user_ids.tolist(), target_ids.tolist()))
    return {"train_ratings_at_or_after_cutoff": float(np.mean(ts >= cutoff)) if len(ts) else 0.0,
            "targets_in_train": in_train / max(h.n_users, 1)}


# ---- the step ----------------------------------------------------------------------------------------

def evaluate(processed: StepResult, graph: StepResult, trained: StepResult, root: Path, *,
             force: bool = False, chunk_users: int | None = None) -> StepResult:
    inputs = {"preprocess": processed.key, "build_graph": graph.key, "train": trained.key}
    params = {"methods": list(METHODS), "splits": list(SPLITS), "time_quantiles": list(TIME_QUANTILES),
              "knn_neighbours": baselines.KNN_NEIGHBOURS}

    def build(tmp: Path) -> dict[str, Any]:
        started = time.perf_counter()
        frames = {name: read_interactions(processed.path, name) for name in ("train", "val", "test")}
        movie_ids = _catalog(graph)
        emb_path = trained.out("embeddings.npy")
        emb = np.load(emb_path)
        if emb.ndim != 2 or emb.shape[0] != len(movie_ids):
            raise InputError(f"embeddings have shape {emb.shape}, expected one row per catalog movie "
                             f"({len(movie_ids)})", file=emb_path, rule="one_row_per_movie")
        rule = read_json(trained.out("rule.json"))
        facts = {"model_version": trained.manifest["model_version"], "served": SERVED,
                 "baselines": list(BASELINES), **evaluate_frames(frames, movie_ids, emb, rule, chunk_users),
                 "eval_s": round(time.perf_counter() - started, 2)}
        write_json(tmp / "metrics.json", facts)
        for protocol, metrics in (("loo", facts["metrics"]), ("time", facts["protocols"]["time_split"]["metrics"])):
            for split, by_method in metrics.items():
                for method, m in by_method.items():
                    log.info("%s %-4s %-16s HR@10 %.4f  NDCG@10 %.4f  HR@20 %.4f  MRR %.4f  (%d users)",
                             protocol, split, method, m["hr@10"], m["ndcg@10"], m["hr@20"], m["mrr"], m["users"])
        return facts

    return run_step(root, "evaluate", inputs=inputs, params=params, build=build, force=force)


def evaluate_frames(frames: dict[str, pd.DataFrame], movie_ids: np.ndarray, embeddings: np.ndarray | None,
                    rule: dict[str, Any] | None, chunk_users: int | None = None) -> dict[str, Any]:
    """{"metrics": {split: {method: M}}, "protocols": {...}, "counts": {...}} for train/val/test frames.

    The model methods are scored only when embeddings are given (row = movie index of movie_ids).
    """
    heldout = {split: heldout_from(*loo_frames(frames, split), movie_ids) for split in SPLITS}
    latest = np.concatenate([h.latest for h in heldout.values()])
    fitted = Baselines.fit(frames["train"], movie_ids, latest)
    metrics = {split: score_methods(h, fitted, embeddings, rule, chunk_users=chunk_users)
               for split, h in heldout.items()}
    counts = {"movies": len(movie_ids),
              **{f"{split}_users": h.n_users for split, h in heldout.items()},
              **{f"{split}_skipped_rewatches": h.skipped_rewatches for split, h in heldout.items()}}

    ratings = _concat([frames["train"], frames["val"], frames["test"]])
    t_val, t_test = time_cutoffs(ratings["timestamp"].to_numpy())
    timed = {"val": time_split(ratings, movie_ids, t_val, t_test), "test": time_split(ratings, movie_ids, t_test)}
    time_metrics = {}
    for split, ts in timed.items():
        if ts.heldout.n_users == 0:  # an empty window (a tiny or short release): nothing to report
            time_metrics[split] = {}
            continue
        fit = Baselines.fit(ts.fit, movie_ids, ts.heldout.latest)
        time_metrics[split] = score_methods(ts.heldout, fit, embeddings, rule, chunk_users=chunk_users)
    protocols = {
        "leave_one_out": {"metrics": "metrics (top level)", **loo_facts(frames)},
        "time_split": {
            "quantiles": list(TIME_QUANTILES), "cutoffs": {"val": t_val, "test": t_test},
            "target": "each user's first rating at or after the cut-off (val: before the test cut-off), "
                      "by (timestamp, movie_id); history = every rating before the cut-off",
            "baselines_fitted_on": "every rating before the cut-off",
            "metrics": time_metrics,
            "counts": {split: {"users": ts.heldout.n_users, "new_users": ts.new_users,
                               "skipped_rewatches": ts.heldout.skipped_rewatches} for split, ts in timed.items()},
            **({"model_trained_on": "the leave-one-out train split, which holds ratings after the cut-offs: "
                                    "the pinsage figures here are optimistic (see model_leak)",
                "model_leak": {split: model_leak(frames["train"], ts.cutoff, ts.heldout, movie_ids)
                               for split, ts in timed.items()}} if embeddings is not None else {}),
        },
    }
    return {"metrics": metrics, "protocols": protocols, "counts": counts}
