"""How a user's history becomes one query vector: the rule evaluation measures and serving uses.

`latest` is DGL's rule (the nearest neighbours of the most recent movie); `history` mixes the
recent movies' embeddings with weights that halve every `half_life` steps back in time.
"""

from __future__ import annotations

from typing import Any

import numpy as np

DEFAULT_RULE: dict[str, Any] = {"name": "history", "half_life": 3.0, "max_items": 50}


def latest_query(vectors: np.ndarray) -> np.ndarray:
    """DGL's rule: the most recent movie's vector (rows are ordered oldest -> newest)."""
    return np.asarray(vectors[-1], dtype=np.float32)


def history_query(vectors: np.ndarray, params: dict[str, Any] | None = None) -> np.ndarray:
    """Recency-weighted mean of the last `max_items` vectors (rows ordered oldest -> newest)."""
    p = {**DEFAULT_RULE, **(params or {})}
    recent = np.asarray(vectors[-int(p["max_items"]):], dtype=np.float32)
    if recent.shape[0] == 0:
        raise ValueError("empty history")
    age = np.arange(recent.shape[0] - 1, -1, -1, dtype=np.float32)  # 0 for the newest
    weights = 0.5 ** (age / float(p["half_life"]))
    return (weights[:, None] * recent).sum(axis=0) / weights.sum()
