"""Benchmark: the pipeline's steps on seeded synthetic releases of 1 M, 10 M and 25 M ratings (and 32 M).

Each step runs forced, in its own process (as an Airflow task does), through `pipeline.run_one` on the
results of the steps before it. CPU seconds come from the kernel (wait4), peak RSS from the step's own
VmHWM (ru_maxrss would count the parent's pages the child had before exec). The table gives them per
size, the growth factor from one size to the next next to the data's own, and the whole run (the sum
of the steps; peak = the largest step). Python, GX and DGL imports cost a few CPU-seconds per step
whatever the size, so growth factors from 1 M understate the data-dependent growth.

    nice -n 10 .venv/bin/python bench/scale.py --sizes 1m,10m --until validate_graph
    nice -n 10 .venv/bin/python bench/scale.py --sizes 25m --from preprocess --until validate_graph
    .venv/bin/python bench/scale.py --sizes 1m --set epochs=1 --set batch_size=2048   # the whole DAG

Releases are written once under --work (same arguments and seed: byte-identical files) and reused;
step folders go to a home per size under --work (--from reuses the earlier steps' folders there).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Size:
    fmt: str
    users: int
    movies: int
    per_user: tuple[int, int]  # ratings per user, uniform; the mean times `users` is the size

    @property
    def ratings(self) -> int:  # nominal; the release's own count is in the ingest manifest
        return self.users * sum(self.per_user) // 2


# The releases: 10 M in the ml-10m layout (70k users, 10k movies), 25 M in the csv layout
# (160k users, 60k movies, as ml-25m); 1 M with ml-1m's users and movies; 32 M as ml-32m; 100k (ml-100k's
# users and movies) to try the whole DAG through the bench in a minute or two.
SIZES = {
    "100k": Size("ml-100k", 943, 1_682, (20, 192)),
    "1m": Size("ml-1m", 6_040, 3_900, (20, 311)),
    "10m": Size("ml-10m", 70_000, 10_000, (20, 266)),
    "25m": Size("csv", 160_000, 60_000, (20, 292)),
    "32m": Size("csv", 200_000, 87_000, (20, 300)),
}
SEED = 0


def release(work: Path, name: str) -> Path:
    """The synthetic release for `name`, written on first use (in a child process: this one stays small)."""
    size = SIZES[name]
    folder = work / "releases" / f"{name}-{size.fmt}-seed{SEED}"
    if not folder.is_dir():  # written under a temporary name and renamed: present means complete
        start = time.perf_counter()
        code = (f"from pathlib import Path; from recsys_tasks.data.synthetic import write_snapshot; "
                f"write_snapshot(Path({str(folder)!r}), n_users={size.users}, fmt={size.fmt!r}, seed={SEED}, "
                f"n_movies={size.movies}, ratings_per_user={size.per_user})")
        subprocess.run([sys.executable, "-c", code], check=True, env=_env())
        print(f"# wrote {folder} in {time.perf_counter() - start:.0f} s", flush=True)
    return folder


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}


def run_child(step: str, home: Path, snapshot: Path, inputs: list[str], settings: list[str]) -> dict:
    """One step in a fresh process; returns its result path and the process's CPU s, wall s, peak RSS."""
    command = [sys.executable, __file__, "--child", step, "--home", str(home), "--snapshot", str(snapshot),
               *[f"--set={s}" for s in settings], *[f"--input={i}" for i in inputs]]
    start = time.perf_counter()
    child = subprocess.Popen(command, stdout=subprocess.PIPE, env=_env(), text=True)
    out = child.stdout.read()
    _, status, usage = os.wait4(child.pid, 0)
    wall = time.perf_counter() - start
    child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode != 0:
        raise SystemExit(f"{step} failed (exit {child.returncode}); see its log above")
    result = json.loads(out.strip().splitlines()[-1])
    peak_kib = result.pop("peak_rss_kib")
    return {**result, "cpu_s": usage.ru_utime + usage.ru_stime, "wall_s": wall, "rss_gb": peak_kib / 2**20}


def child(step: str, home: Path, snapshot: Path, inputs: list[str], settings: list[str]) -> None:
    from recsys_tasks import pipeline
    from recsys_tasks.artifacts import load_result
    from recsys_tasks.config import load_settings

    overrides = dict(s.split("=", 1) for s in settings)
    s = load_settings(home=home, snapshot=str(snapshot), skip_checksum=True, force=True)
    s = s.replace(**{k: _typed(getattr(s, k), v) for k, v in overrides.items()})
    result = pipeline.run_one(s, step, [load_result(p) for p in inputs])
    status = Path("/proc/self/status").read_text()
    peak = int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM:")))  # KiB
    print(json.dumps({"path": str(result.path), "counts": result.manifest.get("counts", {}),
                      "peak_rss_kib": peak}))


def _typed(current: object, text: str) -> object:
    if isinstance(current, bool):
        return text.lower() in ("1", "true", "yes", "on")
    return type(current)(text)


