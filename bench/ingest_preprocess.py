"""Benchmark: ingest + preprocess of a real MovieLens release (default ../shared/data/ml-1m) into a temp home.

Prints one line of figures per step: wall seconds and the process's peak RSS so far (MiB). Both steps run
forced, so the numbers are the work itself, not a cache hit.

    .venv/bin/python bench/ingest_preprocess.py [--release PATH] [--synthetic N_USERS]
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def main() -> int:
    sys.path.insert(0, str(REPO))  # runnable as a plain script from any folder
    from recsys_tasks.data.ingest import ingest_snapshot
    from recsys_tasks.data.preprocess import preprocess
    from recsys_tasks.data.synthetic import write_snapshot

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--release", type=Path, default=REPO.parent / "shared" / "data" / "ml-1m")
    parser.add_argument("--synthetic", type=int, metavar="N_USERS",
                        help="also time writing a synthetic ml-1m snapshot with N_USERS users")
    args = parser.parse_args()
    if not args.release.is_dir():
        print(f"release folder not found: {args.release} (see ../shared/data/README.md)", file=sys.stderr)
        return 2
    print(f"{'step':<12}{'wall_s':>9}{'peak_rss_mib':>14}  counts")
    with tempfile.TemporaryDirectory(prefix="recsys-bench-") as home:
        root = Path(home) / "artifacts"
        start = time.perf_counter()
        ingested = ingest_snapshot(str(args.release), root, downloads=Path(home) / "downloads",
                                   skip_checksum=True, force=True)
        print(f"{'ingest':<12}{time.perf_counter() - start:>9.2f}{peak_rss_mib():>14.0f}  "
              f"{ingested.manifest['counts']}")
        start = time.perf_counter()
        processed = preprocess(ingested, root, force=True)
        print(f"{'preprocess':<12}{time.perf_counter() - start:>9.2f}{peak_rss_mib():>14.0f}  "
              f"{processed.manifest['counts']}")
        if args.synthetic:
            start = time.perf_counter()
            write_snapshot(Path(home) / "synthetic", n_users=args.synthetic, fmt="ml-1m", seed=0)
            print(f"{'synthetic':<12}{time.perf_counter() - start:>9.2f}{peak_rss_mib():>14.0f}  "
                  f"{{'users': {args.synthetic}}}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
