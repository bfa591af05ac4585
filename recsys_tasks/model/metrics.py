"""Ranking metrics for one held-out movie per user (leave-one-out and the time split alike).

Every method scores every catalog movie for a user; the movies the user has already seen are
excluded, then the held-out target's rank decides the metrics. Ties are pessimistic (a movie tied
with the target counts as ranked above it), so a constant scorer cannot score by luck of ordering.
A target the method cannot recommend at all (a movie another model lacks) has rank infinity: a miss.

With one target per user, Recall@k equals HR@k; both are reported because the manifest contract
names both and a multi-target protocol would tell them apart.
"""

from __future__ import annotations

import numpy as np

CUTOFFS = (10, 20)
METRIC_KEYS = ("hr@10", "hr@20", "ndcg@10", "ndcg@20", "recall@10", "recall@20", "mrr")


def ranks_excluding(scores: np.ndarray, targets: np.ndarray, seen_rows: np.ndarray, seen_cols: np.ndarray,
                    recommendable: np.ndarray | None = None) -> np.ndarray:
    """1-based pessimistic rank of each row's target among the movies that row has not seen.

    scores: [n, n_items] (a float64 copy is masked, the input is untouched); (seen_rows, seen_cols):
    the seen (row, item) pairs, the target never among them; recommendable: optional bool [n_items],
    False for items the method can never recommend (scored -inf; a target among them ranks inf).
    """
    scores = np.array(scores, dtype=np.float64)
    if np.isnan(scores).any():  # a NaN would rank below the target and flatter a broken scorer
        raise ValueError("scores contain NaN")
    if recommendable is not None:
        scores[:, ~recommendable] = -np.inf
    scores[seen_rows, seen_cols] = -np.inf
    rows = np.arange(len(targets))
    target_scores = scores[rows, targets]
    miss = np.zeros(len(targets), bool) if recommendable is None else ~recommendable[targets]
    if not np.isfinite(target_scores[~miss]).all():
        raise ValueError("a target movie has no finite score (marked as seen?)")
    # Ties count as ranked above the target: the target itself is counted once, so this is its rank.
    ranks = (scores >= target_scores[:, None]).sum(axis=1).astype(np.float64)
    ranks[miss] = np.inf
    return ranks


def metrics_from_ranks(ranks: np.ndarray) -> dict[str, float]:
    """HR, NDCG and Recall at 10 and 20 and MRR averaged over users (rank inf: a miss), and the user count."""
    ranks = np.asarray(ranks, dtype=np.float64)
    if ranks.size == 0:
        raise ValueError("no users to evaluate")
    out: dict[str, float] = {}
    for k in CUTOFFS:
        hit = ranks <= k
        out[f"hr@{k}"] = float(np.mean(hit))
        out[f"ndcg@{k}"] = float(np.mean(np.where(hit, 1.0 / np.log2(np.where(hit, ranks, 1.0) + 1), 0.0)))
        out[f"recall@{k}"] = float(np.mean(hit))  # one relevant item per user: recall@k = hit@k
    out["mrr"] = float(np.mean(1.0 / ranks))  # 1 / inf = 0 for a miss
    return {key: out[key] for key in METRIC_KEYS} | {"users": int(ranks.size)}

