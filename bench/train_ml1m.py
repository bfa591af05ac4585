"""PinSage training on a real release through the pipeline's own steps: epochs, time, every method.

    .venv/bin/python bench/train_ml1m.py [--data ../shared/data/ml-1m] [--home DIR] [--epochs N]
        [--negatives N] [--batch-size N] [--lr X] [--embed-dim N] [--device auto|cpu|cuda] [--sampler auto|dgl|torch] [--threads N]
        [--plot FILE]

Runs recsys_tasks.pipeline up to evaluate (ingest with --skip-checksum, the data gates, preprocess,
build_graph, train, evaluate) in --home (a temp folder when absent; with --home finished steps are
reused) and prints, per epoch, the updates, the wall seconds, the time the loop waited for the sampler
and validation HR@10 of both rules; then the evaluate step's leave-one-out table (validation and
test, every method), which is what the quality gate reads. --plot draws validation HR@10 against the
training wall time. The last line is one JSON object. `--negatives 0` trains with a full softmax.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("DGLBACKEND", "pytorch")

from recsys_tasks import pipeline
from recsys_tasks.artifacts import read_json
from recsys_tasks.config import load_settings
from recsys_tasks.model.evaluate import METHODS

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "ml-1m"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=SHARED, help="a MovieLens release folder or .zip")
    ap.add_argument("--home", type=Path)
    ap.add_argument("--epochs", type=int)
    ap.add_argument("--negatives", type=int)
    ap.add_argument("--batch-size", type=int)
    ap.add_argument("--lr", type=float)
    ap.add_argument("--embed-dim", type=int)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--sampler", default="auto")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--plot", type=Path, help="write validation HR@10 against training time as a PNG")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    home = args.home or Path(tempfile.mkdtemp(prefix="recsys-bench-"))
    s = load_settings(home=home, snapshot=str(args.data), skip_checksum=True, epochs=args.epochs,
                      negatives=args.negatives, batch_size=args.batch_size, lr=args.lr, embed_dim=args.embed_dim,
                      device=args.device,
                      sampler=args.sampler)
    started = time.perf_counter()
    results = pipeline.run(s, until="evaluate")
    wall = time.perf_counter() - started
    trained, evaluated = results["train"], results["evaluate"]
    history = read_json(trained.out("metrics.json"))["epochs"]
    for h in history:
        print(f"epoch {h['epoch']}: {h['updates']} updates, {h['train_s']:.1f}s (waiting for the sampler "
              f"{h['sampler_wait_s']:.1f}s), loss {h['loss']:.4f}, val HR@10 history {h['val_hr@10']:.4f} "
              f"latest {h['val_latest_hr@10']:.4f}")
    metrics = read_json(evaluated.out("metrics.json"))["metrics"]
    print(f"{'method':<18}{'val HR@10':>11}{'val NDCG@10':>13}{'test HR@10':>12}{'test NDCG@10':>14}")
    for method in METHODS:
        v, t = metrics["val"][method], metrics["test"][method]
        print(f"{method:<18}{v['hr@10']:>11.4f}{v['ndcg@10']:>13.4f}{t['hr@10']:>12.4f}{t['ndcg@10']:>14.4f}")
    if args.plot:
        plot(args.plot, history, s.negatives)
    print(json.dumps({
        "data": str(args.data), "device": trained.manifest["params"]["device"],
        "sampler": trained.manifest["params"]["sampler"], "negatives": s.negatives,
        "epochs": len(history), "best_epoch": trained.manifest["best_epoch"],
        "train_s": trained.manifest["train_s"], "sampler_wait_s": trained.manifest["sampler_wait_s"],
        "epoch_s": [h["train_s"] for h in history], "wall_s": round(wall, 1),
        "val": metrics["val"], "test": metrics["test"], "home": str(home),
    }))


def plot(path: Path, history: list[dict], negatives: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    elapsed, total = [], 0.0
    for h in history:
        total += h["train_s"]
        elapsed.append(total / 60)
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(elapsed, [h["val_hr@10"] for h in history], marker="o", label="history rule (served)")
    ax.plot(elapsed, [h["val_latest_hr@10"] for h in history], marker="o", label="latest movie")
    ax.set(xlabel="training wall time (min)", ylabel="validation HR@10",
           title=f"PinSage, {'full softmax' if negatives == 0 else f'{negatives} sampled negatives'}")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


if __name__ == "__main__":
    main()
