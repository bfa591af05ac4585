"""Fetch a snapshot archive over HTTP(S): streamed to disk with a progress bar, retried, verified, cached.

Connection errors, timeouts, short reads and HTTP 429/5xx are retried with exponential backoff
(tenacity); any other HTTP error is bad input. A host name that does not resolve (offline, or a
typo) fails at once, naming the setting and the local-copy option: waiting cannot fix it. A
download whose md5 is known and matches is kept in the downloads folder and not fetched again.

Two processes fetching one URL (two runs, a parallel backfill) never share a file: each streams into a
temporary file of its own (`<name>.part-<pid>-<random>`) that is renamed into place atomically once complete
and verified, and the download runs under the lock `download:<name>` (the pipeline's locks: the
catalog database's, so across hosts; else file locks beside the downloads folder). The second process
waits, then finds the first one's verified file and fetches nothing. Temporary files a killed process
left behind are removed under that lock once they are STALE_PART_S old.
"""

from __future__ import annotations

import glob
import hashlib
import os
import socket
import time
import uuid
from pathlib import Path
from urllib.parse import urlparse

import requests
from tenacity import Retrying, before_sleep_log, retry_if_exception, stop_after_attempt, wait_exponential

from recsys_tasks import locks
from recsys_tasks.artifacts import fingerprint
from recsys_tasks.errors import InputError
from recsys_tasks.logs import get_logger, progress_bar

log = get_logger(__name__)
ATTEMPTS = 5
RETRY_WAIT_S = 2.0  # first backoff; doubles per attempt up to RETRY_WAIT_MAX_S (tests shrink it)
RETRY_WAIT_MAX_S = 60.0
TIMEOUT_S = 60
STALE_PART_S = 3600.0  # a temporary download file untouched this long belongs to a dead process
_CHUNK = 1 << 20


class TransientHTTPError(OSError):
    """A 429/5xx answer or a short read: worth another try."""


def md5_file(path: Path) -> str:
    digest = hashlib.md5()  # MovieLens publishes md5 checksums
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def verify_md5(path: Path, expected: str, *, name: str | Path | None = None) -> None:
    """InputError naming `name` (default: the path) unless the file's md5 is `expected`."""
    actual = md5_file(path)
    if actual != expected.lower():
        raise InputError(f"checksum mismatch: md5 {actual}, expected {expected.lower()}", file=name or path,
                         rule="md5 matches the published checksum")


def cached_path(url: str, downloads: Path) -> Path:
    """One file per URL (two URLs ending in the same name do not collide)."""
    name = Path(urlparse(url).path).name or "snapshot.zip"
    return downloads / f"{fingerprint(url)[:8]}-{name}"


def fetch(url: str, downloads: Path, *, expected_md5: str | None) -> Path:
    """The archive at `url` as a local file, verified against `expected_md5` when one is given."""
    target = cached_path(url, downloads)
    if expected_md5 and _verified(target, expected_md5):
        return target
    _check_host(url)
    downloads.mkdir(parents=True, exist_ok=True)
    with locks.current(downloads.parent).hold(f"download:{target.name}"):
        if expected_md5 and _verified(target, expected_md5):  # another process fetched it meanwhile
            return target
        _remove_stale_parts(target)
        part = downloads / f"{target.name}.part-{os.getpid()}-{uuid.uuid4().hex[:8]}"  # this process's own
        try:
            retrying = Retrying(stop=stop_after_attempt(ATTEMPTS), reraise=True,
                                wait=wait_exponential(multiplier=RETRY_WAIT_S, max=RETRY_WAIT_MAX_S),
                                retry=retry_if_exception(_transient), before_sleep=before_sleep_log(log, 30))
            retrying(_stream, url, part)
            if expected_md5:
                verify_md5(part, expected_md5, name=url)  # unverified bytes never reach `target`
            else:
                log.warning("%s: no checksum to verify against (pass the expected md5 to verify)", url)
            os.replace(part, target)
        finally:
            part.unlink(missing_ok=True)
    return target


def _verified(target: Path, expected_md5: str) -> bool:
    """Whether the cached download exists and matches `expected_md5`."""
    if not target.is_file():
        return False
    if md5_file(target) == expected_md5.lower():
        log.info("using the verified download %s", target)
        return True
    log.warning("cached %s does not match md5 %s: fetching again", target, expected_md5)
    return False


def _remove_stale_parts(target: Path) -> None:
    """Temporary files of `target` that no live download writes to any more (call under its lock)."""
    for part in target.parent.glob(f"{glob.escape(target.name)}.part*"):
        try:
            if time.time() - part.stat().st_mtime > STALE_PART_S:
                part.unlink()
                log.info("removed %s, left by an interrupted download", part)
        except FileNotFoundError:
            pass


def _check_host(url: str) -> None:
    """InputError at once when the URL's host does not resolve."""
    parsed = urlparse(url)
    try:
        socket.getaddrinfo(parsed.hostname, parsed.port or (443 if parsed.scheme == "https" else 80))
    except (socket.gaierror, UnicodeError) as exc:
        raise InputError(f"cannot resolve host {parsed.hostname!r} ({exc}): offline? Point RECSYS_SNAPSHOT "
                         f"(or --snapshot) at a local copy of the release: `--snapshot /path/to/ml-1m "
                         f"--skip-checksum` (RECSYS_SNAPSHOT=/path/to/ml-1m RECSYS_SKIP_CHECKSUM=1)",
                         file=url, rule="snapshot host resolvable") from exc


def _transient(exc: BaseException) -> bool:
    return isinstance(exc, (requests.ConnectionError, requests.Timeout, TransientHTTPError))


def _stream(url: str, part: Path) -> None:
    with requests.get(url, stream=True, timeout=TIMEOUT_S) as response:
        if response.status_code == 429 or response.status_code >= 500:
            raise TransientHTTPError(f"{url}: HTTP {response.status_code}")
        if response.status_code >= 400:
            raise InputError(f"HTTP {response.status_code} {response.reason}", file=url,
                             rule="snapshot URL downloadable")
        total = int(response.headers.get("Content-Length") or 0) or None
        received = 0
        with open(part, "wb") as fh, progress_bar(desc=f"download {part.stem}", total=total, unit="B",
                                                   unit_scale=True) as bar:
            for chunk in response.iter_content(_CHUNK):
                fh.write(chunk)
                received += len(chunk)
                bar.update(len(chunk))
    if total is not None and received != total:
        raise TransientHTTPError(f"{url}: got {received} of {total} bytes")
