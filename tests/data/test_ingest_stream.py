"""Ingest streams the ratings (a block read, a row group written, at a time) and preprocess splits them a
block at a time: the tables equal the in-memory reading, a bad row in a late block is named, and the
manifests carry the snapshot's newest rating (contract 5)."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from recsys_tasks.artifacts import MANIFEST
from recsys_tasks.data import formats, ingest
from recsys_tasks.data.formats import find_release, read_release
from recsys_tasks.data.ingest import ingest_snapshot
from recsys_tasks.data.preprocess import preprocess, split_order, split_ratings, write_splits
from recsys_tasks.errors import InputError

Make = Callable[..., Path]


@pytest.mark.parametrize("fmt", ["ml-1m", "ml-10m", "ml-100k", "csv"])
def test_small_blocks_and_row_groups_give_the_same_tables(synthetic: Make, tmp_path: Path, fmt: str,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(formats, "READ_BLOCK_BYTES", 4096)  # ~150 ratings per block
    monkeypatch.setattr(ingest, "ROW_GROUP_ROWS", 1000)
    folder = synthetic(fmt, n_users=150)
    result = ingest_snapshot(str(folder), tmp_path, downloads=tmp_path / "dl", skip_checksum=True)
    stored = pq.ParquetFile(result.out("ratings.parquet"))
    assert stored.num_row_groups > 3 and all(stored.metadata.row_group(i).num_rows == 1000
                                             for i in range(stored.num_row_groups - 1))
    expected = read_release(find_release(folder)).ratings
    assert stored.read().equals(expected.combine_chunks())
    counts = result.manifest["counts"]
    assert counts["ratings"] == expected.num_rows and counts["users"] == 150
    assert counts["rated_movies"] == len(pc.unique(expected["movie_id"]))
    assert result.manifest["newest_rating_ts"] == pc.max(expected["timestamp"]).as_py()


@pytest.mark.parametrize(("line", "rule"), [
    (b"12::3:4::5::978300000", "movie_id is an integer"),
    (b"1:x:2:y:3:z:978300000", "4 fields separated by '::'"),  # 7 fields by ':' but no '::' at all
])
def test_a_bad_row_in_a_late_block_is_named_and_nothing_half_written_is_kept(
        synthetic: Make, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, line: bytes, rule: str) -> None:
    monkeypatch.setattr(formats, "READ_BLOCK_BYTES", 4096)
    monkeypatch.setattr(ingest, "ROW_GROUP_ROWS", 500)
    src = Path(shutil.copytree(synthetic("ml-1m", n_users=150), tmp_path / "bad"))
    lines = (src / "ratings.dat").read_bytes().split(b"\n")
    row = len(lines) - 20  # blocks and row groups were written before the reader gets there
    lines[row - 1] = line
    (src / "ratings.dat").write_bytes(b"\n".join(lines))
    with pytest.raises(InputError) as err:
        ingest_snapshot(str(src), tmp_path / "a", downloads=tmp_path / "dl", skip_checksum=True)
    assert (err.value.row, err.value.rule) == (row, rule), str(err.value)
    assert err.value.file == src / "ratings.dat"
    failed = next((tmp_path / "a" / "ingest").glob("*.failed"))
    assert not (failed / "ratings.parquet").exists()


def test_manifests_carry_the_newest_rating(synthetic: Make, tmp_path: Path) -> None:
    folder = synthetic("ml-10m")
    ingested = ingest_snapshot(str(folder), tmp_path, downloads=tmp_path / "dl")
    newest = int(pd.read_parquet(ingested.out("ratings.parquet"))["timestamp"].max())
    assert ingested.manifest["newest_rating_ts"] == newest and isinstance(ingested.manifest["newest_rating_ts"], int)
    processed = preprocess(ingested, tmp_path)
    assert processed.manifest["newest_rating_ts"] == newest
    assert processed.manifest["snapshot_id"] == ingested.manifest["snapshot_id"] == ingested.path.name


def test_an_ingest_folder_from_before_the_field_is_rebuilt_once(synthetic: Make, tmp_path: Path) -> None:
    source = str(synthetic("csv"))
    first = ingest_snapshot(source, tmp_path, downloads=tmp_path / "dl")
    manifest = json.loads((first.path / MANIFEST).read_text())
    del manifest["newest_rating_ts"]
    (first.path / MANIFEST).write_text(json.dumps(manifest))
    rebuilt = ingest_snapshot(source, tmp_path, downloads=tmp_path / "dl")
    assert not rebuilt.skipped and rebuilt.manifest["newest_rating_ts"] == first.manifest["newest_rating_ts"]
    assert rebuilt.path == first.path and rebuilt.manifest["outputs"] == first.manifest["outputs"]
    assert ingest_snapshot(source, tmp_path, downloads=tmp_path / "dl").skipped


def test_splits_written_in_blocks_equal_the_split_in_memory(synthetic: Make, tmp_path: Path) -> None:
    ratings = read_release(find_release(synthetic("ml-100k", n_users=120))).ratings
    order, part, users = split_order(ratings, block=37)
    sizes = write_splits(ratings, order, part, tmp_path, rows_per_write=101)
    expected = split_ratings(ratings)
    for name, table in expected.items():
        stored = pq.read_table(tmp_path / f"{name}.parquet")
        assert stored.equals(table.combine_chunks()), name
        assert sizes[name] == table.num_rows
    assert pq.ParquetFile(tmp_path / "train.parquet").num_row_groups > 10
    assert users == 120 == len(pc.unique(expected["train"]["user_id"]))
