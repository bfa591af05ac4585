"""export_embeddings: one unit vector per catalog movie, keyed by MovieLens id, with the serving facts."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from recsys_tasks.artifacts import StepResult
from recsys_tasks.config import Settings
from recsys_tasks.errors import InputError
from recsys_tasks.graph.build import build_graph
from recsys_tasks.model.export import export_embeddings
from recsys_tasks.model.train import train
from tests.graph.test_graph_build import write_planted


def test_every_catalog_movie_gets_its_trained_vector(tmp_path: Path, settings: Settings) -> None:
    torch.set_num_threads(1)
    processed = write_planted(tmp_path / "pre", n_users=40, unrated=3)
    graph = build_graph(processed, settings.artifacts)
    trained = train(processed, graph, settings.replace(epochs=1, embed_dim=8, sampler="torch", device="cpu"))
    result = export_embeddings(graph, trained, settings.artifacts)
    table = pq.read_table(result.out("embeddings.parquet"))
    assert str(table.schema.field("movie_id").type) == "int64"
    vtype = table.schema.field("vector").type
    assert pa.types.is_fixed_size_list(vtype) and vtype.list_size == 8 and vtype.value_type == pa.float32()
    catalog = np.load(graph.out("id_map.npz"))["movie_ids"]
    assert np.array_equal(table.column("movie_id").to_numpy(), catalog)  # unrated movies included
    vectors = np.stack(table.column("vector").to_numpy(zero_copy_only=False))
    assert np.array_equal(vectors, np.load(trained.out("embeddings.npy")))
    m = result.manifest
    assert (m["model_version"], m["dim"], m["metric"], m["normalized"], m["counts"]) == (
        trained.manifest["model_version"],
        8,
        "IP",
        True,
        {"movies": 43},
    )
    assert export_embeddings(graph, trained, settings.artifacts).skipped


def test_vectors_that_do_not_match_the_catalog_are_refused(tmp_path: Path, settings: Settings) -> None:
    processed = write_planted(tmp_path / "pre", n_users=5)
    graph = build_graph(processed, settings.artifacts)
    folder = tmp_path / "trained"
    folder.mkdir()
    fake = StepResult("train", folder, {"key": "fake", "model_version": "v000000000000"}, skipped=True)
    np.save(folder / "embeddings.npy", np.eye(41, 8, dtype=np.float32))
    with pytest.raises(InputError, match="41 embeddings for 42 catalog movies"):
        export_embeddings(graph, fake, settings.artifacts)
    np.save(folder / "embeddings.npy", np.full((42, 8), 0.5, np.float32))
    with pytest.raises(InputError, match="norm 1.4142.*row 0.*unit_norm"):
        export_embeddings(graph, fake, settings.artifacts)
