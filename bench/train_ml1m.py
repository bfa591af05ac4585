"""Train PinSage on the real ml-1m and report epoch times, the sampler's share and test HR@10 of both rules.

    python bench/train_ml1m.py [--home DIR] [--data ../shared/data/ml-1m] [--epochs N] [--device cpu]
    python bench/train_ml1m.py --raw .data/ml-1m --device cuda --sampler torch   (no pipeline, no DGL)

Default mode runs the pipeline's own steps (ingest with --skip-checksum, preprocess, build_graph, train)
in --home (a temp folder when absent). --raw parses the .dat files here with numpy/pandas and splits them
by the same protocol, so it runs where only torch + numpy + pandas are installed (a GPU box). Test
protocol (DESIGN.md): history = train + the val movie, seen movies excluded; metrics come from
recsys_tasks.model.metrics, not from the evaluate step.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import re
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("DGLBACKEND", "pytorch")

from recsys_tasks.config import load_settings
from recsys_tasks.graph.arrays import GraphArrays, load_arrays
from recsys_tasks.graph.sequences import Sequences
from recsys_tasks.model.train import Validation, fit, resolve_device

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "ml-1m"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--home", type=Path)
    ap.add_argument("--data", type=Path, default=SHARED)
    ap.add_argument("--raw", type=Path, help="ml-1m folder to parse directly (no pipeline steps, no DGL)")
    ap.add_argument("--epochs", type=int)
    ap.add_argument("--batch-size", type=int)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--sampler", default="auto")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    # --raw writes nothing; the pipeline mode needs an artifact root
    home = args.home or (
        Path(".recsys-bench") if args.raw else Path(tempfile.mkdtemp(prefix="recsys-bench-"))
    )
    s = load_settings(
        home=home,
        snapshot=str(args.raw or args.data),
        skip_checksum=True,
        epochs=args.epochs,
        batch_size=args.batch_size,
        device=args.device,
        sampler=args.sampler,
    )
    started = time.perf_counter()
    if args.raw:
        g, val, test = raw_split(args.raw)
        result = fit(g, val, s, resolve_device(s.device))
        emb, rule, history = result.embeddings, result.rule, result.history
    else:
        from recsys_tasks import pipeline

        processed = pipeline.preprocess(s, pipeline.ingest(s))
        graph = pipeline.build_graph(s, processed)
        trained = pipeline.train(s, processed, graph)
        g = load_arrays(graph.path)
        val = pd.read_parquet(processed.out("val.parquet"))
        test = pd.read_parquet(processed.out("test.parquet"))
        emb = np.load(trained.out("embeddings.npy"))
        rule = json.loads(trained.out("rule.json").read_text())
        history = json.loads(trained.out("metrics.json").read_text())["epochs"]
    wall = time.perf_counter() - started
    metrics = heldout_metrics(g, val, test, emb, rule)
    train_s = sum(h["train_s"] for h in history)
    sampler_s = sum(h["sampler_s"] for h in history)
    for h in history:
        print(
            f"epoch {h['epoch']}: {h['train_s']:.1f}s (sampler {h['sampler_s']:.1f}s) loss {h['loss']:.4f} "
            f"val HR@10 history {h['val_hr@10']:.4f} latest {h['val_latest_hr@10']:.4f}"
        )
    summary = {
        "test_hr@10_latest": metrics["latest"]["hr@10"],
        "test_hr@10_history": metrics["history"]["hr@10"],
        "test": metrics,
        "train_loop_s": round(train_s, 1),
        "sampler_s": round(sampler_s, 1),
        "sampler_share": round(sampler_s / max(train_s, 1e-9), 4),
        "wall_s": round(wall, 1),
        "epochs": len(history),
        "device": str(resolve_device(s.device)),
        "home": str(home),
    }
    print(json.dumps(summary))


def heldout_metrics(
    g: GraphArrays, val: pd.DataFrame, test: pd.DataFrame, emb: np.ndarray, rule: dict
) -> dict[str, dict[str, float]]:
    """Test split: history = train movies + the val movie; those are excluded from the ranking."""
    users = np.searchsorted(g.user_ids, val["user_id"].to_numpy(np.int64))
    movies = np.searchsorted(g.movie_ids, val["movie_id"].to_numpy(np.int64))
    extra = {int(u): [int(m)] for u, m in zip(users, movies)}
    return Validation.build(g, Sequences.from_graph(g), test, extra=extra).evaluate(emb, rule)


def raw_split(folder: Path) -> tuple[GraphArrays, pd.DataFrame, pd.DataFrame]:
    """ml-1m .dat files -> train graph arrays + val/test frames, split per user as DESIGN.md says."""

    def dat(name: str, cols: list[str]) -> pd.DataFrame:
        text = (folder / name).read_bytes().decode("latin-1").replace("::", "\t")
        return pd.read_csv(io.StringIO(text), sep="\t", names=cols, header=None, quoting=3)

    movies = dat("movies.dat", ["movie_id", "title", "genres"]).sort_values("movie_id")
    r = dat("ratings.dat", ["user_id", "movie_id", "rating", "timestamp"])
    r = r.sort_values(["user_id", "timestamp", "movie_id"], kind="stable").reset_index(drop=True)
    back = r.groupby("user_id").cumcount(ascending=False).to_numpy()
    enough = r.groupby("user_id")["movie_id"].transform("size").to_numpy() >= 3
    train, val, test = r[~enough | (back >= 2)], r[enough & (back == 1)], r[enough & (back == 0)]
    movie_ids = movies["movie_id"].to_numpy(np.int64)
    user_ids, user_idx = np.unique(train["user_id"].to_numpy(np.int64), return_inverse=True)
    genre_names = sorted({x for gs in movies["genres"] for x in gs.split("|") if x})
    genres = np.zeros((len(movies), len(genre_names)), np.float32)
    tokens = np.zeros((len(movies), 8), np.int64)
    vocab: dict[str, int] = {}
    year = np.zeros(len(movies), np.int32)
    for i, (title, gs) in enumerate(zip(movies["title"], movies["genres"])):
        genres[i, [genre_names.index(x) for x in gs.split("|") if x]] = 1
        if m := re.search(r"\((\d{4})\)\s*$", title):
            year[i] = int(m.group(1))
        words = re.findall(r"[a-z0-9]+", re.sub(r"\(\d{4}\)\s*$", "", title).lower())[:8]
        tokens[i, : len(words)] = [vocab.setdefault(w, len(vocab) + 2) for w in words]
    g = GraphArrays(
        user_idx=user_idx.astype(np.int64),
        movie_idx=np.searchsorted(movie_ids, train["movie_id"].to_numpy(np.int64)),
        rating=train["rating"].to_numpy(np.float32),
        timestamp=train["timestamp"].to_numpy(np.int64),
        movie_ids=movie_ids,
        user_ids=user_ids,
        year=year,
        genres=genres,
        title_tokens=tokens,
    )
    return g, val, test


if __name__ == "__main__":
    main()
