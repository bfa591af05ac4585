"""Model quality on real MovieLens: both protocols, every method, validation and test, from the pipeline.

    .venv/bin/python bench/quality.py [--data ml-100k ml-1m] [--home DIR] [--epochs N] [--no-retrain] [--json FILE]

Runs the pipeline's own steps (ingest -> validate_raw -> preprocess -> validate_processed -> build_graph
-> validate_graph -> train -> evaluate, through recsys_tasks.pipeline) on each release under ../shared/data
and prints the evaluate step's tables: leave-one-out (the manifest's `metrics`) and the global time split
(`protocols.time_split`). With --home, finished steps are reused (the artifact contract skips them).

The evaluate step can only score the model with the embeddings trained on the leave-one-out train split,
which holds ratings after the time split's cut-offs (their leak is printed). Unless --no-retrain, this
script also retrains the model as a nightly run at each cut-off T would: it writes the release as it was
before T (ratings and users before T, same layout), runs the pipeline's steps up to train on it, and scores
those embeddings on the full release's time split with model.evaluate.score_vectors: the honest pinsage
rows of the time split ("retrained at T").
It then runs the release steps up to smoke_test into the home's own stores (Milvus Lite, SQLite) and prints
the served-path check: HR@10 of the served rule through Milvus' HNSW search against exact search, and recall@10.
Last line: one JSON object with every figure (also written to --json).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("DGLBACKEND", "pytorch")

from recsys_tasks import pipeline
from recsys_tasks.artifacts import StepResult, read_json
from recsys_tasks.config import Settings, load_settings
from recsys_tasks.data.formats import find_release
from recsys_tasks.errors import GateFailure
from recsys_tasks.model.evaluate import LATEST_RULE, SERVED, score_vectors

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
COLS = ("hr@10", "ndcg@10", "hr@20", "ndcg@20", "mrr")


def run_pipeline(s: Settings, until: str) -> tuple[dict[str, StepResult], dict[str, dict[str, float]]]:
    """The pipeline's steps up to `until`, with each step's wall and CPU seconds (0 when skipped)."""
    timings: dict[str, dict[str, float]] = {}
    clock = [time.perf_counter(), time.process_time()]

    def on_step(result: StepResult) -> None:
        wall, cpu = time.perf_counter(), time.process_time()
        timings[result.step] = {"wall_s": round(wall - clock[0], 1), "cpu_s": round(cpu - clock[1], 1),
                                "skipped": result.skipped}
        print(f"  {result.step:<20} {'skipped' if result.skipped else 'done'}  wall {wall - clock[0]:.0f}s",
              file=sys.stderr)
        clock[:] = [wall, cpu]

    return pipeline.run(s, until=until, on_step=on_step), timings


def served_path(s: Settings) -> dict[str, Any]:
    """The smoke test's check of what is served against what was evaluated: the pipeline's release steps
    (export, load, smoke_test) into this home's own stores; only a model the quality gate passes gets there."""
    try:
        results, _ = run_pipeline(s, "smoke_test")
    except GateFailure as exc:
        return {"failed": str(exc)}
    return results["smoke_test"].manifest["served_path"]


def write_release_before(source: Path, cutoff: int, out: Path) -> Path:
    """`source` as a snapshot taken at `cutoff`: its ratings before it, the users who had rated by then."""
    release = find_release(source)
    out.mkdir(parents=True, exist_ok=True)
    if release.kind in ("ml-1m", "ml-10m"):
        ratings, sep, ts_field, users_file = "ratings.dat", b"::", 3, "users.dat"
    elif release.kind == "ml-100k":
        ratings, sep, ts_field, users_file = "u.data", b"\t", 3, "u.user"
    else:
        ratings, sep, ts_field, users_file = "ratings.csv", b",", 3, None
    kept_users: set[bytes] = set()
    with open(release.path(ratings), "rb") as src, open(out / ratings, "wb") as dst:
        for i, line in enumerate(src):
            fields = line.rstrip(b"\r\n").split(sep)
            if release.kind == "csv" and i == 0:
                dst.write(line)  # the header
            elif int(fields[ts_field]) < cutoff:
                dst.write(line)
                kept_users.add(fields[0])
    for name in release.files:
        if name == users_file:
            user_sep = b"::" if name == "users.dat" else b"|"
            with open(release.path(name), "rb") as src, open(out / name, "wb") as dst:
                dst.writelines(line for line in src if line.split(user_sep, 1)[0] in kept_users)
        elif name != ratings:
            shutil.copyfile(release.path(name), out / name)
    return out


def retrained_at_cutoffs(s: Settings, data: Path, results: dict[str, StepResult],
                         cutoffs: dict[str, int]) -> dict[str, Any]:
    """Pinsage rows of the time split from models trained on the release as it was at each cut-off."""
    out: dict[str, Any] = {}
    for split, cutoff in sorted(cutoffs.items(), key=lambda kv: kv[1]):
        snapshot = write_release_before(data, cutoff, s.home / "snapshots" / f"{data.name}-before-{cutoff}")
        print(f"{data.name}: retraining on the release before {cutoff} ({split} cut-off)", file=sys.stderr)
        before, timings = run_pipeline(s.replace(snapshot=str(snapshot)), "train")
        trained, graph = before["train"], before["build_graph"]
        with np.load(graph.out("id_map.npz")) as ids:
            movie_ids = ids["movie_ids"]
        emb, rule = np.load(trained.out("embeddings.npy")), read_json(trained.out("rule.json"))
        out[split] = {
            "cutoff": cutoff, "model_version": trained.manifest["model_version"], "timings": timings,
            "metrics": {
                "pinsage_latest (retrained at T)": score_vectors(results["preprocess"], results["build_graph"],
                                                                 f"time_{split}", movie_ids, emb, LATEST_RULE),
                f"{SERVED} (retrained at T)": score_vectors(results["preprocess"], results["build_graph"],
                                                            f"time_{split}", movie_ids, emb, rule),
            },
        }
    return out


