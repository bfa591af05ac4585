"""Serving latency: similar() and GET /movies/{id}/similar, on Milvus Lite in-process and on a
`milvus-lite server` process, with numpy brute force over the same vectors as the floor.

    .venv/bin/python bench/serving_latency.py [--movies 3883] [--dim 64] [--requests 500] [--threads 4]

Random L2-normalised vectors in the artifact contract formats go through the real store steps
(load_vectors, load_catalog, smoke_test, promote) into a temp RECSYS_HOME with a SQLite catalog.
The API runs under uvicorn on loopback and is called over HTTP keep-alive (httpx).
Prints one table and, last, one JSON line with every figure.
"""

from __future__ import annotations

import argparse
import json
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from recsys_tasks.config import Settings, load_settings


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def measure(call: Callable[[int], object], ids: np.ndarray, requests: int, threads: int) -> dict[str, float]:
    """p50/p99 of sequential calls, their throughput, and the throughput with `threads` callers."""
    rng = np.random.default_rng(0)
    for movie in rng.choice(ids, 20):
        call(int(movie))
    picks = [int(m) for m in rng.choice(ids, requests)]
    took = []
    start = time.perf_counter()
    for movie in picks:
        t = time.perf_counter()
        call(movie)
        took.append(time.perf_counter() - t)
    sequential = time.perf_counter() - start
    start = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(call, picks))
    parallel = time.perf_counter() - start
    ms = np.asarray(took) * 1e3
    return {"p50_ms": round(float(np.percentile(ms, 50)), 3), "p99_ms": round(float(np.percentile(ms, 99)), 3),
            "qps": round(requests / sequential, 1), f"qps_{threads}_threads": round(requests / parallel, 1)}


def setup(settings: Settings, movies: int, dim: int) -> tuple[np.ndarray, np.ndarray]:
    from tests.fixtures_stores import make_release, ship, write_processed

    release = make_release(settings, f"bench-{movies}-{dim}", processed=write_processed(settings, n=movies), dim=dim)
    ship(settings, release)
    return release.ids, release.vectors


def serve(settings: Settings) -> tuple[str, Callable[[], None]]:
    import uvicorn

    from recsys_tasks.serving.api import create_app

    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(settings), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)

    def stop() -> None:
        server.should_exit = True
        thread.join()

    return f"http://127.0.0.1:{port}", stop


def bench_backend(name: str, settings: Settings, args: argparse.Namespace) -> dict[str, dict[str, float]]:
    import httpx

    from recsys_tasks.serving.recommend import recommend_similar

    ids, _ = setup(settings, args.movies, args.dim)
    out = {f"similar() {name}": measure(lambda m: recommend_similar(settings, m, 10), ids, args.requests,
                                        args.threads)}
    url, stop = serve(settings)
    try:
        with httpx.Client(base_url=url) as client:
            def get(movie: int) -> None:
                client.get(f"/movies/{movie}/similar", params={"k": 10}).raise_for_status()

            out[f"GET /movies/{{id}}/similar {name}"] = measure(get, ids, args.requests, args.threads)
    finally:
        stop()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--movies", type=int, default=3883)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--requests", type=int, default=500)
    parser.add_argument("--threads", type=int, default=4)
    args = parser.parse_args()
    results: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        lite = load_settings(home=Path(tmp) / "lite")
        results.update(bench_backend("Milvus Lite in-process", lite, args))
        ids, vectors = setup(lite, args.movies, args.dim)  # the same release again (skipped): the floor's data
        index = {int(m): i for i, m in enumerate(ids)}

        def brute(movie: int) -> list[int]:
            scores = vectors @ vectors[index[movie]]
            top = np.argpartition(-scores, 11)[:11]
            return [int(ids[i]) for i in top[np.argsort(-scores[top])] if ids[i] != movie][:10]

        results["numpy brute force (floor)"] = measure(brute, ids, args.requests, args.threads)

        port = _free_port()
        proc = subprocess.Popen([sys.executable, "-m", "milvus_lite", "server", "--data-dir", str(Path(tmp) / "srv"),
                                 "--host", "127.0.0.1", "--port", str(port)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            from pymilvus import MilvusClient

            deadline = time.monotonic() + 60
            while True:
                try:
                    MilvusClient(uri=f"http://127.0.0.1:{port}", timeout=2).list_collections()
                    break
                except Exception:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.2)
            remote = load_settings(home=Path(tmp) / "server", milvus_uri=f"http://127.0.0.1:{port}")
            results.update(bench_backend("milvus-lite server", remote, args))
        finally:
            proc.terminate()
            proc.wait(timeout=10)
    print(f"{args.movies} movies x {args.dim} dims, k=10, {args.requests} requests per row")
    print(f"{'':<46}{'p50 ms':>9}{'p99 ms':>9}{'qps':>9}{f'qps x{args.threads}':>10}")
    for name, r in results.items():
        print(f"{name:<46}{r['p50_ms']:>9.2f}{r['p99_ms']:>9.2f}{r['qps']:>9.0f}{r[f'qps_{args.threads}_threads']:>10.0f}")
    print(json.dumps({"movies": args.movies, "dim": args.dim, "results": results}))


if __name__ == "__main__":
    main()
