"""Ranking metrics against hand-computed examples: exclusion of seen movies, pessimistic ties, cut-offs, misses."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.sparse as sp

from recsys_tasks.model.metrics import METRIC_KEYS, metrics_from_ranks, ranks_excluding


def seen_matrix(rows: list[list[int]], n_items: int) -> sp.csr_matrix:
    r = [i for i, items in enumerate(rows) for _ in items]
    c = [j for items in rows for j in items]
    return sp.csr_matrix((np.ones(len(c)), (r, c)), shape=(len(rows), n_items))


def target_ranks(scores: np.ndarray, targets: np.ndarray, seen: sp.csr_matrix) -> np.ndarray:
    """ranks_excluding with the seen items given as a matrix, as these hand-made examples write them."""
    rows, cols = seen.nonzero()
    return ranks_excluding(scores, targets, rows, cols)


def test_one_user_five_items_by_hand() -> None:
    # Movie 0 (score 0.9) is seen; the target 4 (0.3) is beaten by 2 (0.7) and 1 (0.5): rank 3.
    scores = np.array([[0.9, 0.5, 0.7, 0.1, 0.3]])
    ranks = target_ranks(scores, np.array([4]), seen_matrix([[0]], 5))
    assert ranks.tolist() == [3]
    m = metrics_from_ranks(ranks)
    assert m == pytest.approx({"hr@10": 1.0, "hr@20": 1.0, "ndcg@10": 1 / math.log2(4), "ndcg@20": 1 / math.log2(4),
                               "recall@10": 1.0, "recall@20": 1.0, "mrr": 1 / 3, "users": 1})
    assert list(m) == [*METRIC_KEYS, "users"]
    # Without the exclusion the seen movie would count: rank 4.
    assert target_ranks(scores, np.array([4]), seen_matrix([[]], 5)).tolist() == [4]
    assert scores[0, 0] == 0.9  # the caller's scores are not masked in place


def test_ties_are_pessimistic() -> None:
    constant = np.zeros((1, 5))
    assert target_ranks(constant, np.array([0]), seen_matrix([[]], 5)).tolist() == [5]
    assert target_ranks(constant, np.array([2]), seen_matrix([[1]], 5)).tolist() == [4]
    # One strictly higher, one tied with the target: both above it.
    assert target_ranks(np.array([[0.5, 0.9, 0.5, 0.1]]), np.array([0]), seen_matrix([[]], 4)).tolist() == [3]


def test_cut_offs_at_10_and_20() -> None:
    m = metrics_from_ranks(np.array([1, 10, 11, 20, 21]))
    assert m["hr@10"] == m["recall@10"] == pytest.approx(2 / 5)
    assert m["hr@20"] == m["recall@20"] == pytest.approx(4 / 5)
    assert m["ndcg@10"] == pytest.approx((1.0 + 1 / math.log2(11)) / 5)
    assert m["ndcg@20"] == pytest.approx((1.0 + 1 / math.log2(11) + 1 / math.log2(12) + 1 / math.log2(21)) / 5)
    assert m["mrr"] == pytest.approx((1 + 1 / 10 + 1 / 11 + 1 / 20 + 1 / 21) / 5)
    assert m["users"] == 5


def test_unrecommendable_movies_never_rank_and_such_a_target_is_a_miss() -> None:
    scores = np.array([[0.2, 0.9, 0.1, 0.5], [0.2, 0.9, 0.1, 0.5]])
    ok = np.array([True, False, True, True])  # movie 1 cannot be recommended
    # Row 0: target 0 would be beaten by 1 and 3; 1 is out -> rank 2. Row 1: target 1 itself is out: inf.
    ranks = ranks_excluding(scores, np.array([0, 1]), np.array([], int), np.array([], int), ok)
    assert ranks.tolist() == [2, math.inf]
    m = metrics_from_ranks(ranks)
    assert m["hr@10"] == 0.5 and m["mrr"] == pytest.approx(0.25) and m["ndcg@20"] == pytest.approx(0.5 / math.log2(3))


def test_a_seen_or_nan_target_is_refused() -> None:
    with pytest.raises(ValueError, match="no finite score"):
        target_ranks(np.ones((1, 3)), np.array([1]), seen_matrix([[1]], 3))
    with pytest.raises(ValueError, match="NaN"):
        target_ranks(np.array([[1.0, np.nan, 0.0]]), np.array([1]), seen_matrix([[]], 3))
    with pytest.raises(ValueError, match="NaN"):  # a NaN on another movie too
        target_ranks(np.array([[0.1, np.nan, 0.3]]), np.array([0]), seen_matrix([[]], 3))
    with pytest.raises(ValueError, match="no users"):
        metrics_from_ranks(np.array([]))

