"""Downloads against a local HTTP server: verified and cached, checksum mismatch, retried 5xx, two
processes fetching one URL at once."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from recsys_tasks.data import download
from recsys_tasks.data.ingest import ingest_snapshot
from recsys_tasks.errors import InputError


class Server:
    """Serves `body` at .../ml-1m.zip (other paths: 404); the first `failures` requests get HTTP 503;
    with `pause_s`, the body goes out in 8 pieces that far apart (a download that takes a while)."""

    def __init__(self, body: bytes) -> None:
        self.body, self.failures, self.requests, self.pause_s = body, 0, 0, 0.0
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # http.server's method name
                server.requests += 1
                if not self.path.endswith("/ml-1m.zip"):
                    self.send_error(404)
                    return
                if server.failures > 0:
                    server.failures -= 1
                    self.send_error(503, "try later")
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(server.body)))
                self.end_headers()
                piece = -(-len(server.body) // 8) if server.pause_s else len(server.body)
                for start in range(0, len(server.body), piece):
                    self.wfile.write(server.body[start:start + piece])
                    self.wfile.flush()
                    time.sleep(server.pause_s)

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/snapshots/ml-1m.zip"


@pytest.fixture
def zipped(synthetic: Callable[..., Path], tmp_path: Path) -> bytes:
    """A zip of a synthetic ml-1m release inside an `ml-1m/` folder, as the official archive is laid out."""
    root = tmp_path / "zip-root"
    shutil.copytree(synthetic("ml-1m"), root / "ml-1m")
    return Path(shutil.make_archive(str(tmp_path / "release"), "zip", root)).read_bytes()


@pytest.fixture
def server(zipped: bytes, monkeypatch: pytest.MonkeyPatch) -> Iterator[Server]:
    monkeypatch.setattr(download, "RETRY_WAIT_S", 0.01)
    s = Server(zipped)
    thread = threading.Thread(target=s.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield s
    s.httpd.shutdown()
    s.httpd.server_close()


def test_download_verified_then_cached(server: Server, zipped: bytes, tmp_path: Path) -> None:
    md5 = hashlib.md5(zipped).hexdigest()
    first = ingest_snapshot(server.url, tmp_path / "a", downloads=tmp_path / "dl", expected_md5=md5)
    assert first.manifest["release"] == "ml-1m" and first.manifest["source"] == server.url
    assert first.manifest["counts"]["users"] == 60
    assert [p.name for p in (tmp_path / "dl").iterdir()] == [download.cached_path(server.url, tmp_path / "dl").name]
    again = ingest_snapshot(server.url, tmp_path / "a", downloads=tmp_path / "dl", expected_md5=md5)
    assert server.requests == 1  # the verified download was reused
    assert again.skipped and again.path == first.path


def test_same_content_as_folder_or_zip_has_one_snapshot_id(server: Server, synthetic: Callable[..., Path],
                                                           zipped: bytes, tmp_path: Path) -> None:
    from_url = ingest_snapshot(server.url, tmp_path / "a", downloads=tmp_path / "dl",
                               expected_md5=hashlib.md5(zipped).hexdigest())
    from_folder = ingest_snapshot(str(synthetic("ml-1m")), tmp_path / "b", downloads=tmp_path / "dl",
                                  skip_checksum=True)
    assert from_url.manifest["snapshot_id"] == from_folder.manifest["snapshot_id"]


def test_checksum_mismatch_is_bad_input(server: Server, tmp_path: Path) -> None:
    wrong = "0" * 32
    with pytest.raises(InputError, match=f"checksum mismatch: md5 [0-9a-f]{{32}}, expected {wrong}") as err:
        ingest_snapshot(server.url, tmp_path / "a", downloads=tmp_path / "dl", expected_md5=wrong)
    assert server.url in str(err.value) and err.value.rule == "md5 matches the published checksum"
    assert not list((tmp_path / "dl").iterdir())  # nothing unverified is kept
    assert not (tmp_path / "a").exists()


def test_server_errors_are_retried(server: Server, zipped: bytes, tmp_path: Path) -> None:
    server.failures = 2
    result = ingest_snapshot(server.url, tmp_path / "a", downloads=tmp_path / "dl",
                             expected_md5=hashlib.md5(zipped).hexdigest())
    assert server.requests == 3 and result.manifest["counts"]["users"] == 60


def test_server_errors_give_up_after_the_last_attempt(server: Server, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(download, "ATTEMPTS", 2)
    server.failures = 5
    with pytest.raises(download.TransientHTTPError, match="HTTP 503"):
        ingest_snapshot(server.url, tmp_path / "a", downloads=tmp_path / "dl", skip_checksum=True)
    assert server.requests == 2


def test_http_404_is_bad_input(server: Server, tmp_path: Path) -> None:
    missing = server.url.replace("ml-1m.zip", "nope.zip")
    with pytest.raises(InputError, match="HTTP 404") as err:
        ingest_snapshot(missing, tmp_path / "a", downloads=tmp_path / "dl", skip_checksum=True)
    assert err.value.file == missing and server.requests == 1  # not retried


FETCH = """
import hashlib, pathlib, sys, time
from recsys_tasks.data import download
url, downloads, md5, ready, go = sys.argv[1:6]
pathlib.Path(ready).touch()
while not pathlib.Path(go).exists():  # both processes start fetching together
    time.sleep(0.01)
path = download.fetch(url, pathlib.Path(downloads), expected_md5=md5 or None)
print(path, hashlib.md5(path.read_bytes()).hexdigest())
"""


@pytest.mark.parametrize("verified", [True, False], ids=["with-md5", "without-md5"])
def test_two_processes_fetching_one_url_both_get_the_whole_file(server: Server, zipped: bytes, tmp_path: Path,
                                                               verified: bool) -> None:
    server.pause_s = 0.05
    md5 = hashlib.md5(zipped).hexdigest()
    downloads, go = tmp_path / "dl", tmp_path / "go"
    procs = [subprocess.Popen([sys.executable, "-c", FETCH, server.url, str(downloads), md5 if verified else "",
                               str(tmp_path / f"ready-{i}"), str(go)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, cwd=Path(__file__).resolve().parents[2])
             for i in range(2)]
    try:
        while not all((tmp_path / f"ready-{i}").exists() for i in range(2)):
            assert all(p.poll() is None for p in procs), [p.communicate() for p in procs]
            time.sleep(0.01)
        go.touch()
        outputs = [p.communicate(timeout=120) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    target = download.cached_path(server.url, downloads)
    for p, (out, err) in zip(procs, outputs):
        assert p.returncode == 0, err[-3000:]
        assert out.split() == [str(target), md5]
    assert target.read_bytes() == zipped
    assert [p.name for p in downloads.iterdir()] == [target.name]  # no temporary file left behind
    # one at a time (the download lock): with a checksum the second finds the first one's verified file
    assert server.requests == (1 if verified else 2)


def test_a_stale_temporary_file_of_a_killed_download_is_removed(server: Server, zipped: bytes,
                                                                tmp_path: Path) -> None:
    downloads = tmp_path / "dl"
    downloads.mkdir()
    target = download.cached_path(server.url, downloads)
    stale, fresh = downloads / f"{target.name}.part-1-dead", downloads / f"{target.name}.part-2-live"
    stale.write_bytes(b"half a zip")
    fresh.write_bytes(b"another download, still running")
    old = time.time() - download.STALE_PART_S - 60
    os.utime(stale, (old, old))
    assert download.fetch(server.url, downloads, expected_md5=hashlib.md5(zipped).hexdigest()) == target
    assert sorted(p.name for p in downloads.iterdir()) == sorted([target.name, fresh.name])
