"""Dated snapshots: which MovieLens release a run for date D reads (backfills, nightly runs).

A *dated source* holds one release per date, named by ISO date:

    snapshots/2026-11-01/ml-1m.zip     a date folder holding one .zip
    snapshots/2026-11-08/              a date folder that is itself a release folder (movies.dat, ...)
    snapshots/2026-11-15.zip           a .zip named by its date

    https://host/snapshots/            an http(s) prefix (ends with "/") with an index file,
                                       `index.txt`: one path per line relative to the prefix, starting
                                       with its date, e.g. `2026-11-01/ml-1m.zip`; `#` starts a comment.

`resolve_snapshot(source, day)` returns the newest snapshot dated at or before `day` (the newest
of all when `day` is None). Anything else (a release folder, a .zip, a URL not ending with "/")
is not dated and is returned unchanged.
"""

from __future__ import annotations

import re
from datetime import date
from pathlib import Path

from recsys_tasks.errors import InputError
from recsys_tasks.logs import get_logger

log = get_logger(__name__)
INDEX_FILE = "index.txt"
_DATE = re.compile(r"^(\d{4}-\d{2}-\d{2})(?:\.zip)?$")
_TIMEOUT_S = 30


def resolve_snapshot(source: str, day: date | None) -> str:
    """The snapshot a run for `day` reads: the newest one dated at or before it."""
    if source.startswith(("http://", "https://")):
        if not source.endswith("/"):
            return source
        candidates = _index_entries(source)
        where = source + INDEX_FILE
    else:
        folder = Path(source)
        if not folder.is_dir():
            return source
        candidates = _folder_entries(folder)
        if not candidates:
            return source  # a release folder, not a folder of dated releases
        where = str(folder)
    eligible = sorted(d for d in candidates if day is None or d <= day)
    if not eligible:
        raise InputError(f"no snapshot dated at or before {day}; the earliest is {min(candidates)}",
                         file=where, rule="snapshot date <= run date")
    chosen = candidates[eligible[-1]]
    log.info("snapshot for %s: %s", day or "latest", chosen)
    return chosen


def _folder_entries(folder: Path) -> dict[date, str]:
    out: dict[date, str] = {}
    for entry in folder.iterdir():
        match = _DATE.match(entry.name)
        is_zip = entry.name.endswith(".zip")
        if not match or (entry.is_dir() if is_zip else not entry.is_dir()):
            continue
        day = _parse_date(match.group(1), folder)
        out[day] = str(_release_in(entry)) if entry.is_dir() else str(entry)
    return out


def _release_in(date_folder: Path) -> Path:
    """The one .zip in a date folder, its one sub-folder (an unzipped release), or the folder itself."""
    zips = sorted(date_folder.glob("*.zip"))
    if len(zips) > 1:
        raise InputError(f"{len(zips)} .zip files in one date folder: {', '.join(z.name for z in zips)}",
                         file=date_folder, rule="one release per date")
    if zips:
        return zips[0]
    entries = [e for e in date_folder.iterdir() if not e.name.startswith(".")]
    return entries[0] if len(entries) == 1 and entries[0].is_dir() else date_folder


def _index_entries(prefix: str) -> dict[date, str]:
    import requests

    url = prefix + INDEX_FILE
    try:
        response = requests.get(url, timeout=_TIMEOUT_S)
    except requests.RequestException as exc:
        raise OSError(f"cannot read the snapshot index {url}: {exc}") from exc  # transient: the task retries
    if response.status_code == 404:
        raise InputError("a dated URL prefix (ending with '/') needs an index of its snapshots",
                         file=url, rule=f"{INDEX_FILE} lists <date>/<file> per line")
    response.raise_for_status()
    out: dict[date, str] = {}
    for row, line in enumerate(response.text.splitlines(), 1):
        entry = line.split("#", 1)[0].strip()
        if not entry:
            continue
        match = re.match(r"^(\d{4}-\d{2}-\d{2})(?:/|\.zip$)", entry)
        if not match or entry.startswith(("/", "http")) or ".." in entry.split("/"):
            raise InputError(f"bad index entry {entry!r}", file=url, row=row,
                             rule="relative path starting with YYYY-MM-DD")
        day = _parse_date(match.group(1), url, row)
        if day in out:
            raise InputError(f"two snapshots dated {day}", file=url, row=row, rule="one release per date")
        out[day] = prefix + entry
    if not out:
        raise InputError("the snapshot index lists no snapshots", file=url, rule="at least one entry")
    return out


def _parse_date(text: str, where: str | Path, row: int | None = None) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise InputError(f"{text!r} is not a valid date", file=where, row=row, rule="YYYY-MM-DD") from None
