"""Zip extraction is bounded: a zip bomb (built here with zipfile, small enough to be quick) is rejected
with InputError naming the archive and the rule, having written at most the cap; MovieLens zips pass."""

from __future__ import annotations

import io
import shutil
import struct
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest

from recsys_tasks.data.ingest import UnzipLimits, ingest_snapshot
from recsys_tasks.errors import InputError

MiB = 1 << 20


def bomb(path: Path, *, members: int = 1, size: int = 8 * MiB) -> Path:
    """A release-looking zip whose ratings.dat is `size` zero bytes (deflate: ~1000:1)."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("ml-1m/movies.dat", "1::Toy Story (1995)::Animation\n")
        for i in range(members):
            with zf.open(f"ml-1m/ratings{'' if i == 0 else i}.dat", "w") as out:
                for _ in range(size // MiB):
                    out.write(bytes(MiB))
    return path


def _extracted_bytes(downloads: Path) -> int:
    return sum(p.stat().st_size for p in downloads.rglob("*") if p.is_file())


def test_over_the_absolute_cap_is_rejected_before_writing(tmp_path: Path) -> None:
    archive = bomb(tmp_path / "bomb.zip")
    limits = UnzipLimits(max_bytes=2 * MiB, max_ratio=1e9)
    with pytest.raises(InputError) as err:
        ingest_snapshot(str(archive), tmp_path / "a", downloads=tmp_path / "dl", unzip_limits=limits)
    assert err.value.file == archive
    assert err.value.rule == f"unzipped size at most {2 * MiB} bytes"
    assert "declares" in str(err.value) and str(archive) in str(err.value)
    assert _extracted_bytes(tmp_path / "dl") == 0  # the declared sizes already said no
    assert not (tmp_path / "a").exists()


def test_over_the_ratio_is_rejected(tmp_path: Path) -> None:
    archive = bomb(tmp_path / "bomb.zip")
    assert archive.stat().st_size < 64 * 1024  # 8 MiB of zeros in a few KB: a ratio of hundreds
    limits = UnzipLimits(max_bytes=1 << 40, max_ratio=100, ratio_floor_bytes=MiB)
    with pytest.raises(InputError, match=r"rule unzipped size at most 100x the archive\)") as err:
        ingest_snapshot(str(archive), tmp_path / "a", downloads=tmp_path / "dl", unzip_limits=limits)
    assert err.value.file == archive


def test_sizes_that_lie_are_caught_by_the_bytes_written(tmp_path: Path) -> None:
    """The central directory claims 1 KiB per member; extraction counts what it writes and stops."""
    archive = bomb(tmp_path / "bomb.zip", members=3, size=2 * MiB)
    data = bytearray(archive.read_bytes())
    at = data.find(b"PK\x01\x02")
    while at != -1:  # central directory entries: uncompressed size at offset 24
        data[at + 24:at + 28] = struct.pack("<I", 1024)
        at = data.find(b"PK\x01\x02", at + 4)
    archive.write_bytes(bytes(data))
    limits = UnzipLimits(max_bytes=MiB, max_ratio=1e9)
    with pytest.raises(InputError) as err:
        ingest_snapshot(str(archive), tmp_path / "a", downloads=tmp_path / "dl", unzip_limits=limits)
    # Python's zipfile stops reading at the declared size and the CRC then fails; either way no more
    # than the cap reaches the disk.
    assert err.value.file == archive
    assert err.value.rule in ("complete zip archive", f"unzipped size at most {MiB} bytes")
    assert _extracted_bytes(tmp_path / "dl") <= MiB


def test_a_stream_past_the_cap_stops_at_the_cap(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Declared sizes within the cap but more bytes coming out of a member (a reader that trusts the
    stream, not the header): the count of bytes written stops it, naming the archive and the rule."""
    archive = bomb(tmp_path / "bomb.zip", members=2, size=MiB)  # declares 2 MiB in all
    monkeypatch.setattr(zipfile.ZipFile, "open", lambda self, member, *a, **k: io.BytesIO(bytes(2 * MiB)))
    limits = UnzipLimits(max_bytes=3 * MiB, max_ratio=1e9)
    with pytest.raises(InputError, match="passed the cap") as err:
        ingest_snapshot(str(archive), tmp_path / "a", downloads=tmp_path / "dl", unzip_limits=limits)
    assert err.value.file == archive and err.value.rule == f"unzipped size at most {3 * MiB} bytes"
    assert _extracted_bytes(tmp_path / "dl") <= 3 * MiB


def test_default_limits_admit_a_release_and_name_the_biggest_movielens(synthetic: Callable[..., Path],
                                                                         tmp_path: Path) -> None:
    root = tmp_path / "zip-root"
    shutil.copytree(synthetic("ml-1m"), root / "ml-1m")
    archive = Path(shutil.make_archive(str(tmp_path / "release"), "zip", root))
    result = ingest_snapshot(str(archive), tmp_path / "a", downloads=tmp_path / "dl", skip_checksum=True)
    assert result.manifest["counts"]["users"] == 60
    # ml-32m.zip: 239 MB, ~0.9 GB unzipped; ml-25m.zip: 250 MB, ~1.2 GB unzipped
    for archive_mb, unzipped_mb in ((239, 900), (250, 1200)):
        cap, _ = UnzipLimits().cap(archive_mb * 10**6)
        assert cap >= unzipped_mb * 10**6
    # the bomb: 1.1 MB expanding to 1 GiB
    cap, rule = UnzipLimits().cap(1_100_000)
    assert cap < 1 << 30 and "x the archive" in rule
