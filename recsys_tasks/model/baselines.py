"""Non-learned recommenders the model must beat, fitted on the data the model learns from.

All work in the catalog's movie index space (row i = id_map movie_ids[i]) and score every movie
for a batch of users from their latest history movie (popularity ignores the user). Equal scores
are ranked pessimistically by the metrics, so each baseline breaks its own large ties by
popularity, the ordering a shop would show when it knows nothing better.

Memory is bounded at any catalog size: item-kNN keeps each movie's top-k cosine neighbours in a
sparse matrix (computed a block of movies at a time, never a dense movies x movies matrix), the
transition counts are sparse, and scores are made for a chunk of users at a time by the caller.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from recsys_tasks.logs import progress

KNN_NEIGHBOURS = 200  # per movie; rank-exact for top-20 metrics unless a user has seen most of them
BLOCK_BYTES = 64 << 20  # one dense block of similarity rows (float64) while picking neighbours


def popularity(movie_idx: np.ndarray, n_movies: int) -> np.ndarray:
    """Interaction count per movie (float64 [n_movies])."""
    return np.bincount(movie_idx, minlength=n_movies).astype(np.float64)


def popularity_tiebreak(pop: np.ndarray) -> np.ndarray:
    """Popularity squeezed into [0, 1): added to integer scores it orders ties without reordering them."""
    return pop / (pop.max(initial=0.0) + 1.0)


def binary_interactions(user_idx: np.ndarray, movie_idx: np.ndarray, n_users: int, n_movies: int) -> sp.csr_matrix:
    """The binary user x movie matrix (float32 CSR; a repeated (user, movie) pair counts once)."""
    x = sp.csr_matrix((np.ones(len(user_idx), np.float32), (user_idx, movie_idx)), shape=(n_users, n_movies))
    x.sum_duplicates()
    x.data[:] = 1.0
    return x


def itemknn_neighbours(user_idx: np.ndarray, movie_idx: np.ndarray, n_users: int, n_movies: int, *,
                       k: int = KNN_NEIGHBOURS, rows: np.ndarray | None = None,
                       block_bytes: int = BLOCK_BYTES) -> sp.csr_matrix:
    """Each movie's k most cosine-similar movies (float32 CSR [n_movies, n_movies], self excluded).

    Cosine between the movies' columns of the binary user x movie matrix, exact for the pairs kept.
    Only movies co-watched at least once are neighbours (a row may hold fewer than k); ties at the
    k-th similarity keep the lower movie index. `rows`: compute only these movies' neighbours (the
    latest movies of the users to score); the other rows stay empty.
    """
    x = binary_interactions(user_idx, movie_idx, n_users, n_movies)
    xt = x.T.tocsr()  # movie x user
    norms = np.sqrt(np.asarray(x.sum(axis=0), dtype=np.float64).ravel())
    wanted = np.arange(n_movies) if rows is None else np.unique(np.asarray(rows, np.int64))
    block = max(1, block_bytes // (8 * max(n_movies, 1)))
    out_rows, out_cols, out_vals = [], [], []
    for lo in progress(range(0, len(wanted), block), desc="item-kNN neighbours",
                       total=-(-len(wanted) // block), unit="block"):
        b = wanted[lo:lo + block]
        co = (xt[b] @ x).toarray().astype(np.float64)  # co-watch counts, exact integers
        with np.errstate(divide="ignore", invalid="ignore"):
            sim = co / (norms[b, None] * norms[None, :])
        sim = np.nan_to_num(sim, nan=0.0, posinf=0.0).astype(np.float32)
        sim[np.arange(len(b)), b] = 0.0  # a movie is not its own neighbour
        r, c = _top_k_positive(sim, k)
        out_rows.append(b[r])
        out_cols.append(c)
        out_vals.append(sim[r, c])
    if not out_rows:
        return sp.csr_matrix((n_movies, n_movies), dtype=np.float32)
    return sp.csr_matrix((np.concatenate(out_vals), (np.concatenate(out_rows), np.concatenate(out_cols))),
                         shape=(n_movies, n_movies), dtype=np.float32)


def _top_k_positive(sim: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(row, col) of each row's k largest positive entries; ties at the k-th value keep lower columns."""
    n = sim.shape[1]
    if k >= n:
        return np.nonzero(sim > 0)
    kth = -np.partition(-sim, k - 1, axis=1)[:, k - 1:k]  # the k-th largest value of each row
    above = sim > kth
    tied = sim == kth
    room = k - above.sum(axis=1, keepdims=True)
    keep = (above | (tied & (np.cumsum(tied, axis=1) <= room))) & (sim > 0)
    return np.nonzero(keep)


def itemknn_scores(neighbours: sp.csr_matrix, latest: np.ndarray, pop: np.ndarray) -> np.ndarray:
    """Similarity to each user's latest movie; the movies outside its neighbours follow, by popularity."""
    s = neighbours[latest].toarray().astype(np.float64)
    return np.where(s > 0, s, popularity_tiebreak(pop)[None, :] - 1.0)


def transition_counts(user_idx: np.ndarray, movie_idx: np.ndarray, timestamp: np.ndarray,
                      n_movies: int) -> sp.csr_matrix:
    """[n_movies, n_movies] counts of a -> b: b directly follows a in a user's (timestamp, movie id) order.

    float32 CSR: counts are exact below 2**24 per pair, and the matrix holds at most one entry per rating.
    """
    order = np.lexsort((movie_idx, timestamp, user_idx))
    u, m = user_idx[order], movie_idx[order]
    same_user = u[1:] == u[:-1]
    src, dst = m[:-1][same_user], m[1:][same_user]
    return sp.csr_matrix((np.ones(len(src), np.float32), (src, dst)), shape=(n_movies, n_movies))


def transition_scores(counts: sp.csr_matrix, latest: np.ndarray, pop: np.ndarray) -> np.ndarray:
    """How often each movie followed the user's latest movie; equal counts are ordered by popularity."""
    return counts[latest].toarray().astype(np.float64) + popularity_tiebreak(pop)[None, :]
