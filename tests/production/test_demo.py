"""`make demo`'s script offline: the download of an unresolvable host fails at once (no retries, no
backoff) with a message naming RECSYS_SNAPSHOT and the local-copy option, and the terminal gets a
short summary (task states and the error), not Airflow's full output or its "No tasks to run" loop."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


@pytest.mark.slow
def test_demo_offline_fails_at_once_with_a_short_summary(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "RECSYS_"))}
    env.update({"PATH": f"{BIN}{os.pathsep}{env['PATH']}", "AIRFLOW_HOME": str(tmp_path / "airflow"),
                "RECSYS_HOME": str(tmp_path / "home"), "RECSYS_SNAPSHOT": "https://recsys-offline.invalid/ml-1m.zip",
                "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))})
    out = subprocess.run(["bash", str(REPO / "scripts" / "airflow-demo.sh")], env=env, cwd=REPO,
                         capture_output=True, text=True, timeout=900, check=False)
    shown = out.stdout + out.stderr
    assert out.returncode != 0, shown
    assert "cannot resolve host 'recsys-offline.invalid'" in shown
    assert "RECSYS_SNAPSHOT" in shown and "--snapshot /path/to/ml-1m --skip-checksum" in shown
    assert re.search(r"data\.ingest\s+failed", shown) and re.search(r"release\.promote\s+upstream_failed", shown)
    assert "No tasks to run" not in shown and "Traceback" not in shown
    assert len(shown.splitlines()) < 40, shown
    full_log = (tmp_path / "airflow" / "demo-run.log").read_text()
    assert full_log.count("starting task_id=data.ingest") == 1, "the download is not retried"
    assert "up_for_retry" not in full_log
