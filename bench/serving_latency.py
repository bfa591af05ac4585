"""Serving latency and throughput: `recsys serve` (its own worker processes) against a `milvus-lite server`
process and a SQLite catalog, called over HTTP keep-alive by 1, 16 and 64 concurrent clients, with
numpy brute force over the same vectors as the floor, in one run (and one search at a time straight to
the milvus-lite server: what the store itself costs per call).

    .venv/bin/python bench/serving_latency.py [--movies 3883] [--dim 64] [--seconds 10] [--workers 2]
                                              [--clients 1,16,64] [--routes similar,user]

Random L2-normalised vectors in the artifact contract formats go through the real store steps
(load_vectors, load_catalog with its user histories, smoke_test, promote) into a temp RECSYS_HOME.
Each row is a closed loop: every client sends its next request when the last one answered, for
--seconds after a warm-up, so nothing here runs unbounded. The load generator is this process
(asyncio, one keep-alive connection per client); the API and Milvus are processes of their own, as deployed. Targets (issue 12, 2
cores): one client p50 <= 5 ms and p99 <= 20 ms; 64 clients >= 500 req/s, p99 <= 250 ms, no errors.
The machine's load average is printed beside every row (other jobs share the cores). Prints one
table and, last, one JSON line with every figure.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
REPO = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait(check, what: str, seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while True:
        try:
            if check():
                return
            why = "not ready"
        except Exception as exc:  # noqa: BLE001 - not up yet
            why = str(exc)
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} did not start within {seconds}s ({why})")
        time.sleep(0.2)


def start_milvus(data: Path) -> tuple[subprocess.Popen, str]:
    from pymilvus import MilvusClient

    from recsys_tasks.stores.milvus import CONNECTION

    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "milvus_lite", "server", "--data-dir", str(data), "--host",
                             "127.0.0.1", "--port", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    uri = f"http://127.0.0.1:{port}"
    _wait(lambda: MilvusClient(uri=uri, timeout=2, **CONNECTION).list_collections() is not None, "milvus-lite server")
    return proc, uri


def ship_release(home: Path, uri: str, movies: int, dim: int):
    from recsys_tasks.config import load_settings
    from recsys_tasks.release import smoke
    from tests.fixtures_stores import make_release, ship, write_processed

    smoke.RETRY_WAIT_S = 0.01
    settings = load_settings(home=home, milvus_uri=uri)
    release = make_release(settings, f"bench-{movies}-{dim}", processed=write_processed(settings, n=movies), dim=dim)
    ship(settings, release)
    return settings, release


def start_api(settings, workers: int) -> tuple[subprocess.Popen, str]:
    import httpx

    port = _free_port()
    env = {**os.environ, "PYTHONPATH": str(REPO), "RECSYS_HOME": str(settings.home),
           "RECSYS_MILVUS_URI": settings.milvus_uri, "RECSYS_DB_URL": settings.resolved_db_url}
    proc = subprocess.Popen([sys.executable, "-m", "recsys_tasks", "serve", "--port", str(port), "--workers",
                             str(workers)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    _wait(lambda: httpx.get(f"{url}/health", timeout=2).status_code == 200, "recsys serve")
    return proc, url


class Connection:
    """One keep-alive HTTP/1.1 connection (asyncio streams, h11 for the protocol). httpx's async pool would
    be what is measured: on this machine it gives 58 req/s at 64 connections to a FastAPI app that
    returns a constant."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def get(self, path: str) -> int:
        import h11

        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
            self.http = h11.Connection(h11.CLIENT)
        else:
            self.http.start_next_cycle()
        request = h11.Request(method="GET", target=path, headers=[("Host", self.host)])
        self.writer.write(self.http.send(request) + self.http.send(h11.EndOfMessage()))
        status = 0
        while True:
            event = self.http.next_event()
            if event is h11.NEED_DATA:
                data = await self.reader.read(65536)
                if not data:
                    raise ConnectionError("closed by the server")
                self.http.receive_data(data)
            elif isinstance(event, h11.Response):
                status = event.status_code
            elif isinstance(event, h11.EndOfMessage):
                return status

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


async def closed_loop(url: str, paths: list[str], clients: int, seconds: float, warmup: float) -> dict[str, float]:
    """`clients` concurrent callers, one connection each, for `seconds` (after `warmup`); latency of each
    request that started in the measured window."""
    host, port = url.removeprefix("http://").split(":")
    took: list[float] = []
    errors = 0
    start = time.perf_counter()
    measure_from, stop_at = start + warmup, start + warmup + seconds

    async def caller(i: int) -> None:
        nonlocal errors
        connection, n = Connection(host, int(port)), i
        while (now := time.perf_counter()) < stop_at:
            try:
                ok = await connection.get(paths[n % len(paths)]) == 200
            except Exception:  # noqa: BLE001 - any failure (refused, reset, closed) is an error here
                ok = False
                connection.close()
                connection = Connection(host, int(port))
            n += clients
            if now >= measure_from:
                took.append(time.perf_counter() - now)
                errors += not ok
        connection.close()

    await asyncio.gather(*(caller(i) for i in range(clients)))
    ms = np.asarray(took) * 1e3
    return {"clients": clients, "requests": int(ms.size), "req_s": round(ms.size / seconds, 1),
            "p50_ms": round(float(np.percentile(ms, 50)), 2), "p99_ms": round(float(np.percentile(ms, 99)), 2),
            "errors": errors, "load_1min": round(os.getloadavg()[0], 2)}


