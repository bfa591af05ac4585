"""Non-learned recommenders the model must beat, fitted on the same split it is evaluated on.

All work in the catalog's movie index space (row i = id_map movie_ids[i]) and score every movie
for a batch of users from their latest history movie (popularity ignores the user). Equal scores
are ranked pessimistically by the metrics, so each baseline breaks its own large ties by
popularity, the ordering a shop would show when it knows nothing better.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp


def popularity(movie_idx: np.ndarray, n_movies: int) -> np.ndarray:
    """Interaction count per movie (float64 [n_movies])."""
    return np.bincount(movie_idx, minlength=n_movies).astype(np.float64)


def popularity_tiebreak(pop: np.ndarray) -> np.ndarray:
    """Popularity squeezed into [0, 1): added to integer scores it orders ties without reordering them."""
    return pop / (pop.max() + 1.0)


def itemknn_similarity(user_idx: np.ndarray, movie_idx: np.ndarray, n_users: int,
                       n_movies: int) -> np.ndarray:
    """Cosine similarity between the movies' columns of the binary user x movie matrix (dense float32).

    A dense [n_movies, n_movies] matrix is fine for MovieLens catalogs (3.9k movies: 60 MB).
    """
    x = sp.csr_matrix((np.ones(len(user_idx), np.float32), (user_idx, movie_idx)), shape=(n_users, n_movies))
    x.data[:] = 1.0  # duplicate (user, movie) pairs count once
    co = (x.T @ x).toarray().astype(np.float64)
    norms = np.sqrt(np.diag(co))
    with np.errstate(divide="ignore", invalid="ignore"):
        sim = co / np.outer(norms, norms)
    return np.nan_to_num(sim, nan=0.0, posinf=0.0).astype(np.float32)


def itemknn_scores(sim: np.ndarray, latest: np.ndarray, pop: np.ndarray) -> np.ndarray:
    """Similarity to each user's latest movie; movies never co-watched with it follow, by popularity."""
    s = sim[latest].astype(np.float64)
    return np.where(s > 0, s, popularity_tiebreak(pop)[None, :] - 1.0)


def transition_counts(user_idx: np.ndarray, movie_idx: np.ndarray, timestamp: np.ndarray,
                      n_movies: int) -> sp.csr_matrix:
    """[n_movies, n_movies] counts of a -> b: b directly follows a in a user's (timestamp, movie id) order."""
    order = np.lexsort((movie_idx, timestamp, user_idx))
    u, m = user_idx[order], movie_idx[order]
    same_user = u[1:] == u[:-1]
    src, dst = m[:-1][same_user], m[1:][same_user]
    return sp.csr_matrix((np.ones(len(src), np.float64), (src, dst)), shape=(n_movies, n_movies))


def transition_scores(counts: sp.csr_matrix, latest: np.ndarray, pop: np.ndarray) -> np.ndarray:
    """How often each movie followed the user's latest movie; equal counts are ordered by popularity."""
    return counts[latest].toarray() + popularity_tiebreak(pop)[None, :]
