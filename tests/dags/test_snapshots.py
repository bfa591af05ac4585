"""Dated snapshot resolution: a run for date D reads the newest snapshot at or before D."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import date
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from recsys_tasks.data.snapshots import resolve_snapshot
from recsys_tasks.errors import InputError


@pytest.fixture
def dated(tmp_path: Path) -> Path:
    root = tmp_path / "snapshots"
    (root / "2026-11-01").mkdir(parents=True)
    (root / "2026-11-01" / "ml-1m.zip").write_bytes(b"zip")
    (root / "2026-11-08" / "ml-1m").mkdir(parents=True)  # an unzipped release inside its date folder
    (root / "2026-11-08" / "ml-1m" / "movies.dat").write_text("1::Toy Story (1995)::Animation\n")
    (root / "2026-11-15").mkdir()  # the date folder is the release folder
    (root / "2026-11-15" / "movies.dat").write_text("1::Toy Story (1995)::Animation\n")
    (root / "2026-11-15" / "ratings.dat").write_text("1::1::5::978300760\n")
    (root / "2026-11-22.zip").write_bytes(b"zip")
    (root / "README.txt").write_text("not a snapshot")
    return root


@pytest.mark.parametrize("day,expected", [
    (date(2026, 11, 1), "2026-11-01/ml-1m.zip"),
    (date(2026, 11, 7), "2026-11-01/ml-1m.zip"),
    (date(2026, 11, 8), "2026-11-08/ml-1m"),
    (date(2026, 11, 20), "2026-11-15"),
    (date(2027, 1, 1), "2026-11-22.zip"),
    (None, "2026-11-22.zip"),
])
def test_newest_snapshot_at_or_before_the_date(dated: Path, day: date | None, expected: str) -> None:
    assert resolve_snapshot(str(dated), day) == str(dated / expected)


def test_no_snapshot_before_the_date_names_the_earliest(dated: Path) -> None:
    with pytest.raises(InputError, match=r"no snapshot dated at or before 2026-10-31.*2026-11-01"):
        resolve_snapshot(str(dated), date(2026, 10, 31))


def test_non_dated_sources_are_returned_unchanged(tmp_path: Path) -> None:
    release = tmp_path / "ml-1m"
    release.mkdir()
    (release / "movies.dat").write_text("1::Toy Story (1995)::Animation\n")
    for source in (str(release), str(tmp_path / "ml-1m.zip"),
                   "https://files.grouplens.org/datasets/movielens/ml-1m.zip"):
        assert resolve_snapshot(source, date(2026, 11, 1)) == source


def test_two_zips_for_one_date_are_ambiguous(dated: Path) -> None:
    (dated / "2026-11-01" / "ml-1m-copy.zip").write_bytes(b"zip")
    with pytest.raises(InputError, match="one release per date"):
        resolve_snapshot(str(dated), date(2026, 11, 2))


def test_invalid_date_name_is_bad_input(dated: Path) -> None:
    (dated / "2026-13-01").mkdir()
    with pytest.raises(InputError, match="2026-13-01"):
        resolve_snapshot(str(dated), date(2026, 11, 2))


@pytest.fixture
def http_root(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    """A real HTTP server over a temp folder."""
    root = tmp_path / "www"
    root.mkdir()
    server = ThreadingHTTPServer(("127.0.0.1", 0),
                                 partial(SimpleHTTPRequestHandler, directory=str(root)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield root, f"http://127.0.0.1:{server.server_port}/snapshots/"
    server.shutdown()


def test_http_prefix_reads_its_index(http_root: tuple[Path, str]) -> None:
    root, prefix = http_root
    (root / "snapshots").mkdir()
    (root / "snapshots" / "index.txt").write_text(
        "# MovieLens snapshots\n2026-11-01/ml-1m.zip\n\n2026-11-15/ml-1m.zip  # mid-month\n2026-11-08.zip\n")
    assert resolve_snapshot(prefix, date(2026, 11, 10)) == prefix + "2026-11-08.zip"
    assert resolve_snapshot(prefix, date(2026, 11, 30)) == prefix + "2026-11-15/ml-1m.zip"
    with pytest.raises(InputError, match="2026-11-01"):
        resolve_snapshot(prefix, date(2026, 10, 1))


def test_http_prefix_without_index_is_bad_input(http_root: tuple[Path, str]) -> None:
    _, prefix = http_root
    with pytest.raises(InputError, match="index.txt"):
        resolve_snapshot(prefix, date(2026, 11, 1))


def test_http_index_with_a_bad_line_names_the_row(http_root: tuple[Path, str]) -> None:
    root, prefix = http_root
    (root / "snapshots").mkdir()
    (root / "snapshots" / "index.txt").write_text("2026-11-01/ml-1m.zip\n../secret.zip\n")
    with pytest.raises(InputError, match="row 2"):
        resolve_snapshot(prefix, date(2026, 11, 1))
