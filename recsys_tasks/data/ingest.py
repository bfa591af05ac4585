"""ingest: a MovieLens release (URL, .zip or folder) -> canonical Parquet tables under ingest/<snapshot_id>/.

Checksums: a downloaded archive is verified against `expected_md5`, or the official md5 when the URL is
the official ml-1m one; a local .zip against `expected_md5` when given; a local ml-1m release (folder or
zip) without one against the official md5 of each file, since anything else calling itself ml-1m is
not the official data. `skip_checksum` accepts a copy you trust (a rebuilt copy, a synthetic snapshot).

The snapshot id is a content hash of the release's source files (names and bytes), so the same data
gets the same id whether it came as a zip or a folder, and any changed byte gets a new one.
"""

from __future__ import annotations

import tempfile
import zipfile
import zlib
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pyarrow.compute as pc
import pyarrow.parquet as pq

from recsys_tasks.artifacts import StepResult, fingerprint, run_step, sha256_file
from recsys_tasks.config import OFFICIAL_ML1M_MD5, OFFICIAL_ML1M_URL
from recsys_tasks.data.download import fetch, md5_file, verify_md5
from recsys_tasks.data.formats import Release, find_release, read_release
from recsys_tasks.errors import InputError
from recsys_tasks.logs import get_logger

log = get_logger(__name__)
# md5 of each file in the official ml-1m.zip (GroupLens), for local copies claiming to be ml-1m.
OFFICIAL_ML1M_FILE_MD5 = {
    "ratings.dat": "a89aa3591bc97d6d4e0c89459ff39362",
    "movies.dat": "ef9fd9ff8d1b33faf73e2122c371e910",
    "users.dat": "681c0711d0d4548cd3d4718a49c2dcd8",
}
SNAPSHOT_ID_CHARS = 16


def ingest_snapshot(source: str, root: Path, *, downloads: Path, skip_checksum: bool = False,
                    force: bool = False, expected_md5: str | None = None) -> StepResult:
    with ExitStack() as stack:
        release, verified = _locate(source, downloads, stack, skip_checksum=skip_checksum,
                                    expected_md5=expected_md5)
        if release.kind == "ml-1m" and not verified and not skip_checksum:
            _verify_official_ml1m(release)
        files = {name: sha256_file(release.path(name)) for name in release.files}
        snapshot_id = fingerprint({"release": release.kind, "files": files})[:SNAPSHOT_ID_CHARS]

        def build(tmp: Path) -> dict[str, Any]:
            return {"snapshot_id": snapshot_id, "release": release.kind, "source": source,
                    "counts": _write_tables(release, tmp)}

        return run_step(root, "ingest", inputs={"files": files}, params={"release": release.kind},
                        build=build, force=force, key=snapshot_id)


def _locate(source: str, downloads: Path, stack: ExitStack, *, skip_checksum: bool,
            expected_md5: str | None) -> tuple[Release, bool]:
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
    _extract(path, folder)
    release = find_release(folder)
    return release, verified


def _extract(archive: Path, folder: Path) -> None:
    try:
        with zipfile.ZipFile(archive) as zf:
            # extractall checks each member's CRC and strips absolute paths and '..' (no zip-slip)
            zf.extractall(folder)
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


def _write_tables(release: Release, tmp: Path) -> dict[str, int]:
    tables = read_release(release)
    pq.write_table(tables.movies, tmp / "movies.parquet")
    pq.write_table(tables.ratings, tmp / "ratings.parquet")
    if tables.users is not None:
        pq.write_table(tables.users, tmp / "users.parquet")
    ratings = tables.ratings
    counts = {"movies": tables.movies.num_rows, "ratings": ratings.num_rows,
              "users": len(pc.unique(ratings["user_id"])), "rated_movies": len(pc.unique(ratings["movie_id"]))}
    log.info("ingest: %s release, %s", release.kind, counts)
    return counts
