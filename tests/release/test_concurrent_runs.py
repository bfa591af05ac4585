"""Two `recsys run` processes at once on one RECSYS_HOME, as two triggers or a parallel backfill start them.

Both must finish; a step two runs need is built by one of them while the other waits for its lock and
skips it; the end state is consistent (the alias, the registry and the catalog agree, and the model with
the newest data is live). The stores are the multi-process ones: a `milvus-lite server`, and SQLite (file
locks) or MariaDB (GET_LOCK advisory locks).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from recsys_tasks.artifacts import load_result
from recsys_tasks.config import Settings
from recsys_tasks.data.synthetic import write_snapshot
from recsys_tasks.pipeline import NAMES
from recsys_tasks.release.promotion import status
from tests.fixtures_stores import make_settings, server_database

TRAIN = ["--epochs", "2", "--embed-dim", "16", "--batch-size", "128", "--device", "cpu", "--skip-checksum"]
ALWAYS_RUN = {"smoke_test"}  # it checks the stores as they are now, in every run

pytestmark = pytest.mark.slow


def _start(settings: Settings, snapshot: Path, day: str) -> subprocess.Popen:
    env = {**os.environ, "RECSYS_HOME": str(settings.home), "RECSYS_MILVUS_URI": settings.milvus_uri,
           "RECSYS_DB_URL": settings.resolved_db_url, "RECSYS_LR": "0.02"}
    return subprocess.Popen([sys.executable, "-m", "recsys_tasks", "run", "--snapshot", str(snapshot),
                             "--run-date", day, "--json", *TRAIN], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _finish(proc: subprocess.Popen) -> dict:
    out, err = proc.communicate(timeout=1800)
    assert proc.returncode == 0, err[-3000:]
    return json.loads(out.splitlines()[-1])


def _two_runs(tmp_path: Path, milvus_server: str, db: str,
              runs: list[tuple[Path, str]]) -> tuple[Settings, list[dict], dict]:
    """Start both runs at once, wait for both; the settings, their JSON results and the end state."""
    uri, drop = server_database(milvus_server)
    settings, cleanups = make_settings(tmp_path / "home", "lite", db, None)
    settings = settings.replace(milvus_uri=uri)
    try:
        procs = [_start(settings, snapshot, day) for snapshot, day in runs]
        results = [_finish(p) for p in procs]
        st = status(settings)
        return settings, results, {"agrees": st["registry_agrees"], "live": st["live"] and st["live"]["model_version"]}
    finally:
        drop()
        for cleanup in cleanups:
            cleanup()


def test_two_runs_of_one_snapshot_build_each_step_once(tmp_path: Path, milvus_server: str) -> None:
    snapshot = write_snapshot(tmp_path / "snap", n_users=120, fmt="ml-1m", seed=7)
    settings, runs, state = _two_runs(tmp_path, milvus_server, "sqlite", [(snapshot, "2026-11-01")] * 2)
    for step in NAMES:
        built = [not r["steps"][step]["skipped"] for r in runs]
        if step in ALWAYS_RUN:
            assert built == [True, True]
        else:
            assert sorted(built) == [False, True], f"{step} built {sum(built)} times"
        assert runs[0]["steps"][step]["path"] == runs[1]["steps"][step]["path"]
        assert len([p for p in (settings.artifacts / step).iterdir() if not p.name.startswith(".")]) == 1
    assert runs[0]["model_version"] == runs[1]["model_version"]
    assert state == {"agrees": True, "live": runs[0]["model_version"]}
    assert [r["promotion"]["moved"] for r in runs].count(True) == 1


@pytest.mark.mysql
def test_two_runs_of_different_snapshots_end_with_the_newest_data_live(tmp_path: Path, milvus_server: str) -> None:
    older = write_snapshot(tmp_path / "older", n_users=120, fmt="ml-1m", seed=7)
    newer = write_snapshot(tmp_path / "newer", n_users=150, fmt="ml-1m", seed=8)
    _, runs, state = _two_runs(tmp_path, milvus_server, "mariadb", [(older, "2026-11-01"), (newer, "2026-11-08")])
    assert runs[0]["model_version"] != runs[1]["model_version"]
    recency = [(load_result(r["steps"]["preprocess"]["path"]).manifest["newest_rating_ts"], day)
               for r, day in zip(runs, ("2026-11-01", "2026-11-08"))]
    newest = runs[recency.index(max(recency))]
    assert state == {"agrees": True, "live": newest["model_version"]}  # whichever promoted first
