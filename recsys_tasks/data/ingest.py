"""ingest: a MovieLens release (URL, .zip or folder) -> canonical Parquet tables under ingest/<snapshot_id>/.

Checksums: a downloaded archive is verified against `expected_md5`, or the official md5 when the URL is
the official ml-1m one; a local .zip against `expected_md5` when given; a local ml-1m release (folder or
zip) without one against the official md5 of each file, since anything else calling itself ml-1m is
not the official data. `skip_checksum` accepts a copy you trust (a rebuilt copy, a synthetic snapshot).

The snapshot id is a content hash of the release's source files (names and bytes), so the same data
gets the same id whether it came as a zip or a folder, and any changed byte gets a new one. The manifest
also carries `newest_rating_ts`, the snapshot's latest rating (what the release layer orders models by).

Zips are extracted a block at a time, counting the bytes actually written (declared sizes can lie), and
rejected once they pass `UnzipLimits` (an absolute cap and a ratio to the archive's size), so a zip
bomb costs neither memory nor more than the cap on disk. Ratings are streamed from the release file to
ratings.parquet in row groups, so memory holds a block and the distinct ids, not the table.
"""

from __future__ import annotations

import tempfile
import zipfile
import zlib
from collections.abc import Iterable
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from recsys_tasks.artifacts import StepResult, fingerprint, run_step, sha256_file
from recsys_tasks.config import OFFICIAL_ML1M_MD5, OFFICIAL_ML1M_URL
from recsys_tasks.data.download import fetch, md5_file, verify_md5
from recsys_tasks.data.formats import (
    RATINGS_SCHEMA,
    Release,
    find_release,
    iter_ratings,
    read_movies,
    read_users,
)
from recsys_tasks.errors import InputError
from recsys_tasks.logs import get_logger, progress_bar

log = get_logger(__name__)
# md5 of each file in the official ml-1m.zip (GroupLens), for local copies claiming to be ml-1m.
OFFICIAL_ML1M_FILE_MD5 = {
    "ratings.dat": "a89aa3591bc97d6d4e0c89459ff39362",
    "movies.dat": "ef9fd9ff8d1b33faf73e2122c371e910",
    "users.dat": "681c0711d0d4548cd3d4718a49c2dcd8",
}
SNAPSHOT_ID_CHARS = 16
ROW_GROUP_ROWS = 1 << 20  # ratings.parquet's row groups: what the gates and preprocess read at a time
_CHUNK = 1 << 20


@dataclass(frozen=True)
class UnzipLimits:
    """How far an archive may expand: at most `max_bytes`, and at most `max_ratio` times its own size
    (but any archive may expand to `ratio_floor_bytes`: a tiny archive's ratio means nothing). MovieLens
    zips expand ~4-5x (ml-32m: 239 MB -> ~0.9 GB, ml-25m: 250 MB -> ~1.2 GB), zip bombs ~1000x."""

    max_bytes: int = 4 << 30
    max_ratio: float = 100.0
    ratio_floor_bytes: int = 16 << 20

    def cap(self, archive_bytes: int) -> tuple[int, str]:
        """The most bytes an archive of `archive_bytes` may expand to, and the rule that sets it."""
        by_ratio = max(int(self.max_ratio * archive_bytes), self.ratio_floor_bytes)
        if by_ratio < self.max_bytes:
            return by_ratio, f"unzipped size at most {self.max_ratio:g}x the archive"
        return self.max_bytes, f"unzipped size at most {self.max_bytes} bytes"


def ingest_snapshot(source: str, root: Path, *, downloads: Path, skip_checksum: bool = False,
                    force: bool = False, expected_md5: str | None = None,
                    unzip_limits: UnzipLimits = UnzipLimits()) -> StepResult:
    with ExitStack() as stack:
        release, verified = _locate(source, downloads, stack, skip_checksum=skip_checksum,
                                    expected_md5=expected_md5, unzip_limits=unzip_limits)
        if release.kind == "ml-1m" and not verified and not skip_checksum:
            _verify_official_ml1m(release)
        files = {name: sha256_file(release.path(name)) for name in release.files}
        snapshot_id = fingerprint({"release": release.kind, "files": files})[:SNAPSHOT_ID_CHARS]

        def build(tmp: Path) -> dict[str, Any]:
            counts, newest = _write_tables(release, tmp)
            return {"snapshot_id": snapshot_id, "newest_rating_ts": newest, "release": release.kind,
                    "source": source, "counts": counts}

        def run(force: bool) -> StepResult:
            return run_step(root, "ingest", inputs={"files": files}, params={"release": release.kind},
                            build=build, force=force, key=snapshot_id)

        result = run(force)
        if "newest_rating_ts" not in result.manifest:  # a folder from before the field: rebuilt once
            log.info("ingest: %s predates newest_rating_ts; rebuilding it", result.path)
            result = run(True)
        return result


