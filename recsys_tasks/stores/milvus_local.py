"""The embedded default for several processes: one local `milvus-lite server` per data folder, shared.

Milvus Lite admits one process per data folder. With `RECSYS_MILVUS_URI` unset, every process on this
host (the CLI, each API worker, pipeline steps, Airflow tasks) calls `attach(folder, linger_s)`: it
reuses the server already running for the folder, or starts one (a detached process running this
module), and holds a lease while it uses it. The server stops itself cleanly (gRPC drained, data
folder closed) `linger_s` seconds after the last lease went, so consecutive commands reuse it.

Leases are shared `flock`s, which the OS drops when their process ends, even on SIGKILL: a crashed
process never keeps the server alive. Hand-written with fcntl because `filelock` has no shared locks.
The control files live beside the data folder, in `<folder>.server/`:

    start.lock   exclusive, held briefly while a process attaches or the server decides to stop
    server.lock  exclusive, held by the running server for its whole life
    leases.lock  shared, one per attached process
    server.json  {"pid", "port"} of the running server
    server.log   its output
"""

from __future__ import annotations

import argparse
import errno
import fcntl
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from recsys_tasks.config import ConfigError

START_TIMEOUT_S = 120.0  # a cold start imports faiss and pymilvus: seconds on a loaded machine
POLL_S = 0.5

_attached: dict[str, tuple[str, IO[str]]] = {}  # data folder -> (uri, the open lease file)
_lock = threading.Lock()


def control(folder: str | Path) -> Path:
    path = Path(folder).resolve()
    return path.with_name(path.name + ".server")


def _open(path: Path) -> IO[str]:
    path.parent.mkdir(parents=True, exist_ok=True)
    return path.open("a+")


def _try(handle: IO[str], mode: int) -> bool:
    try:
        fcntl.flock(handle, mode | fcntl.LOCK_NB)
        return True
    except OSError as exc:
        if exc.errno in (errno.EAGAIN, errno.EACCES):
            return False
        raise


@contextmanager
def _holding(path: Path) -> Iterator[None]:
    with _open(path) as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def running(folder: str | Path) -> dict[str, Any] | None:
    """The running server's {"pid", "port"} for `folder`, or None."""
    ctl = control(folder)
    if running_lock_free(ctl):  # nobody holds server.lock: no server
        return None
    try:
        return dict(json.loads((ctl / "server.json").read_text()))
    except (OSError, ValueError):
        return None  # starting (server.json comes once it listens)


def attach(folder: str | Path, linger_s: float) -> str:
    """The URI of the local server for `folder` (started if none runs), leased by this process."""
    key = str(Path(folder).resolve())
    with _lock:
        if key in _attached:
            if not running_lock_free(control(key)):
                return _attached[key][0]
            _attached.pop(key)[1].close()  # the server is gone (killed): start another one
        ctl = control(key)
        with _holding(ctl / "start.lock"):
            info = running(key) or _start(key, linger_s)
            lease = _open(ctl / "leases.lock")
            fcntl.flock(lease, fcntl.LOCK_SH)  # never blocks: the server locks it only under start.lock
        uri = f"http://127.0.0.1:{info['port']}"
        _attached[key] = (uri, lease)
        return uri


def attached_uri(folder: str | Path) -> str | None:
    entry = _attached.get(str(Path(folder).resolve()))
    return entry[0] if entry else None


def detach(folder: str | Path) -> None:
    """Drop this process's lease (the server stops `linger_s` after the last one)."""
    with _lock:
        entry = _attached.pop(str(Path(folder).resolve()), None)
    if entry is not None:
        entry[1].close()  # closing the file releases the flock


