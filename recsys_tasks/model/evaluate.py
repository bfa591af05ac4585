"""evaluate: the model (both query rules) and the baselines on the test split, in one run.

Protocol (DESIGN.md): each user with a test movie is recommended from their history = train + the
validation movie, ordered by (timestamp, movie id); every catalog movie is scored, the history's
movies are excluded, and the test movie's rank gives HR@10, NDCG@10, Recall@20 and MRR (ties
pessimistic). Baselines are fitted on train only, the data the model's graph is built from (the
validation movie enters only as the latest history movie): popularity, item-kNN cosine
co-occurrence and transition counts from the latest movie. A user whose test movie is already in
their history (a re-watch) cannot be ranked under this protocol and is skipped; the count is reported.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from recsys_tasks.artifacts import StepResult, read_json, run_step, write_json
from recsys_tasks.errors import InputError
from recsys_tasks.logs import get_logger
from recsys_tasks.model import baselines, rules
from recsys_tasks.model.metrics import evaluate_scorer

log = get_logger(__name__)
METHODS = ("pinsage_latest", "pinsage_history", "popularity", "itemknn", "transitions")
COLUMNS = ["user_id", "movie_id", "timestamp"]
Scorer = Callable[[np.ndarray], np.ndarray]


def evaluate(processed: StepResult, graph: StepResult, trained: StepResult, root: Path, *,
             force: bool = False) -> StepResult:
    inputs = {"preprocess": processed.key, "build_graph": graph.key, "train": trained.key}
    params = {"split": "test", "history": "train+val", "methods": list(METHODS)}

    def build(tmp: Path) -> dict[str, Any]:
        started = time.perf_counter()
        frames = {name: _read(processed.out(f"{name}.parquet")) for name in ("train", "val", "test")}
        with np.load(graph.out("id_map.npz")) as ids:
            movie_ids = ids["movie_ids"]
        emb_path = trained.out("embeddings.npy")
        emb = np.load(emb_path)
        if emb.ndim != 2 or emb.shape[0] != len(movie_ids):
            raise InputError(f"embeddings have shape {emb.shape}, expected one row per catalog movie "
                             f"({len(movie_ids)})", file=emb_path, rule="one_row_per_movie")
        metrics, counts = evaluate_split(frames["train"], frames["val"], frames["test"], movie_ids, emb,
                                         read_json(trained.out("rule.json")))
        facts = {"model_version": trained.manifest["model_version"], "split": "test", "metrics": metrics,
                 "counts": counts, "eval_s": round(time.perf_counter() - started, 2)}
        write_json(tmp / "metrics.json", facts)
        for method, m in metrics.items():
            log.info("test %-16s HR@10 %.4f  NDCG@10 %.4f  Recall@20 %.4f  MRR %.4f  (%d users)",
                     method, m["hr@10"], m["ndcg@10"], m["recall@20"], m["mrr"], m["users"])
        return facts

    return run_step(root, "evaluate", inputs=inputs, params=params, build=build, force=force)


def _read(path: Path) -> pd.DataFrame:
    df = pd.read_parquet(path, columns=COLUMNS)
    df.attrs["file"] = str(path)  # named in InputError messages
    return df


@dataclass(frozen=True)
class Histories:
    """Evaluated users: history movies (oldest first, concatenated), their offsets, and the test movie."""

    items: np.ndarray  # int64: movie indices, user by user
    starts: np.ndarray  # int64 [n + 1]: user r's history is items[starts[r]:starts[r + 1]]
    targets: np.ndarray  # int64 [n]

    @property
    def latest(self) -> np.ndarray:
        return self.items[self.starts[1:] - 1]

    def seen(self, n_movies: int) -> sp.csr_matrix:
        rows = np.repeat(np.arange(len(self.targets)), np.diff(self.starts))
        return sp.csr_matrix((np.ones(len(self.items), np.float32), (rows, self.items)),
                             shape=(len(self.targets), n_movies))

    def each(self) -> list[np.ndarray]:
        return np.split(self.items, self.starts[1:-1])


def movie_index(movie_ids: np.ndarray, df: pd.DataFrame, name: str) -> np.ndarray:
    """Catalog index of each row's movie; a movie outside the catalog is an InputError naming the row."""
    ids = df["movie_id"].to_numpy(np.int64)
    idx = np.minimum(np.searchsorted(movie_ids, ids), len(movie_ids) - 1)
    bad = np.flatnonzero(movie_ids[idx] != ids)
    if len(bad):
        raise InputError(f"movie_id {ids[bad[0]]} is not in the catalog (id_map movie_ids)",
                         file=df.attrs.get("file", name), row=int(bad[0]), rule="movie_in_catalog")
    return idx


