"""Each user's train movies in time order: the source of temporal positives (a movie -> what came next).

Co-watched positives (DGL's example) reward any two movies a user saw; predicting the next movie from
the recent ones is what the served rules do, and it is the signal the transitions baseline shows.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from recsys_tasks.graph.arrays import GraphArrays


@dataclass(frozen=True)
class Sequences:
    items: np.ndarray  # int64 [E]: movie indices, grouped by user, oldest first
    starts: np.ndarray  # int64 [n_users + 1]: user u's movies are items[starts[u]:starts[u+1]]
    n_movies: int

    @classmethod
    def from_graph(cls, g: GraphArrays) -> Sequences:
        order = np.lexsort((g.movie_idx, g.timestamp, g.user_idx))  # (user, time, movie), the split's order
        starts = np.zeros(g.n_users + 1, dtype=np.int64)
        np.cumsum(np.bincount(g.user_idx, minlength=g.n_users), out=starts[1:])
        return cls(g.movie_idx[order].astype(np.int64), starts, g.n_movies)

    def targets(self) -> np.ndarray:
        """Positions in `items` that have at least one earlier movie of the same user."""
        first = np.zeros(len(self.items), dtype=bool)
        first[self.starts[:-1][self.starts[:-1] < len(self.items)]] = True
        return np.flatnonzero(~first)

    def windows(self, positions: np.ndarray, length: int) -> tuple[np.ndarray, np.ndarray]:
        """The `length` movies before each position, newest first, and a mask of which exist."""
        user = np.searchsorted(self.starts, positions, side="right") - 1
        idx = positions[:, None] - np.arange(1, length + 1)[None, :]
        valid = idx >= self.starts[user][:, None]
        return self.items[np.where(valid, idx, 0)], valid

    def history(self, user: int) -> np.ndarray:
        return self.items[self.starts[user] : self.starts[user + 1]]

    def seen(self) -> sp.csr_matrix:
        """[n_users, n_movies] CSR of each user's train movies (excluded when ranking)."""
        rows = np.repeat(np.arange(len(self.starts) - 1), np.diff(self.starts))
        return sp.csr_matrix(
            (np.ones(len(self.items), dtype=np.float32), (rows, self.items)),
            shape=(len(self.starts) - 1, self.n_movies),
        )
