"""Ranking metrics for leave-one-out evaluation (one held-out movie per user).

Every method (the model with either rule, and each baseline) produces a score for every movie for
each user; `rank_metrics` excludes the movies the user has already seen, then ranks. Ties are
broken pessimistically (a tie with the target counts as ranked above it), so a constant scorer
cannot score by luck of ordering.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import scipy.sparse as sp

METRIC_KEYS = ("hr@10", "ndcg@10", "recall@20", "mrr")


def target_ranks(scores: np.ndarray, targets: np.ndarray, seen: sp.csr_matrix) -> np.ndarray:
    """1-based rank of each row's target among the movies not seen by that user.

    scores: [n, n_items] float; targets: [n] item indices; seen: [n, n_items] CSR of seen items
    (the target itself must not be marked seen).
    """
    scores = np.array(scores, dtype=np.float64)  # a copy: seen items are masked in place
    if np.isnan(scores).any():  # a NaN would rank below the target and flatter a broken scorer
        raise ValueError("scores contain NaN")
    rows, cols = seen.nonzero()
    scores[rows, cols] = -np.inf
    target_scores = scores[np.arange(len(targets)), targets]
    if not np.isfinite(target_scores).all():
        raise ValueError("a target movie has no finite score (marked as seen?)")
    # Counting ties as ranked above the target: the target itself is counted once, so this is the rank.
    return (scores >= target_scores[:, None]).sum(axis=1)


def metrics_from_ranks(ranks: np.ndarray) -> dict[str, float]:
    """HR@10, NDCG@10, Recall@20 (with one held-out item: hit within 20) and MRR, averaged over users."""
    ranks = np.asarray(ranks, dtype=np.float64)
    if ranks.size == 0:
        raise ValueError("no users to evaluate")
    return {
        "hr@10": float(np.mean(ranks <= 10)),
        "ndcg@10": float(np.mean(np.where(ranks <= 10, 1.0 / np.log2(ranks + 1), 0.0))),
        "recall@20": float(np.mean(ranks <= 20)),
        "mrr": float(np.mean(1.0 / ranks)),
        "users": int(ranks.size),
    }


def evaluate_scorer(score_batch: Callable[[np.ndarray], np.ndarray], users: np.ndarray, targets: np.ndarray,
                    seen: sp.csr_matrix, batch_size: int = 1024) -> dict[str, float]:
    """Metrics for a scorer: score_batch(user_rows) -> [len(user_rows), n_items] scores.

    users: row indices into `seen` (one per evaluated user); targets: the held-out item index of each.
    """
    ranks = []
    for start in range(0, len(users), batch_size):
        rows = users[start:start + batch_size]
        ranks.append(target_ranks(score_batch(rows), targets[start:start + batch_size], seen[rows]))
    return metrics_from_ranks(np.concatenate(ranks) if ranks else np.array([]))
