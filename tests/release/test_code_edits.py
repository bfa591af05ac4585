"""A code deploy re-runs only the steps whose code changed (step keys come from the modules a step imports).

On a copy of the package: one run through evaluate; then an edit in serving/ (comments and
code) leaves every data and model step skipped; an edit in validation/ re-runs the gates and nothing else.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from recsys_tasks.data.synthetic import write_snapshot

PACKAGE = Path(__file__).resolve().parents[2] / "recsys_tasks"
TRAIN = ["--epochs", "1", "--embed-dim", "8", "--batch-size", "128", "--device", "cpu", "--skip-checksum"]
GATES = {"validate_raw", "validate_processed", "validate_graph"}


def _run(copy: Path, home: Path, snapshot: Path) -> dict[str, bool]:
    env = {**os.environ, "PYTHONPATH": str(copy), "RECSYS_HOME": str(home)}
    env.pop("RECSYS_DB_URL", None)
    env.pop("RECSYS_MILVUS_URI", None)
    out = subprocess.run([sys.executable, "-m", "recsys_tasks", "run", "--until", "evaluate",
                          "--snapshot", str(snapshot), "--json", *TRAIN], env=env, capture_output=True, text=True,
                         timeout=1200, check=False, cwd=copy)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.splitlines()[-1])
    assert Path(result["steps"]["train"]["path"]).is_relative_to(home)
    return {step: r["skipped"] for step, r in result["steps"].items()}


def _edit(path: Path, line: str) -> None:
    path.write_text(path.read_text() + f"\n{line}\n")


@pytest.mark.slow
def test_a_serving_edit_reruns_nothing_and_a_gate_edit_reruns_only_gates(tmp_path: Path) -> None:
    copy = tmp_path / "src"
    shutil.copytree(PACKAGE, copy / "recsys_tasks", ignore=shutil.ignore_patterns("__pycache__"))
    snapshot = write_snapshot(tmp_path / "snap", n_users=80, fmt="ml-1m", seed=3)
    home = tmp_path / "home"
    first = _run(copy, home, snapshot)
    assert not any(first.values())

    _edit(copy / "recsys_tasks" / "serving" / "recommend.py", "# a comment\nDEPLOYED_AT = 'tuesday'")
    assert all(_run(copy, home, snapshot).values())

    _edit(copy / "recsys_tasks" / "validation" / "report.py", "DEPLOYED_AT = 'wednesday'")
    after = _run(copy, home, snapshot)
    assert {step for step, skipped in after.items() if not skipped} == GATES
