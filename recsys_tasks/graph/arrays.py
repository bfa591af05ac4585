"""The graph as plain arrays (edges.npz, id_map.npz, features.npz): what training reads, with or without DGL.

A GPU box with a torch newer than DGL supports cannot load graph.bin, so every consumer of the graph
(samplers, model, export, evaluation) works from these files; graph.bin is the same graph for DGL tools.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

EDGES, ID_MAP, FEATURES, GRAPH_BIN = "edges.npz", "id_map.npz", "features.npz", "graph.bin"


@dataclass(frozen=True)
class GraphArrays:
    """Train-split interactions by node index, the id maps, and the movie features (row = movie index)."""

    user_idx: np.ndarray  # int64 [E]
    movie_idx: np.ndarray  # int64 [E]
    rating: np.ndarray  # float32 [E]
    timestamp: np.ndarray  # int64 [E]
    movie_ids: np.ndarray  # int64 [n_movies], sorted: index -> MovieLens id
    user_ids: np.ndarray  # int64 [n_users]
    year: np.ndarray  # int32 [n_movies], 0 = unknown
    genres: np.ndarray  # float32 [n_movies, n_genres] multi-hot
    title_tokens: np.ndarray  # int64 [n_movies, max_tokens], 0 = padding

    @property
    def n_users(self) -> int:
        return len(self.user_ids)

    @property
    def n_movies(self) -> int:
        return len(self.movie_ids)

    def movie_degree(self) -> np.ndarray:
        return np.bincount(self.movie_idx, minlength=self.n_movies)


def save_arrays(folder: Path, g: GraphArrays) -> None:
    np.savez(
        folder / EDGES,
        user_idx=g.user_idx,
        movie_idx=g.movie_idx,
        rating=g.rating,
        timestamp=g.timestamp,
        n_users=g.n_users,
        n_movies=g.n_movies,
    )
    np.savez(folder / ID_MAP, movie_ids=g.movie_ids, user_ids=g.user_ids)
    np.savez(folder / FEATURES, year=g.year, genres=g.genres, title_tokens=g.title_tokens)


def load_arrays(folder: Path) -> GraphArrays:
    with np.load(folder / EDGES) as e, np.load(folder / ID_MAP) as m, np.load(folder / FEATURES) as f:
        return GraphArrays(
            user_idx=e["user_idx"],
            movie_idx=e["movie_idx"],
            rating=e["rating"],
            timestamp=e["timestamp"],
            movie_ids=m["movie_ids"],
            user_ids=m["user_ids"],
            year=f["year"],
            genres=f["genres"],
            title_tokens=f["title_tokens"],
        )
