"""RecBole's SASRec and GRU4Rec on the project's exact split and protocol, printed beside the project's methods.

    .venv/bin/python bench/peers.py [--data ml-1m] [--home DIR] [--models SASRec GRU4Rec] [--budget-minutes 20]

The peers live in their own virtualenv, bench/.peers-venv (git-ignored, not a project dependency); the
script creates it when absent with:
    python3 -m venv bench/.peers-venv && bench/.peers-venv/bin/pip install torch==2.13.0 recbole==1.2.1 \
        numpy==1.26.4 pandas==2.2.3
(RecBole 1.2.1 still uses np.float / np.long in places, so numpy stays below 2; torch 2.13.0 is the
local CPU wheel. The project's own venv pins torch 2.2.1 and is never touched.)

The split is the project's: the pipeline's own steps (up to evaluate, reused from --home) give the
preprocess folder; its train split becomes RecBole's training sequences (every prefix -> the next movie,
the last 50 movies, RecBole's default), and the evaluator's own leave-one-out Heldouts (val: history =
train; test: train + val, ordered by (timestamp, movie id)) become RecBole's valid/test rows, exported as
RecBole's pre-split atomic files (benchmark_filename). The worker (bench/peers_recbole.py, run in the
peers venv) trains each model within --budget-minutes (it says when the budget stopped it), picks the
epoch by validation HR@10, takes every movie's score from the model's full_sort_predict and ranks it
with the project's own metric code (recsys_tasks.model.metrics: full catalog, seen movies excluded,
pessimistic ties). It also reports RecBole's own evaluator on the same test rows (it excludes nothing)
beside the project's metric code with nothing excluded: the two must agree, which checks the export.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from itertools import pairwise
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("DGLBACKEND", "pytorch")

from bench.quality import print_table, run_pipeline
from recsys_tasks.config import load_settings
from recsys_tasks.model.evaluate import Heldout, leave_one_out, read_interactions

VENV = REPO / "bench" / ".peers-venv"
PEERS_PACKAGES = ("torch==2.13.0", "recbole==1.2.1", "numpy==1.26.4", "pandas==2.2.3")
MAX_LEN = 50  # RecBole's MAX_ITEM_LIST_LENGTH default
SHARED = REPO.parent / "shared" / "data"


def ensure_venv() -> Path:
    python = VENV / "bin" / "python"
    if not python.exists():
        print(f"creating {VENV} ({' '.join(PEERS_PACKAGES)})", file=sys.stderr)
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
        subprocess.run([str(VENV / "bin" / "pip"), "install", "-q", *PEERS_PACKAGES], check=True)
    return python


def _seq(ids: np.ndarray) -> str:
    return " ".join(map(str, ids[-MAX_LEN:].tolist()))


def export_atomic(processed: Path, movie_ids: np.ndarray, out: Path) -> dict[str, Heldout]:
    """RecBole's pre-split atomic files (ml.train/valid/test.inter) and the evaluator's Heldouts (heldout.npz)."""
    out.mkdir(parents=True, exist_ok=True)
    header = "user_id:token\titem_id_list:token_seq\titem_id:token\n"
    train = read_interactions(processed, "train")
    train = train.sort_values(["user_id", "timestamp", "movie_id"], kind="stable")
    users, movies = train["user_id"].to_numpy(np.int64), train["movie_id"].to_numpy(np.int64)
    bounds = np.flatnonzero(np.r_[True, users[1:] != users[:-1], True])
    with open(out / "ml.train.inter", "w") as fh:
        fh.write(header)
        for lo, hi in pairwise(bounds):  # every prefix of a user's train sequence -> the next movie
            fh.writelines(f"{users[lo]}\t{_seq(movies[lo:i])}\t{movies[i]}\n" for i in range(lo + 1, hi))
    heldout = {split: leave_one_out(processed, movie_ids, split) for split in ("val", "test")}
    arrays: dict[str, np.ndarray] = {"catalog": movie_ids}
    for split, h in heldout.items():
        name = "valid" if split == "val" else "test"
        with open(out / f"ml.{name}.inter", "w") as fh:
            fh.write(header)
            for r in range(h.n_users):
                hist = movie_ids[h.items[h.starts[r]:h.starts[r + 1]]]
                fh.write(f"{h.user_ids[r]}\t{_seq(hist)}\t{movie_ids[h.targets[r]]}\n")
        arrays |= {f"{split}_items": h.items, f"{split}_starts": h.starts, f"{split}_targets": h.targets}
    np.savez(out / "heldout.npz", **arrays)
    return heldout


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="ml-1m", help="a release under ../shared/data, or a folder")
    ap.add_argument("--home", type=Path, help="artifact root to reuse (default: a temp folder)")
    ap.add_argument("--models", nargs="+", default=["SASRec", "GRU4Rec"])
    ap.add_argument("--budget-minutes", type=float, default=20.0, help="training time per model")
    ap.add_argument("--patience", type=int, default=5, help="epochs without a better val HR@10 before stopping")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    data = Path(args.data) if Path(args.data).is_dir() else SHARED / args.data
    home = (args.home or Path(tempfile.mkdtemp(prefix="recsys-peers-"))) / data.name
    python = ensure_venv()

    s = load_settings(home=home, snapshot=str(data), skip_checksum=True)
    results, _ = run_pipeline(s, "evaluate")
    with np.load(results["build_graph"].out("id_map.npz")) as ids:
        movie_ids = ids["movie_ids"]
    atomic = home / "recbole" / results["preprocess"].key
    started = time.perf_counter()
    if not (atomic / "ml" / "heldout.npz").is_file():  # written last: its presence means a whole export
        export_atomic(results["preprocess"].path, movie_ids, atomic / "ml")
    export_s = time.perf_counter() - started

    peers: dict[str, Any] = {}
    for model in args.models:
        out = atomic / f"{model}.json"
        cmd = [str(python), str(REPO / "bench" / "peers_recbole.py"), "--atomic", str(atomic), "--model", model,
               "--budget-minutes", str(args.budget_minutes), "--patience", str(args.patience),
               "--threads", str(args.threads), "--device", args.device, "--out", str(out)]
        print(f"{data.name}: {model} for at most {args.budget_minutes} min", file=sys.stderr)
        subprocess.run(["nice", "-n", "10", *cmd], check=True, cwd=atomic,  # RecBole writes its logs in the cwd
                       env={**os.environ, "PYTHONPATH": str(REPO)})
        peers[model] = json.loads(out.read_text())

    man = results["evaluate"].manifest
    print(f"\n===== {data.name}: the project's methods (evaluate step) and the peers, same split and protocol")
    for split in ("val", "test"):
        rows = dict(man["metrics"][split])
        for model, r in peers.items():
            rows[f"{model} (RecBole {r['recbole']})"] = r["project"][split]
        print_table(f"leave-one-out, {split}", rows)
    print("\nverification on test (nothing excluded, RecBole's evaluator vs the project's metric code):")
    for model, r in peers.items():
        rb, ours = r["recbole_evaluator_test"], r["project_unmasked_test"]
        print(f"  {model}: RecBole hit@10 {rb['hit@10']:.4f} ndcg@10 {rb['ndcg@10']:.4f} | project "
              f"hr@10 {ours['hr@10']:.4f} ndcg@10 {ours['ndcg@10']:.4f}")
    for model, r in peers.items():
        state = (f"STOPPED EARLY by the {args.budget_minutes}-minute budget" if r["stopped_by_budget"]
                 else f"stopped after {r['patience']} epochs without a val gain")
        print(f"  {model}: {state}: {r['epochs_completed']} full epochs + {r['batches_in_last_epoch']} batches "
              f"of {r['batches_per_epoch']}, best val at {r['best']}; train {r['train_s']:.0f}s wall, "
              f"{r['train_cpu_s']:.0f}s CPU")
    blob = json.dumps({"data": str(data), "export_s": round(export_s, 1), "peers": peers,
                       "project": man["metrics"]}, default=str)
    if args.json:
        args.json.write_text(blob + "\n")
    print(blob)


if __name__ == "__main__":
    main()
