"""How a user's history becomes one query vector: the rule evaluation measures and serving uses.

`latest` is DGL's rule (the nearest neighbours of the most recent movie). `history` is a weighted
mean of the recent movies' embeddings: with `weights` (newest first, learned jointly with the model
and saved in the train step's rule.json) or, without them, weights that halve every `half_life`
steps back in time. Rows are always ordered oldest -> newest.
"""

from __future__ import annotations

from typing import Any

import numpy as np

DEFAULT_RULE: dict[str, Any] = {"name": "history", "half_life": 3.0, "max_items": 50}


def latest_query(vectors: np.ndarray) -> np.ndarray:
    """DGL's rule: the most recent movie's vector."""
    return np.asarray(vectors[-1], dtype=np.float32)


def history_query(vectors: np.ndarray, params: dict[str, Any] | None = None) -> np.ndarray:
    """Weighted mean of the most recent vectors (learned position weights, or a half-life decay)."""
    p = {**DEFAULT_RULE, **(params or {})}
    if p.get("weights"):
        weights = np.asarray(p["weights"], dtype=np.float32)
    else:
        age = np.arange(int(p["max_items"]), dtype=np.float32)  # 0 for the newest
        weights = 0.5 ** (age / float(p["half_life"]))
    vectors = np.asarray(vectors, dtype=np.float32)
    if vectors.shape[0] == 0:
        raise ValueError("empty history")
    recent = vectors[::-1][: len(weights)]  # newest first
    w = weights[: recent.shape[0]]
    return (w[:, None] * recent).sum(axis=0) / w.sum()


def history_queries(embeddings: np.ndarray, items: np.ndarray, starts: np.ndarray,
                    params: dict[str, Any] | None = None) -> np.ndarray:
    """`history_query` for many users at once: user r's history is embeddings[items[starts[r]:starts[r+1]]].

    Returns float32 [len(starts) - 1, dim], row r equal to history_query of user r's vectors.
    """
    out = np.empty((len(starts) - 1, embeddings.shape[1]), dtype=np.float32)
    for r in range(len(starts) - 1):
        out[r] = history_query(embeddings[items[starts[r]:starts[r + 1]]], params)
    return out
