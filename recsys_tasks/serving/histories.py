"""What the user endpoints read about users: each user's history in a snapshot and the movies' rating
counts, written into the catalog when a candidate is loaded (`release.loads.load_catalog` calls this).

A history is every split of the snapshot (train, validation and test: serving predicts beyond the
snapshot), ordered as the model expects, by (timestamp, movie_id), oldest first, the last
HISTORY_KEEP of them. Users of the snapshot's users table without ratings are stored with an empty
history (known users, served the popularity fallback). Keyed by the snapshot id, so every model
trained on one snapshot shares them, and written only when the preprocess folder they came from
changed.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from recsys_tasks.artifacts import StepResult
from recsys_tasks.stores.catalog import Catalog

HISTORY_KEEP = 1000  # per user: far more than any rule reads, and what is excluded from recommendations
SPLITS = ("train", "val", "test")


def _interactions(processed: StepResult) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    table = pa.concat_tables([pq.read_table(processed.out(f"{split}.parquet"),
                                            columns=["user_id", "movie_id", "timestamp"]) for split in SPLITS])
    users, movies, ts = (table[c].to_numpy().astype(np.int64) for c in ("user_id", "movie_id", "timestamp"))
    order = np.lexsort((movies, ts, users))  # by user, then (timestamp, movie_id)
    return users[order], movies[order], ts[order]


def user_histories(processed: StepResult) -> tuple[list[tuple[int, list[list[int]]]], list[tuple[int, int]]]:
    """([(user_id, [[timestamp, movie_id], ...])], [(movie_id, ratings)]) of a preprocess folder."""
    users, movies, ts = _interactions(processed)
    starts = np.flatnonzero(np.r_[True, users[1:] != users[:-1]]) if users.size else np.zeros(0, dtype=np.int64)
    ends = np.r_[starts[1:], users.size].astype(np.int64)
    pairs = np.stack([ts, movies], axis=1).tolist()
    histories = [(int(users[s]), pairs[max(s, e - HISTORY_KEEP):e]) for s, e in zip(starts, ends)]
    if processed.out("users.parquet").is_file():
        rated = set(users[starts].tolist())
        listed = pq.read_table(processed.out("users.parquet"), columns=["user_id"])["user_id"].to_pylist()
        histories += [(int(u), []) for u in sorted(set(listed) - rated)]
    ids, counts = np.unique(movies, return_counts=True)
    return histories, [(int(m), int(n)) for m, n in zip(ids, counts)]


def histories_in_sync(catalog: Catalog, processed: StepResult) -> bool:
    snapshot = str(processed.manifest.get("snapshot_id"))
    return catalog.histories_source(snapshot) == processed.key


def write_histories(catalog: Catalog, processed: StepResult) -> dict[str, Any]:
    """Store the snapshot's histories unless these ones are there already; counts for the manifest."""
    snapshot = str(processed.manifest.get("snapshot_id"))
    if histories_in_sync(catalog, processed):
        return {"users": 0, "written": False}
    histories, popularity = user_histories(processed)
    catalog.write_histories(snapshot, processed.key, histories, popularity)
    return {"users": len(histories), "written": True}
