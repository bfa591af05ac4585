"""Benchmark: how long the DAG processor takes to import dags/movielens_recsys.py (budget: 2 s).

Each sample is a fresh interpreter that has already imported Airflow (as the DAG processor has),
then executes the DAG file; prints wall and CPU seconds per sample, the median, and whether it is
within budget. Figures only: a loaded machine makes them slower, so this is not a test.

    .venv/bin/python bench/dag_import.py [--samples 5]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DAG_FILE = REPO / "dags" / "movielens_recsys.py"
BUDGET_S = 2.0
PROBE = f"""
import importlib.util, json, time
import airflow.sdk
wall, cpu = time.perf_counter(), time.process_time()
spec = importlib.util.spec_from_file_location("movielens_recsys", {str(DAG_FILE)!r})
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
print(json.dumps({{"wall_s": time.perf_counter() - wall, "cpu_s": time.process_time() - cpu}}))
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--samples", type=int, default=5)
    args = parser.parse_args()
    env = {**os.environ, "AIRFLOW__CORE__PLUGINS_FOLDER": str(REPO / "plugins"),
           "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"), "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    samples = []
    for i in range(args.samples):
        out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, env=env, check=True)
        samples.append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(f"sample {i + 1}: {samples[-1]['wall_s']:.2f} s wall, {samples[-1]['cpu_s']:.2f} s CPU")
    wall = statistics.median(s["wall_s"] for s in samples)
    cpu = statistics.median(s["cpu_s"] for s in samples)
    print(f"DAG import: median {wall:.2f} s wall, {cpu:.2f} s CPU (budget {BUDGET_S:.0f} s): "
          f"{'within' if wall <= BUDGET_S else 'OVER'} budget")
    return 0


if __name__ == "__main__":
    sys.exit(main())