def numpy_floor(ids: np.ndarray, vectors: np.ndarray, n: int = 2000) -> dict[str, float]:
    """Top 10 by brute force in this process, one query at a time: what any search costs at least."""
    rng = np.random.default_rng(0)
    took = []
    for row in rng.integers(0, ids.size, n):
        t = time.perf_counter()
        scores = vectors @ vectors[row]
        top = np.argpartition(-scores, 11)[:11]
        [int(ids[i]) for i in top[np.argsort(-scores[top])] if i != row][:10]
        took.append(time.perf_counter() - t)
    ms = np.asarray(took) * 1e3
    return {"clients": 1, "requests": n, "req_s": round(n / (ms.sum() / 1e3), 1),
            "p50_ms": round(float(np.percentile(ms, 50)), 3), "p99_ms": round(float(np.percentile(ms, 99)), 3),
            "errors": 0, "load_1min": round(os.getloadavg()[0], 2)}


def milvus_alone(settings, release, n: int = 500) -> dict[str, float]:
    """One search at a time straight to the milvus-lite server (no API): what the store itself costs."""
    from recsys_tasks.stores.milvus import VectorStore, collection_name

    store, name = VectorStore.from_settings(settings), collection_name(release.version)
    rng = np.random.default_rng(0)
    took = []
    for row in rng.integers(0, release.ids.size, n):
        t = time.perf_counter()
        store.search(name, release.vectors[row][None, :], 11)
        took.append(time.perf_counter() - t)
    ms = np.asarray(took) * 1e3
    return {"clients": 1, "requests": n, "req_s": round(n / (ms.sum() / 1e3), 1),
            "p50_ms": round(float(np.percentile(ms, 50)), 2), "p99_ms": round(float(np.percentile(ms, 99)), 2),
            "errors": 0, "load_1min": round(os.getloadavg()[0], 2)}


def cpu_seconds() -> float:
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--movies", type=int, default=3883)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--workers", type=int, default=1, help="API worker processes (recsys serve --workers)")
    parser.add_argument("--clients", default="1,16,64")
    parser.add_argument("--routes", default="similar,user")
    args = parser.parse_args()
    results: dict[str, list[dict[str, float]]] = {}
    wall, cpu = time.monotonic(), cpu_seconds()
    with tempfile.TemporaryDirectory() as tmp:
        milvus, uri = start_milvus(Path(tmp) / "milvus")
        api = None
        try:
            settings, release = ship_release(Path(tmp) / "home", uri, args.movies, args.dim)
            api, url = start_api(settings, args.workers)
            rng = np.random.default_rng(1)
            paths = {"similar": [f"/movies/{int(m)}/similar?k=10" for m in rng.choice(release.ids, 500)],
                     "user": [f"/users/{int(u)}/recommendations?k=10" for u in rng.integers(1, 61, 500)]}
            for route in args.routes.split(","):
                results[route] = [asyncio.run(closed_loop(url, paths[route], int(c), args.seconds, args.warmup))
                                  for c in args.clients.split(",")]
            results["milvus alone"] = [milvus_alone(settings, release)]
            results["numpy floor"] = [numpy_floor(release.ids, release.vectors)]
        finally:
            for proc in (api, milvus):
                if proc is not None:
                    proc.terminate()
                    proc.wait(timeout=30)
    cpu_s, wall_s = round(cpu_seconds() - cpu, 1), round(time.monotonic() - wall, 1)
    print(f"{args.movies} movies x {args.dim} dims, k=10, {args.workers} API workers, {args.seconds:.0f} s per row; "
          f"{os.cpu_count()} CPUs; {cpu_s} CPU s in {wall_s} s wall")
    print(f"{'route':<14}{'clients':>8}{'req/s':>9}{'p50 ms':>9}{'p99 ms':>9}{'errors':>8}{'load':>7}")
    for route, rows in results.items():
        for r in rows:
            print(f"{route:<14}{r['clients']:>8}{r['req_s']:>9.0f}{r['p50_ms']:>9.2f}{r['p99_ms']:>9.2f}"
                  f"{r['errors']:>8}{r['load_1min']:>7.2f}")
    print(json.dumps({"movies": args.movies, "dim": args.dim, "workers": args.workers, "cpu_s": cpu_s,
                      "wall_s": wall_s, "results": results}))


if __name__ == "__main__":
    main()
