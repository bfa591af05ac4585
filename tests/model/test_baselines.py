"""Each baseline picks the movie it should on tiny hand-built interactions (movie index space)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from recsys_tasks.model import baselines


def order(scores: np.ndarray, seen: set[int]) -> list[int]:
    """Movies best first (stable by index), the seen ones left out."""
    return [int(i) for i in np.argsort(-scores, kind="stable") if int(i) not in seen]


def test_popularity_picks_the_most_watched_unseen_movie() -> None:
    pop = baselines.popularity(np.array([0, 0, 0, 1, 1, 2, 3, 3, 3, 3]), 5)
    assert pop.tolist() == [3, 2, 1, 4, 0]
    assert order(pop, seen={3}) == [0, 1, 2, 4]


def test_transitions_pick_the_most_frequent_successor() -> None:
    # (user, movie, timestamp), shuffled: the counts must come from each user's time order.
    rows = [(0, 0, 1), (0, 1, 2), (1, 1, 5), (1, 0, 4), (2, 0, 1), (2, 2, 2),
            (3, 2, 1), (4, 2, 1), (5, 2, 1), (6, 4, 7), (6, 3, 7), (7, 4, 1)]
    u, m, t = (np.array(c) for c in zip(*rows))
    counts = baselines.transition_counts(u, m, t, 5)
    assert counts[0].toarray().ravel().tolist() == [0, 2, 1, 0, 0]
    assert counts[3, 4] == 1 and counts[4, 3] == 0  # same second: ordered by movie id, 3 before 4
    assert counts.sum() == 4  # one pair per consecutive two of a user, none across users
    pop = baselines.popularity(m, 5)  # 2 is watched 4 times, 1 only twice
    scores = baselines.transition_scores(counts, np.array([0]), pop)[0]
    # 1 followed 0 twice: first despite 2's popularity; 3 and 4 never followed 0: by popularity.
    assert order(scores, seen={0}) == [1, 2, 4, 3]


# users x movies: u0 {0,1} (listed twice), u1 {0,1}, u2 {0,2}, u3..u5 {2}, u6 {4}; movie 3 unwatched.
KNN_ROWS = [(0, 0), (0, 0), (0, 1), (1, 0), (1, 1), (2, 0), (2, 2), (3, 2), (4, 2), (5, 2), (6, 4)]


def test_itemknn_picks_the_most_co_watched_movie() -> None:
    u, m = (np.array(c) for c in zip(*KNN_ROWS))
    sim = baselines.itemknn_neighbours(u, m, 7, 5).toarray()
    assert sim.dtype == np.float32
    assert sim[0, 1] == pytest.approx(2 / math.sqrt(3 * 2))  # co-watched by 2; 3 and 2 watchers
    assert sim[0, 2] == pytest.approx(1 / math.sqrt(3 * 4))
    assert sim[1, 2] == 0 and sim[3].tolist() == [0] * 5 and sim[0, 0] == 0  # never its own neighbour
    np.testing.assert_allclose(sim, sim.T)
    scores = baselines.itemknn_scores(baselines.itemknn_neighbours(u, m, 7, 5), np.array([0]),
                                      baselines.popularity(m, 5))[0]
    # 1 before the more popular 2; movies never co-watched with 0 after them, by popularity.
    assert order(scores, seen={0}) == [1, 2, 4, 3]


def test_itemknn_top_k_is_the_dense_cosine_truncated() -> None:
    rng = np.random.default_rng(1)
    n_users, n_movies = 60, 40
    u = rng.integers(0, n_users, 600)
    m = np.minimum(rng.geometric(0.08, 600) - 1, n_movies - 1)  # skewed: popular and rare movies
    x = np.zeros((n_users, n_movies))
    x[u, m] = 1
    co = x.T @ x
    norms = np.sqrt(np.diag(co))
    with np.errstate(divide="ignore", invalid="ignore"):
        dense = np.nan_to_num(co / np.outer(norms, norms))
    np.fill_diagonal(dense, 0)
    k = 5
    # Tiny blocks (3 movies at a time) and only some rows asked for.
    rows = np.array([0, 3, 7, 39, 3])
    top = baselines.itemknn_neighbours(u, m, n_users, n_movies, k=k, rows=rows, block_bytes=3 * 8 * n_movies)
    got = top.toarray()
    for r in range(n_movies):
        if r not in rows:
            assert got[r].sum() == 0
            continue
        kept = np.flatnonzero(got[r])
        expect = [c for c in np.lexsort((np.arange(n_movies), -dense[r])) if dense[r, c] > 0][:k]
        assert sorted(kept.tolist()) == sorted(expect)  # ties at the k-th value keep the lower index
        np.testing.assert_allclose(got[r, kept], dense[r, kept], rtol=1e-6)
    full = baselines.itemknn_neighbours(u, m, n_users, n_movies, k=n_movies).toarray()
    np.testing.assert_allclose(full, dense, rtol=1e-6)
