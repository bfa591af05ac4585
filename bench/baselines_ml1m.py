"""Baselines on real MovieLens under the evaluation protocol: the numbers the model must beat.

    .venv/bin/python bench/baselines_ml1m.py [--data ../shared/data/ml-1m]

Reads the release with the ingest step's reader, splits it with the preprocess step's split (last ->
test, second-to-last -> val, by (timestamp, movie id)) and runs evaluate_frames without embeddings
over the full catalog (movies.dat, unrated movies included). Reference on ml-1m: test HR@10
popularity 0.0348, item-kNN 0.1379, transition counts 0.2068.
Prints one line per baseline and, last, one JSON line with every figure.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from recsys_tasks.data.formats import find_release, read_release
from recsys_tasks.data.preprocess import split_ratings
from recsys_tasks.model.evaluate import evaluate_frames

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "ml-1m")
    args = parser.parse_args()

    started = time.perf_counter()
    tables = read_release(find_release(args.data))
    split = {name: t.to_pandas() for name, t in split_ratings(tables.ratings).items()}
    movie_ids = np.sort(tables.movies["movie_id"].to_numpy())
    loaded = time.perf_counter()
    out = evaluate_frames(split, movie_ids, None, None)
    metrics, counts = out["metrics"], out["counts"]
    done = time.perf_counter()

    print(f"{args.data.name}: {counts['test_users']} test users, {counts['movies']} catalog movies, "
          f"{counts['test_skipped_rewatches']} re-watches skipped; load+split {loaded - started:.1f}s, "
          f"evaluate {done - loaded:.1f}s")
    for split_name, by_method in metrics.items():
        for method, m in by_method.items():
            print(f"{split_name:4s} {method:12s} HR@10 {m['hr@10']:.4f}  NDCG@10 {m['ndcg@10']:.4f}  "
                  f"HR@20 {m['hr@20']:.4f}  MRR {m['mrr']:.4f}")
    print(json.dumps({"data": str(args.data), "counts": counts, "metrics": metrics,
                      "load_s": round(loaded - started, 2), "evaluate_s": round(done - loaded, 2)}))


if __name__ == "__main__":
    main()
