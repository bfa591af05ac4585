"""export_embeddings: the served vectors as Parquet, one row per catalog movie, keyed by MovieLens id.

Row i of embeddings.npy belongs to id_map movie_ids[i]; the Parquet file carries the id explicitly so
no later reader depends on row order.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from recsys_tasks.artifacts import StepResult, run_step
from recsys_tasks.errors import InputError
from recsys_tasks.graph.arrays import ID_MAP


def export_embeddings(
    graph: StepResult, trained: StepResult, root: Path, *, force: bool = False
) -> StepResult:
    def build(tmp: Path) -> dict[str, Any]:
        with np.load(graph.out(ID_MAP)) as id_map:
            movie_ids = id_map["movie_ids"].astype(np.int64)
        emb = np.load(trained.out("embeddings.npy")).astype(np.float32)
        if emb.shape[0] != len(movie_ids):
            raise InputError(
                f"{emb.shape[0]} embeddings for {len(movie_ids)} catalog movies",
                file=trained.out("embeddings.npy"),
                rule="one_vector_per_movie",
            )
        norms = np.linalg.norm(emb, axis=1)
        bad = np.flatnonzero(~np.isfinite(norms) | (np.abs(norms - 1) > 1e-3))
        if len(bad):
            raise InputError(
                f"movie_id {int(movie_ids[bad[0]])} has a vector of norm {norms[bad[0]]:.4f}",
                file=trained.out("embeddings.npy"),
                row=int(bad[0]),
                rule="unit_norm",
            )
        dim = emb.shape[1]
        vectors = pa.FixedSizeListArray.from_arrays(pa.array(emb.reshape(-1), type=pa.float32()), dim)
        table = pa.table({"movie_id": pa.array(movie_ids, type=pa.int64()), "vector": vectors})
        pq.write_table(table, tmp / "embeddings.parquet")
        return {
            "model_version": trained.manifest["model_version"],
            "dim": int(dim),
            "metric": "IP",
            "normalized": True,
            "counts": {"movies": len(movie_ids)},
        }

    return run_step(
        root,
        "export_embeddings",
        inputs={"build_graph": graph.key, "train": trained.key},
        params={},
        build=build,
        force=force,
    )