def _locate(source: str, downloads: Path, stack: ExitStack, *, skip_checksum: bool,
            expected_md5: str | None, unzip_limits: UnzipLimits) -> tuple[Release, bool]:
    """The release behind `source` (zips extracted to a temp folder) and whether its bytes were verified."""
    verified = False
    if source.startswith(("http://", "https://")):
        if skip_checksum:
            expected_md5 = None
        elif expected_md5 is None and source == OFFICIAL_ML1M_URL:
            expected_md5 = OFFICIAL_ML1M_MD5
        path = fetch(source, downloads, expected_md5=expected_md5)
        verified = expected_md5 is not None
    else:
        path = Path(source).expanduser()
        if not path.exists():
            raise InputError("no such file or folder", file=path, rule="snapshot source exists")
        if expected_md5 and not skip_checksum:
            if not path.is_file():
                raise InputError("an expected md5 applies to an archive, not a folder", file=path,
                                 rule="md5 of a .zip")
            verify_md5(path, expected_md5)
            verified = True
    if path.is_dir():
        return find_release(path), verified
    downloads.mkdir(parents=True, exist_ok=True)
    folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix=".unzip-", dir=downloads)))
    _extract(path, folder, unzip_limits)
    return find_release(folder), verified


def _extract(archive: Path, folder: Path, limits: UnzipLimits) -> None:
    """Extract `archive` into `folder`, a block at a time, stopping at the limits' cap.

    Hand-written rather than ZipFile.extractall, which cannot stop part-way through a member. Member
    paths are made safe as extractall makes them (absolute paths and '..' dropped: no zip-slip); each
    member's CRC is checked when its last byte is read.
    """
    cap, rule = limits.cap(archive.stat().st_size)
    try:
        with zipfile.ZipFile(archive) as zf:
            members = zf.infolist()
            declared = sum(m.file_size for m in members)
            if declared > cap:
                raise InputError(f"the archive declares {declared} unzipped bytes, over the cap of {cap}",
                                 file=archive, rule=rule)
            written = 0
            for member in members:
                parts = [p for p in member.filename.split("/") if p not in ("", ".", "..")]
                if not parts:
                    continue
                target = folder.joinpath(*parts)
                if member.is_dir():
                    target.mkdir(parents=True, exist_ok=True)
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                with zf.open(member) as src, open(target, "wb") as dst:
                    while block := src.read(_CHUNK):
                        written += len(block)
                        if written > cap:
                            raise InputError(f"extracting {member.filename} passed the cap of {cap} bytes",
                                             file=archive, rule=rule)
                        dst.write(block)
    except (zipfile.BadZipFile, zlib.error, EOFError) as exc:
        raise InputError(f"not a readable zip archive: {exc}", file=archive, rule="complete zip archive") from None


def _verify_official_ml1m(release: Release) -> None:
    for name, expected in OFFICIAL_ML1M_FILE_MD5.items():
        path = release.path(name)
        actual = md5_file(path)
        if actual != expected:
            raise InputError(f"not the official ml-1m file: md5 {actual}, expected {expected}; "
                             "pass skip_checksum (--skip-checksum) for a copy you trust", file=path,
                             rule="official ml-1m checksum")


def _write_tables(release: Release, tmp: Path) -> tuple[dict[str, int], int]:
    """The canonical Parquet tables; returns the counts and the newest rating's timestamp."""
    movies = read_movies(release)
    pq.write_table(movies, tmp / "movies.parquet")
    users = read_users(release)
    if users is not None:
        pq.write_table(users, tmp / "users.parquet")
    rows, user_ids, movie_ids, newest = _write_ratings(iter_ratings(release), tmp / "ratings.parquet")
    counts = {"movies": movies.num_rows, "ratings": rows, "users": user_ids, "rated_movies": movie_ids}
    log.info("ingest: %s release, %s", release.kind, counts)
    return counts, newest


def _write_ratings(blocks: Iterable[pa.Table], path: Path) -> tuple[int, int, int, int]:
    """Stream rating blocks to `path` in row groups of ROW_GROUP_ROWS (the same file whatever the read
    blocks were); returns (ratings, distinct users, distinct movies, newest timestamp)."""
    users, movies = np.zeros(0, np.int64), np.zeros(0, np.int64)
    rows, newest, pending = 0, None, []
    try:
        with pq.ParquetWriter(path, RATINGS_SCHEMA) as writer, \
                progress_bar(desc="ingest ratings", total=None, unit="rating", unit_scale=True) as bar:
            for block in blocks:
                if not block.num_rows:
                    continue
                rows += block.num_rows
                bar.update(block.num_rows)
                users = np.union1d(users, pc.unique(block["user_id"]).to_numpy())
                movies = np.union1d(movies, pc.unique(block["movie_id"]).to_numpy())
                top = pc.max(block["timestamp"]).as_py()
                newest = top if newest is None else max(newest, top)
                pending.append(block)
                if sum(t.num_rows for t in pending) >= ROW_GROUP_ROWS:
                    pending = _flush(writer, pending, final=False)
            _flush(writer, pending, final=True)
    except InputError:
        path.unlink(missing_ok=True)  # a failed ingest keeps no half-written table
        raise
    return rows, len(users), len(movies), int(newest)


def _flush(writer: pq.ParquetWriter, pending: list[pa.Table], *, final: bool) -> list[pa.Table]:
    """Write whole row groups of `pending` (and the rest when `final`); returns what is left over."""
    table = pa.concat_tables(pending)
    whole = table.num_rows if final else table.num_rows - table.num_rows % ROW_GROUP_ROWS
    for start in range(0, whole, ROW_GROUP_ROWS):
        writer.write_table(table.slice(start, min(ROW_GROUP_ROWS, whole - start)), row_group_size=ROW_GROUP_ROWS)
    return [table.slice(whole)] if whole < table.num_rows else []
