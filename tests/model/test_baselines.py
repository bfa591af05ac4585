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


def test_itemknn_picks_the_most_co_watched_movie() -> None:
    # users x movies: u0 {0,1} (listed twice), u1 {0,1}, u2 {0,2}, u3..u5 {2}, u6 {4}; movie 3 unwatched.
    rows = [(0, 0), (0, 0), (0, 1), (1, 0), (1, 1), (2, 0), (2, 2), (3, 2), (4, 2), (5, 2), (6, 4)]
    u, m = (np.array(c) for c in zip(*rows))
    sim = baselines.itemknn_similarity(u, m, 7, 5)
    assert sim[0, 1] == pytest.approx(2 / math.sqrt(3 * 2))  # co-watched by 2; 3 and 2 watchers
    assert sim[0, 2] == pytest.approx(1 / math.sqrt(3 * 4))
    assert sim[1, 2] == 0 and sim[3].tolist() == [0] * 5
    np.testing.assert_allclose(sim, sim.T)
    scores = baselines.itemknn_scores(sim, np.array([0]), baselines.popularity(m, 5))[0]
    # 1 before the more popular 2; movies never co-watched with 0 after them, by popularity.
    assert order(scores, seen={0}) == [1, 2, 4, 3]