def saved(work: Path, name: str) -> dict[str, dict]:
    done_file = work / "homes" / name / "bench-results.json"
    if not done_file.is_file():
        raise SystemExit(f"nothing measured for {name} under {work}")
    results = json.loads(done_file.read_text())
    return {**results, "_ratings": results["ingest"]["counts"].get("ratings", SIZES[name].ratings)}


def measure(work: Path, name: str, steps: list[str], first: str, settings: list[str]) -> dict[str, dict]:
    sys.path.insert(0, str(REPO))
    from recsys_tasks.pipeline import BY_NAME

    snapshot = release(work, name)
    home = work / "homes" / name
    done_file = home / "bench-results.json"
    results: dict[str, dict] = json.loads(done_file.read_text()) if done_file.is_file() else {}
    measured = {}
    for step in steps[steps.index(first):]:
        reads = BY_NAME[step].reads
        missing = [r for r in reads if r not in results]
        if missing:
            raise SystemExit(f"{step} needs {', '.join(missing)} under {home}: start earlier (--from)")
        row = run_child(step, home, snapshot, [results[r]["path"] for r in reads], settings)
        results[step] = measured[step] = row
        home.mkdir(parents=True, exist_ok=True)
        done_file.write_text(json.dumps(results, indent=1))
        print(f"# {name} {step}: {row['cpu_s']:.1f} CPU-s, {row['wall_s']:.1f} s, {row['rss_gb']:.2f} GB",
              flush=True)
    measured["_ratings"] = results["ingest"]["counts"].get("ratings", SIZES[name].ratings)
    return measured


def table(rows: dict[str, dict[str, dict]], steps: list[str]) -> str:
    sizes = list(rows)
    head = "| step | " + " | ".join(f"{s} CPU-s / wall s / GB" for s in sizes)
    growth = [f"{a}->{b}" for a, b in itertools.pairwise(sizes)]
    head += "".join(f" | growth {g} (CPU)" for g in growth) + " |"
    lines = [head, "|" + "---|" * (1 + len(sizes) + len(growth))]
    total = {s: {"cpu_s": 0.0, "wall_s": 0.0, "rss_gb": 0.0} for s in sizes}
    for step in steps:
        if not any(step in rows[s] for s in sizes):
            continue
        cells = []
        for s in sizes:
            r = rows[s].get(step)
            cells.append(f"{r['cpu_s']:.1f} / {r['wall_s']:.1f} / {r['rss_gb']:.2f}" if r else "-")
            if r:
                total[s] = {"cpu_s": total[s]["cpu_s"] + r["cpu_s"], "wall_s": total[s]["wall_s"] + r["wall_s"],
                            "rss_gb": max(total[s]["rss_gb"], r["rss_gb"])}
        factors = [f"x{rows[b][step]['cpu_s'] / rows[a][step]['cpu_s']:.1f}"
                   if step in rows[a] and step in rows[b] else "-" for a, b in itertools.pairwise(sizes)]
        lines.append(f"| {step} | " + " | ".join(cells + factors) + " |")
    data = [f"x{rows[b]['_ratings'] / rows[a]['_ratings']:.1f}" for a, b in itertools.pairwise(sizes)]
    lines.append("| **all measured steps** (sum; peak = max) | "
                 + " | ".join(f"{t['cpu_s']:.1f} / {t['wall_s']:.1f} / {t['rss_gb']:.2f}" for t in total.values())
                 + "".join(f" | ratings {d}" for d in data) + " |")
    lines.append("| ratings | " + " | ".join(f"{rows[s]['_ratings']:,}" for s in sizes)
                 + " |" * (len(growth) + 1))
    return "\n".join(lines)


def main() -> int:
    sys.path.insert(0, str(REPO))
    from recsys_tasks.pipeline import NAMES

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="1m,10m", help=f"comma-separated, of {', '.join(SIZES)}")
    parser.add_argument("--from", dest="first", default="ingest", choices=NAMES,
                        help="first step to measure (earlier ones are read from the size's home)")
    parser.add_argument("--until", default="validate_graph", choices=NAMES, help="last step to measure")
    parser.add_argument("--work", type=Path, default=Path(os.environ.get("RECSYS_SCALE_WORK", "/tmp/recsys-scale")),
                        help="where the releases and the step folders go (needs ~3 GB per 10 M ratings)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a Settings override for every step, e.g. epochs=1")
    parser.add_argument("--table-only", action="store_true",
                        help="print the table of the figures measured earlier under --work; run nothing")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--home", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--snapshot", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--input", action="append", default=[], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.home, args.snapshot, args.input, args.set)
        return 0
    sizes = [s.strip() for s in args.sizes.split(",") if s.strip()]
    unknown = [s for s in sizes if s not in SIZES]
    if unknown:
        parser.error(f"unknown size(s) {', '.join(unknown)}; sizes are {', '.join(SIZES)}")
    steps = list(NAMES[: NAMES.index(args.until) + 1])
    if args.first not in steps:
        parser.error(f"--from {args.first} comes after --until {args.until}")
    if args.table_only:
        rows = {name: saved(args.work, name) for name in sizes}
    else:
        rows = {name: measure(args.work, name, steps, args.first, args.set) for name in sizes}
    print(table(rows, steps))
    return 0


if __name__ == "__main__":
    sys.exit(main())
