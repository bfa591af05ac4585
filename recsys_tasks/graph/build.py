"""build_graph: the user-movie heterograph from the train split (DGL), plus the same graph as arrays.

Movie nodes are the whole catalog (movies.parquet, sorted by id), so a movie nobody rated in train
is a node of degree 0 that still gets a feature-only embedding. Node indices come from the saved
id map, never from row order elsewhere.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from recsys_tasks.artifacts import StepResult, run_step
from recsys_tasks.data.formats import read_parquet
from recsys_tasks.errors import InputError
from recsys_tasks.graph.arrays import GRAPH_BIN, GraphArrays, save_arrays
from recsys_tasks.logs import get_logger

log = get_logger(__name__)
MAX_TITLE_TOKENS = 8


def build_graph(processed: StepResult, root: Path, *, force: bool = False) -> StepResult:
    def build(tmp: Path) -> dict[str, Any]:
        g = graph_arrays(processed.path)
        save_arrays(tmp, g)
        saved = save_dgl_graph(tmp / GRAPH_BIN, g)
        return {
            "counts": {
                "users": g.n_users,
                "movies": g.n_movies,
                "edges": len(g.user_idx),
                "rated_movies": int((g.movie_degree() > 0).sum()),
            },
            "dgl_graph": saved,
        }

    return run_step(
        root, "build_graph", inputs={"preprocess": processed.key}, params={}, build=build, force=force
    )


def graph_arrays(folder: Path) -> GraphArrays:
    """Index the train interactions by the catalog's sorted movie ids and the train users' sorted ids.

    Column by column (each read, converted and its Arrow copy dropped), so the step holds the edge
    arrays and one column in flight, not a DataFrame of the split beside them.
    """
    movies = pd.read_parquet(folder / "movies.parquet")
    path = folder / "train.parquet"
    if pq.ParquetFile(path).metadata.num_rows == 0:
        raise InputError("the train split is empty: nothing to build a graph from", file=path,
                         rule="train_not_empty")
    movie_ids = np.sort(movies["movie_id"].to_numpy(np.int64))
    train_movies = _column(path, "movie_id", np.int64)
    movie_idx = np.searchsorted(movie_ids, train_movies)
    unknown = (movie_idx >= len(movie_ids)) | (
        movie_ids[np.minimum(movie_idx, len(movie_ids) - 1)] != train_movies
    )
    if unknown.any():
        row = int(np.flatnonzero(unknown)[0])
        raise InputError(
            f"movie_id {int(train_movies[row])} is not in movies.parquet",
            file=path,
            row=row,
            rule="movie_in_catalog",
        )
    del train_movies
    user_ids, user_idx = np.unique(_column(path, "user_id", np.int64), return_inverse=True)
    year, genres, tokens = movie_features(folder, movies.sort_values("movie_id"))
    return GraphArrays(
        user_idx=user_idx.astype(np.int64, copy=False),
        movie_idx=movie_idx.astype(np.int64, copy=False),
        rating=_column(path, "rating", np.float32),
        timestamp=_column(path, "timestamp", np.int64),
        movie_ids=movie_ids,
        user_ids=user_ids,
        year=year,
        genres=genres,
        title_tokens=tokens,
    )


def _column(path: Path, name: str, dtype: type) -> np.ndarray:
    """One column as a writable array (torch.from_numpy shares it; Arrow's zero-copy views are read-only)."""
    values = read_parquet(path, columns=[name])[name].to_numpy().astype(dtype, copy=False)
    return values if values.flags.writeable else values.copy()


def movie_features(folder: Path, movies: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """year (0 = unknown), genre multi-hot, title token ids padded with 0 to MAX_TITLE_TOKENS."""
    vocab = json.loads((folder / "vocab.json").read_text())
    n = len(movies)
    year = movies["year"].fillna(0).to_numpy(np.int32, copy=True)  # writable: torch shares it
    genres = np.zeros((n, max(len(vocab["genres"]), 1)), dtype=np.float32)
    tokens = np.zeros((n, MAX_TITLE_TOKENS), dtype=np.int64)
    for i, (gids, tids) in enumerate(zip(movies["genre_ids"], movies["title_tokens"])):
        genres[i, np.asarray(gids, dtype=np.int64)] = 1.0
        tids = np.asarray(tids, dtype=np.int64)[:MAX_TITLE_TOKENS]
        tokens[i, : len(tids)] = tids
    return year, genres, tokens


def save_dgl_graph(path: Path, g: GraphArrays) -> bool:
    """graph.bin for DGL tools; skipped (False) where DGL cannot load (a torch newer than DGL supports)."""
    os.environ.setdefault("DGLBACKEND", "pytorch")
    try:
        import dgl
        import torch
    except Exception as exc:  # noqa: BLE001 - DGL fails in many ways on an unsupported torch
        log.warning("DGL unavailable (%s): writing edges.npz and id_map.npz only", exc)
        return False
    graph = to_dgl(g, dgl, torch)
    dgl.save_graphs(str(path), [graph])
    return True


def to_dgl(g: GraphArrays, dgl: Any, torch: Any) -> Any:
    """The heterograph over the arrays' memory (torch.from_numpy: no copies; both edge types share
    the edge data tensors)."""
    u, m = torch.from_numpy(g.user_idx), torch.from_numpy(g.movie_idx)
    graph = dgl.heterograph(
        {("user", "watched", "movie"): (u, m), ("movie", "watched-by", "user"): (m, u)},
        num_nodes_dict={"user": g.n_users, "movie": g.n_movies},
    )
    rating, timestamp = torch.from_numpy(g.rating), torch.from_numpy(g.timestamp)
    for etype in ("watched", "watched-by"):
        graph.edges[etype].data["rating"] = rating
        graph.edges[etype].data["timestamp"] = timestamp
    graph.nodes["movie"].data["year"] = torch.from_numpy(g.year)
    graph.nodes["movie"].data["genres"] = torch.from_numpy(g.genres)
    graph.nodes["movie"].data["title_tokens"] = torch.from_numpy(g.title_tokens)
    graph.nodes["movie"].data["movie_id"] = torch.from_numpy(g.movie_ids)
    graph.nodes["user"].data["user_id"] = torch.from_numpy(g.user_ids)
    return graph
