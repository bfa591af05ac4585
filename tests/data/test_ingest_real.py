"""Ingest of the real MovieLens releases: exact counts, canonical schema, and the official-checksum rule."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from recsys_tasks.artifacts import StepResult
from recsys_tasks.data.formats import MOVIES_SCHEMA, RATINGS_SCHEMA, USERS_SCHEMA
from recsys_tasks.data.ingest import ingest_snapshot
from recsys_tasks.errors import InputError
from tests.conftest import real_release


@pytest.fixture(scope="module")
def ml1m(tmp_path_factory: pytest.TempPathFactory) -> StepResult:
    home = tmp_path_factory.mktemp("ml1m")
    return ingest_snapshot(str(real_release("ml-1m")), home / "artifacts", downloads=home / "downloads",
                           skip_checksum=True)


@pytest.mark.slow
def test_ml1m_counts_and_schema(ml1m: StepResult) -> None:
    assert ml1m.manifest["release"] == "ml-1m"
    assert ml1m.manifest["counts"] == {"ratings": 1_000_209, "users": 6_040, "movies": 3_883, "rated_movies": 3_706}
    assert ml1m.path.name == ml1m.manifest["snapshot_id"]
    ratings = pq.read_table(ml1m.out("ratings.parquet"))
    assert ratings.schema == RATINGS_SCHEMA
    assert ratings.slice(0, 1).to_pylist() == [{"user_id": 1, "movie_id": 1193, "rating": 5.0,
                                                "timestamp": 978300760}]  # file order kept
    movies = pq.read_table(ml1m.out("movies.parquet"))
    assert movies.schema == MOVIES_SCHEMA
    by_id = {r["movie_id"]: r for r in movies.to_pylist()}
    assert by_id[1] == {"movie_id": 1, "title": "Toy Story (1995)", "year": 1995,
                        "genres": "Animation|Children's|Comedy"}
    assert by_id[73]["title"] == "Misérables, Les (1995)"  # latin-1 decoded
    assert by_id[3952]["year"] == 2000
    assert movies["year"].null_count == 0
    users = pq.read_table(ml1m.out("users.parquet"))
    assert users.schema == USERS_SCHEMA and users.num_rows == 6_040
    assert users.slice(0, 1).to_pylist() == [{"user_id": 1, "gender": "F", "age": 1, "occupation": "10",
                                              "zip": "48067"}]


@pytest.mark.slow
def test_ml1m_copy_rejected_without_skip_checksum(ml1m: StepResult, tmp_path: Path) -> None:
    """The shared ml-1m is a rebuilt copy: it is not the official bytes and must be accepted only explicitly."""
    with pytest.raises(InputError, match=r"ratings\.dat.*official ml-1m checksum") as err:
        ingest_snapshot(str(real_release("ml-1m")), tmp_path, downloads=tmp_path / "dl")
    assert "a89aa3591bc97d6d4e0c89459ff39362" in str(err.value)
    assert not (tmp_path / "ingest").exists()


def test_ml100k_counts_and_genres(tmp_path: Path) -> None:
    result = ingest_snapshot(str(real_release("ml-100k")), tmp_path, downloads=tmp_path / "dl")
    assert result.manifest["release"] == "ml-100k"
    assert result.manifest["counts"] == {"ratings": 100_000, "users": 943, "movies": 1_682, "rated_movies": 1_682}
    movies = {r["movie_id"]: r for r in pq.read_table(result.out("movies.parquet")).to_pylist()}
    assert movies[1]["genres"] == "Animation|Children's|Comedy"
    assert movies[267] == {"movie_id": 267, "title": "unknown", "year": None, "genres": ""}
    users = pq.read_table(result.out("users.parquet"))
    assert users.slice(0, 1).to_pylist() == [{"user_id": 1, "gender": "M", "age": 24, "occupation": "technician",
                                              "zip": "85711"}]
    assert pq.read_table(result.out("ratings.parquet")).column("rating").type == pa.float32()