def interval(m: dict[str, float]) -> str:
    """95% normal interval half-width of HR@10 over the users (binomial)."""
    p, n = m["hr@10"], m["users"]
    return f"±{1.96 * math.sqrt(p * (1 - p) / n):.3f}" if n else ""


def print_table(title: str, by_method: dict[str, dict[str, float]]) -> None:
    print(f"\n{title}")
    print(f"  {'method':<38}" + "".join(f"{c:>9}" for c in COLS) + f"{'users':>8}  HR@10 95%")
    for method, m in by_method.items():
        print(f"  {method:<38}" + "".join(f"{m[c]:>9.4f}" for c in COLS) + f"{m['users']:>8}  {interval(m)}")


def bench_release(data: Path, home: Path, args: argparse.Namespace) -> dict[str, Any]:
    s = load_settings(home=home, snapshot=str(data), skip_checksum=True, epochs=args.epochs)
    print(f"{data.name}: pipeline up to evaluate in {home}", file=sys.stderr)
    results, timings = run_pipeline(s, "evaluate")
    man = results["evaluate"].manifest
    ts = man["protocols"]["time_split"]
    report: dict[str, Any] = {"data": str(data), "model_version": man["model_version"], "timings": timings,
                              "train": results["train"].manifest.get("metrics"), "counts": man["counts"],
                              "loo": man["metrics"], "loo_facts": man["protocols"]["leave_one_out"],
                              "time_split": ts}
    if not args.no_retrain:
        report["retrained"] = retrained_at_cutoffs(s, data, results, ts["cutoffs"])
    report["served_path"] = served_path(s)

    print(f"\n===== {data.name}  model {man['model_version']}  ({man['counts']['movies']} movies)")
    for split in ("val", "test"):
        print_table(f"leave-one-out, {split}", man["metrics"][split])
    for split in ("val", "test"):
        rows = dict(ts["metrics"][split])
        for method in ("pinsage_latest", SERVED):
            if method in rows:
                rows[f"{method} (LOO-trained, leaks)"] = rows.pop(method)
        if "retrained" in report:
            rows = report["retrained"][split]["metrics"] | rows
        print_table(f"time split, {split} (cut-off {ts['cutoffs'][split]}, "
                    f"{ts['counts'][split]['new_users']} new users not scored)", rows)
    path = report["served_path"]
    if "recall@10" in path:
        print(f"\nserved path (smoke_test, {path['users']} test users): HR@10 through Milvus HNSW "
              f"{path['served_hr@10']:.4f}, by exact search {path['exact_hr@10']:.4f}, recall@10 {path['recall@10']:.3f}")
    else:
        print(f"\nserved path: not reached or failed: {path['failed']}")
    loo = man["protocols"]["leave_one_out"]
    print(f"\nleave-one-out leak: {loo['train_ratings_after_heldout']['test']['mean']:.1%} of a test movie's train "
          f"ratings postdate the test event (val: {loo['train_ratings_after_heldout']['val']['mean']:.1%}); "
          f"same-second val/test {loo['same_second']['val_test']:.1%}, train/val {loo['same_second']['train_val']:.1%}")
    for split, leak in ts.get("model_leak", {}).items():
        print(f"time split {split}: {leak['train_ratings_at_or_after_cutoff']:.1%} of the LOO train split is at or "
              f"after the cut-off; {leak['targets_in_train']:.1%} of the targets are LOO train ratings")
    return report


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", nargs="+", default=["ml-100k", "ml-1m"], help="releases under ../shared/data")
    ap.add_argument("--home", type=Path, help="artifact root to reuse (default: a temp folder)")
    ap.add_argument("--epochs", type=int, help="training epochs (default: the pipeline's)")
    ap.add_argument("--no-retrain", action="store_true", help="skip the retrains at the time split's cut-offs")
    ap.add_argument("--json", type=Path, help="also write the figures here")
    args = ap.parse_args()
    home = args.home or Path(tempfile.mkdtemp(prefix="recsys-quality-"))
    started = time.perf_counter()
    reports = {name: bench_release(SHARED / name if not Path(name).is_dir() else Path(name), home / Path(name).name,
                                   args) for name in args.data}
    total = {"wall_s": round(time.perf_counter() - started, 1),
             "cpu_s": round(time.process_time(), 1),
             "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)}
    print(f"\ntotal: wall {total['wall_s']}s, CPU {total['cpu_s']}s, peak RSS {total['peak_rss_mb']} MB")
    blob = json.dumps({"releases": reports, "total": total}, default=str)
    if args.json:
        args.json.write_text(blob + "\n")
    print(blob)


if __name__ == "__main__":
    main()
