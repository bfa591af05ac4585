"""Layout detection and the small parsing rules: ml-10m, a release one folder down, title years."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from recsys_tasks.data.formats import find_release, parse_year
from recsys_tasks.data.ingest import ingest_snapshot
from recsys_tasks.errors import InputError


def test_ml10m_layout_half_stars_and_utf8_titles(tmp_path: Path) -> None:
    src = tmp_path / "ml-10M100K"
    src.mkdir()
    (src / "movies.dat").write_text("1::Toy Story (1995)::Adventure|Animation\n"
                                    "2::Amélie (Fabuleux destin d'Amélie Poulain, Le) (2001)::Comedy|Romance\n"
                                    "3::Babylon 5::(no genres listed)\n", encoding="utf-8")
    (src / "ratings.dat").write_text("1::1::4.5::838985046\n1::2::0.5::838983525\n2::1::3::838983421\n")
    (src / "tags.dat").write_text("15::4973::excellent!::1215184630\n")
    result = ingest_snapshot(str(src), tmp_path / "a", downloads=tmp_path / "dl")
    assert result.manifest["release"] == "ml-10m" and not result.out("users.parquet").exists()
    assert pq.read_table(result.out("ratings.parquet"))["rating"].to_pylist() == [4.5, 0.5, 3.0]
    movies = pq.read_table(result.out("movies.parquet")).to_pylist()
    assert movies[1]["title"].startswith("Amélie") and movies[1]["year"] == 2001
    assert movies[2] == {"movie_id": 3, "title": "Babylon 5", "year": None, "genres": ""}


def test_release_one_folder_down_is_found(synthetic: Callable[..., Path], tmp_path: Path) -> None:
    shutil.copytree(synthetic("ml-100k"), tmp_path / "outer" / "ml-100k")
    (tmp_path / "outer" / "__MACOSX").mkdir()
    release = find_release(tmp_path / "outer")
    assert release.kind == "ml-100k" and release.folder == tmp_path / "outer" / "ml-100k"


@pytest.mark.parametrize(("title", "year"), [
    ("Toy Story (1995)", 1995),
    ("Misérables, Les (1995)", 1995),
    ("City of Lost Children, The (Cité des enfants perdus, La) (1995)", 1995),
    ("Bron/Broen (2011\u20132018)", 2011),
    ("Stranger Things (2016-)", 2016),
    ("Babylon 5", None),
    ("1984 (1956) ", 1956),
    ("2001: A Space Odyssey", None),
])
def test_year_from_the_trailing_parentheses(title: str, year: int | None) -> None:
    assert parse_year(title) == year


def test_two_releases_in_one_snapshot_are_ambiguous(synthetic: Callable[..., Path], tmp_path: Path) -> None:
    shutil.copytree(synthetic("ml-100k"), tmp_path / "outer" / "ml-100k")
    shutil.copytree(synthetic("csv"), tmp_path / "outer" / "ml-latest-small")
    with pytest.raises(InputError, match="2 releases found: ml-100k, ml-latest-small.*one MovieLens release"):
        find_release(tmp_path / "outer")