def build_histories(train: pd.DataFrame, val: pd.DataFrame, test: pd.DataFrame,
                    movie_ids: np.ndarray) -> tuple[Histories, int]:
    """Histories of the test users (train + val, by (timestamp, movie id)); also the re-watches skipped."""
    test_file = test.attrs.get("file", "test")
    if len(test) == 0:
        raise InputError("the test split is empty: nothing to evaluate", file=test_file,
                         rule="test_not_empty")
    test_users = test["user_id"].to_numpy(np.int64)
    order = np.argsort(test_users, kind="stable")
    users_sorted = test_users[order]
    dup = np.flatnonzero(users_sorted[1:] == users_sorted[:-1])
    if len(dup):
        raise InputError(f"user {users_sorted[dup[0]]} has more than one test row", file=test_file,
                         row=int(order[dup[0] + 1]), rule="one_test_row_per_user")
    targets = movie_index(movie_ids, test, "test")[order]
    hist = pd.concat([train[COLUMNS], val[COLUMNS]], ignore_index=True)
    h_movie = np.concatenate([movie_index(movie_ids, train, "train"), movie_index(movie_ids, val, "val")])
    h_user = hist["user_id"].to_numpy(np.int64)
    row = np.minimum(np.searchsorted(users_sorted, h_user), len(users_sorted) - 1)
    keep = users_sorted[row] == h_user
    row, h_movie, ts = row[keep], h_movie[keep], hist["timestamp"].to_numpy(np.int64)[keep]
    srt = np.lexsort((h_movie, ts, row))
    row, h_movie = row[srt], h_movie[srt]
    sizes = np.bincount(row, minlength=len(users_sorted))
    if (sizes == 0).any():
        r = int(np.flatnonzero(sizes == 0)[0])
        raise InputError(f"user {users_sorted[r]} has a test movie but no train or val history",
                         file=test_file, row=int(order[r]), rule="test_user_has_history")
    rewatch = np.zeros(len(users_sorted), bool)
    rewatch[row[h_movie == targets[row]]] = True
    ok = ~rewatch[row]
    starts = np.zeros(int((~rewatch).sum()) + 1, np.int64)
    np.cumsum(sizes[~rewatch], out=starts[1:])
    return Histories(h_movie[ok], starts, targets[~rewatch]), int(rewatch.sum())


def evaluate_split(train: pd.DataFrame, val: pd.DataFrame, test: pd.DataFrame, movie_ids: np.ndarray,
                   embeddings: np.ndarray | None, rule_params: dict[str, Any] | None = None,
                   ) -> tuple[dict[str, dict[str, float]], dict[str, int]]:
    """Metrics per method on the test split (the pinsage methods only when embeddings are given).

    Frames have user_id, movie_id, timestamp; movie_ids is the sorted catalog (id_map movie_ids).
    Returns ({method: metrics}, counts).
    """
    n_movies = len(movie_ids)
    h, rewatches = build_histories(train, val, test, movie_ids)
    if len(h.targets) == 0:
        raise InputError("no test user can be evaluated (every test movie is a re-watch)",
                         file=test.attrs.get("file", "test"), rule="test_not_only_rewatches")
    latest = h.latest
    t_movie, t_user = movie_index(movie_ids, train, "train"), train["user_id"].to_numpy(np.int64)
    pop = baselines.popularity(t_movie, n_movies)
    _, t_user_idx = np.unique(t_user, return_inverse=True)
    sim = baselines.itemknn_similarity(t_user_idx, t_movie, int(t_user_idx.max(initial=-1)) + 1, n_movies)
    trans = baselines.transition_counts(t_user_idx, t_movie, train["timestamp"].to_numpy(np.int64), n_movies)

    scorers: dict[str, Scorer] = {}
    if embeddings is not None:
        emb = np.asarray(embeddings, np.float32)
        q_latest = emb[latest]
        q_hist = np.stack([rules.history_query(emb[items], rule_params) for items in h.each()])
        scorers["pinsage_latest"] = lambda rows: q_latest[rows] @ emb.T
        scorers["pinsage_history"] = lambda rows: q_hist[rows] @ emb.T
    scorers["popularity"] = lambda rows: np.broadcast_to(pop, (len(rows), n_movies))
    scorers["itemknn"] = lambda rows: baselines.itemknn_scores(sim, latest[rows], pop)
    scorers["transitions"] = lambda rows: baselines.transition_scores(trans, latest[rows], pop)

    seen, users = h.seen(n_movies), np.arange(len(h.targets))
    metrics = {name: evaluate_scorer(score, users, h.targets, seen) for name, score in scorers.items()}
    return metrics, {"users": len(h.targets), "skipped_rewatches": rewatches, "movies": n_movies}
