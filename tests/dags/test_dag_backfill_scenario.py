"""Issue 9's backfill scenario through `dag.test()` on the real ml-100k (SQLite catalog, the default local
Milvus): the CLI scenario of tests/release/test_backfill_scenario.py, driven as Airflow drives it.

One dated snapshot folder, `snapshots/<date>/ml-100k/`, passed as the `snapshot` param; each logical date
resolves its own snapshot. D1 (2026-11-01): the ratings up to the 70% timestamp quantile; D2 (2026-11-08):
all of them, with another title for Toy Story.

run D1 -> D1 live; run D2 -> D2 live; correct one title in D1's snapshot and re-run D1 -> D2 stays live with
D2's titles, promote is skipped and the live-model asset gets no event; `recsys rollback` -> D1's original
model live with D1's original titles (the corrected re-run was never served); re-run D2 -> D1 stays live (a
version served before is never served again by a run, only by a rollback), every step but smoke_test skips.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.conftest import real_release
from tests.dags.test_dag_e2e import DAG_FILE, Pipeline
from tests.release.test_backfill_scenario import (
    D1,
    D2,
    MARGIN,
    TITLES,
    _catalog_title,
    _cli,
    _retitle,
    _served_title,
    _snapshot,
)

RELEASE = "ml-100k"  # the release folder inside each date folder
# The CLI scenario's training (`--epochs 1 --embed-dim 16 --lr 0.03 --device cpu --skip-checksum`); its
# `--batch-size 1024` is no DAG param, so it comes from the environment (RECSYS_BATCH_SIZE).
CONF = {"epochs": 1, "embed_dim": 16, "lr": 0.03, "device": "cpu", "skip_checksum": True}
BATCH_SIZE = "1024"
DAY = {D1: 1, D2: 8}  # logical dates 2026-11-01 and 2026-11-08, 02:00 UTC (the nightly schedule)
SUCCESS = "success"


@pytest.fixture
def pipeline(airflow_db: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Pipeline:
    """The DAG (retries off: a failure is the finding), a dated ml-100k snapshot folder and a fresh home."""
    src = real_release("ml-100k")
    ratings = (src / "u.data").read_text().splitlines()
    stamps = np.array([int(line.split("\t")[3]) for line in ratings])
    cut = int(np.quantile(stamps, 0.7))
    dated = tmp_path / "snapshots"
    _snapshot(src, dated / D1 / RELEASE, [r for r, t in zip(ratings, stamps) if t <= cut], TITLES["d1"])
    _snapshot(src, dated / D2 / RELEASE, ratings, TITLES["d2"])

    spec = importlib.util.spec_from_file_location("movielens_recsys_backfill", DAG_FILE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    for task in module.dag.tasks:
        task.retries = 0

    monkeypatch.setenv("RECSYS_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("RECSYS_BATCH_SIZE", BATCH_SIZE)
    monkeypatch.setenv("RECSYS_QUALITY_MARGIN", MARGIN)  # why: see the CLI scenario's MARGIN
    for var in ("RECSYS_DB_URL", "RECSYS_MILVUS_URI", "RECSYS_SNAPSHOT", "RECSYS_TRAIN_QUEUE", "RECSYS_RUN_DATE",
                "RECSYS_FORCE", "RECSYS_KEEP_VERSIONS", "RECSYS_ALERT_EMAIL"):
        monkeypatch.delenv(var, raising=False)
    return Pipeline(module.dag, dated, tmp_path / "home")


def _run(pipeline: Pipeline, day: str) -> dict[str, Any]:
    """dag.test() at `day`'s logical date: the run, its task states, the model version it trained, the
    snapshot it resolved, and how many live-model asset events it added."""
    from recsys_tasks.artifacts import load_result

    events = pipeline.asset_events()
    run, states = pipeline.run(DAY[day], **CONF)
    return {"run": run, "states": states, "new_events": pipeline.asset_events() - events,
            "version": load_result(pipeline.xcom(run, "train")).manifest["model_version"],
            "snapshot": pipeline.xcom(run, "resolve_config")["snapshot"]}


def _registry(pipeline: Pipeline) -> dict[str, str]:
    """{model version: status} of every loaded collection; checks that the registry agrees with the alias."""
    st = pipeline.status()
    assert st["registry_agrees"], st
    return {c["model_version"]: c["status"] for c in st["collections"]}


def _all(state: str, **other: str) -> dict[str, str]:
    from recsys_tasks.pipeline import NAMES

    return {**{s: state for s in ("resolve_config", *NAMES)}, **other}


@pytest.mark.slow
def test_backfill_rerun_rollback_and_rerun_through_the_dag(pipeline: Pipeline) -> None:
    from recsys_tasks.stores.catalog import Catalog

    home = pipeline.home

    first = _run(pipeline, D1)
    v1 = first["version"]
    assert first["snapshot"] == str(pipeline.snapshots / D1 / RELEASE)
    assert first["states"] == _all(SUCCESS)
    assert first["new_events"] == 1
    assert _served_title(home) == (v1, TITLES["d1"])

    second = _run(pipeline, D2)
    v2 = second["version"]
    assert second["snapshot"] == str(pipeline.snapshots / D2 / RELEASE)
    assert v2 != v1 and second["states"] == _all(SUCCESS)
    assert second["new_events"] == 1
    assert _served_title(home) == (v2, TITLES["d2"])
    assert _registry(pipeline) == {v1: "retired", v2: "active"}

    # D1's snapshot gets one corrected title and D1's date is re-run (a backfill): a new model on older data.
    # promote holds it back, so the task is skipped, and the live-model asset hears nothing.
    d1_items = pipeline.snapshots / D1 / RELEASE / "u.item"
    _retitle(d1_items, d1_items, TITLES["d1 corrected"])
    rerun = _run(pipeline, D1)
    v1b = rerun["version"]
    assert rerun["snapshot"] == str(pipeline.snapshots / D1 / RELEASE)
    assert v1b not in (v1, v2)
    assert rerun["states"] == _all(SUCCESS, promote="skipped")
    assert pipeline.runs(rerun["run"].run_id)["promote"] == "done"  # it decided (held back); it did not skip
    assert rerun["new_events"] == 0, "no live-model event when the alias did not move"
    assert _served_title(home) == (v2, TITLES["d2"])  # D2 stays live with D2's titles
    assert _registry(pipeline) == {v1: "retired", v2: "active", v1b: "candidate"}
    assert "older data" in Catalog.from_settings(pipeline.settings).version(v1b)["reason"]
    assert _catalog_title(home, v1b) == TITLES["d1 corrected"]  # loaded under its own catalog, never served
    assert _catalog_title(home, v1) == TITLES["d1"]

    # rollback (the CLI, on the same home and stores): the most recently retired version, D1's model as it
    # was served, with its own titles. The corrected re-run was never served: it is no rollback target.
    back = _cli(home, "rollback")
    assert (back["model_version"], back["previous"], back["changed"]) == (v1, v2, True)
    assert _served_title(home) == (v1, TITLES["d1"])
    assert _registry(pipeline) == {v1: "active", v2: "retired", v1b: "candidate"}

    # re-run D2's date: D2 was served before, so no run serves it again (the rollback stands). Every step
    # finds its outputs and skips, but smoke_test (it always checks the stores as they are); promote skips.
    again = _run(pipeline, D2)
    assert again["snapshot"] == str(pipeline.snapshots / D2 / RELEASE)
    assert again["version"] == v2
    assert again["states"] == _all(SUCCESS, promote="skipped")
    recorded = pipeline.runs(again["run"].run_id)
    assert {s for s, status in recorded.items() if status != "skipped"} == {"smoke_test"}
    assert again["new_events"] == 0
    assert _served_title(home) == (v1, TITLES["d1"])
    assert _registry(pipeline) == {v1: "active", v2: "retired", v1b: "candidate"}