def _start(folder: str, linger_s: float) -> dict[str, Any]:
    ctl = control(folder)
    ctl.mkdir(parents=True, exist_ok=True)
    (ctl / "server.json").unlink(missing_ok=True)
    package_root = str(Path(__file__).resolve().parents[2])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")]))}
    with (ctl / "server.log").open("a") as log:
        spawner = subprocess.Popen(
            [sys.executable, "-m", "recsys_tasks.stores.milvus_local", "--data-dir", folder, "--linger", str(linger_s),
             "--detach"], stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env,
            start_new_session=True)
    spawner.wait(timeout=30)  # it takes server.lock, forks the server and exits (no zombie is left here)
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        try:
            info = dict(json.loads((ctl / "server.json").read_text()))
        except (OSError, ValueError):
            info = {}
        if info.get("port"):
            return info
        if info.get("error") or running_lock_free(ctl):
            why = info.get("error") or _tail(ctl / "server.log")
            raise ConfigError(f"milvus_uri: the local milvus-lite server for {folder} did not start: {why}. If "
                              "another process opened this folder directly (RECSYS_MILVUS_URI set to its path), stop "
                              "it, or point every process at one server with RECSYS_MILVUS_URI=http://host:port")
        time.sleep(0.1)
    raise ConfigError(f"milvus_uri: the local milvus-lite server for {folder} did not start within "
                      f"{START_TIMEOUT_S:.0f}s (see {ctl / 'server.log'})")


def running_lock_free(ctl: Path) -> bool:
    with _open(ctl / "server.lock") as handle:
        if _try(handle, fcntl.LOCK_EX):
            fcntl.flock(handle, fcntl.LOCK_UN)
            return True
    return False


def _tail(log: Path) -> str:
    try:
        lines = [line for line in log.read_text().splitlines() if line.strip()]
    except OSError:
        return "no log"
    return lines[-1] if lines else "no output"


# --- the server process ----------------------------------------------------------------------------
def serve(folder: str, linger_s: float) -> int:
    """Run the server for `folder` (this process holds server.lock) until no process has held a lease
    for `linger_s` seconds, or a signal."""
    ctl = control(folder)
    status = ctl / "server.json"
    try:
        from milvus_lite.adapter.grpc.server import start_server_in_thread

        server, db, port = start_server_in_thread(folder, host="127.0.0.1", port=0)
    except Exception as exc:  # noqa: BLE001 - reported to the process waiting for this one
        status.write_text(json.dumps({"error": f"{type(exc).__name__}: {exc}"}))
        return 1
    _write(status, {"pid": os.getpid(), "port": port})
    print(f"milvus-lite server for {folder} on 127.0.0.1:{port} (pid {os.getpid()})", flush=True)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    idle_since: float | None = None
    start = _open(ctl / "start.lock")
    leases = _open(ctl / "leases.lock")
    while True:
        fcntl.flock(start, fcntl.LOCK_EX)  # no process attaches while this decides
        if _try(leases, fcntl.LOCK_EX):
            fcntl.flock(leases, fcntl.LOCK_UN)
            idle_since = idle_since or time.monotonic()
        else:
            idle_since = None
        if stop.is_set() or (idle_since is not None and time.monotonic() - idle_since >= linger_s):
            break  # keeps start.lock until it is gone: nobody attaches to a server that is stopping
        fcntl.flock(start, fcntl.LOCK_UN)
        stop.wait(POLL_S)
    status.unlink(missing_ok=True)
    server.stop(grace=2).wait()
    db.close()
    print(f"milvus-lite server for {folder} stopped", flush=True)
    start.close()
    return 0


def _write(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data))
    tmp.replace(path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="the shared local milvus-lite server for one data folder")
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--linger", type=float, default=300.0, help="seconds without users before it stops")
    parser.add_argument("--detach", action="store_true", help="fork, and let the parent return at once")
    args = parser.parse_args(argv)
    folder = str(Path(args.data_dir).resolve())
    server_lock = _open(control(folder) / "server.lock")  # held for the server's life (a fork shares it)
    if not _try(server_lock, fcntl.LOCK_EX):
        return 0  # a server already serves this folder
    if args.detach and os.fork() > 0:
        return 0
    return serve(folder, args.linger)


if __name__ == "__main__":
    sys.exit(main())
