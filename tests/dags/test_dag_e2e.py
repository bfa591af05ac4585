"""The whole DAG with `dag.test()` on small synthetic snapshots, real engines (Milvus Lite, SQLite).

One module-wide RECSYS_HOME, in order: a first run promotes a model (and announces the live-model
asset); a second run changes nothing (promote skips, no asset event); a corrupted snapshot (picked
by date, as a backfill would) fails at validate_raw; a model forced to be bad is rejected by the
quality gate. The live model survives both failures, and each failure sends one alert e-mail (to a
real SMTP server on loopback) naming the run, the step, the rule and the report.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from recsys_tasks.pipeline import BY_NAME
from recsys_tasks.pipeline import NAMES as STEPS
from tests.production.smtp_sink import SmtpSink, body

DAG_FILE = Path(__file__).resolve().parents[2] / "dags" / "movielens_recsys.py"
N_USERS = 120
# Enough to beat the item-kNN baseline on this synthetic release in ~25 s of CPU training.
CONF = {"epochs": 2, "embed_dim": 16, "lr": 0.02, "device": "cpu", "skip_checksum": True}
BATCH_SIZE = "128"


def tid(step: str) -> str:
    """The Airflow task id of a pipeline step: in the task group of its stage."""
    return f"{BY_NAME[step].stage}.{step}" if step in BY_NAME else step


def _day(d: int) -> datetime:
    return datetime(2026, 11, d, 2, 0, tzinfo=UTC)


class Pipeline:
    """The DAG, a dated snapshot folder and the settings every task of these runs uses."""

    def __init__(self, dag: Any, snapshots: Path, home: Path) -> None:
        from recsys_tasks.config import load_settings

        self.dag, self.snapshots, self.home = dag, snapshots, home
        self.settings = load_settings(home=home)
        self.smtp: SmtpSink | None = None

    def run(self, day: int, **conf: Any) -> tuple[Any, dict[str, str]]:
        """Run the DAG for a date; the task states by step name (and resolve_config)."""
        run = self.dag.test(logical_date=_day(day), run_conf={**CONF, "snapshot": str(self.snapshots), **conf})
        return run, {ti.task_id.rsplit(".", 1)[-1]: ti.state for ti in run.get_task_instances()}

    def asset_events(self) -> int:
        from airflow.models.asset import AssetEvent, AssetModel
        from airflow.utils.session import create_session
        from sqlalchemy import func, select

        with create_session() as session:
            return session.scalar(select(func.count()).select_from(AssetEvent).join(
                AssetModel, AssetEvent.asset_id == AssetModel.id).where(AssetModel.uri == "recsys://milvus/movies"))

    def xcom(self, run: Any, task_id: str) -> Any:
        from airflow.models.xcom import XComModel
        from airflow.utils.session import create_session
        from sqlalchemy import select

        with create_session() as session:  # values are stored as JSON: a path string, the config dict
            return session.execute(select(XComModel.value).where(
                XComModel.run_id == run.run_id, XComModel.task_id == tid(task_id),
                XComModel.key == "return_value")).scalar_one()

    def status(self) -> dict[str, Any]:
        from recsys_tasks.release.promotion import status

        return status(self.settings)

    def runs(self, run_id: str) -> dict[str, str]:
        from sqlalchemy import select

        from recsys_tasks.stores.catalog import Catalog, runs

        with Catalog.from_settings(self.settings).engine.connect() as conn:
            return {r.step: r.status for r in conn.execute(select(runs).where(runs.c.run_id == run_id))}


@pytest.fixture(scope="module")
def pipeline(airflow_db: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pipeline]:
    import importlib.util

    from recsys_tasks.data.synthetic import write_snapshot

    spec = importlib.util.spec_from_file_location("movielens_recsys_e2e", DAG_FILE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    for task in module.dag.tasks:  # a failure here is the finding; dag.test() would wait out retry delays
        task.retries = 0

    root = tmp_path_factory.mktemp("e2e")
    snapshots = root / "snapshots"
    write_snapshot(snapshots / "2026-11-01", n_users=N_USERS, fmt="ml-1m", seed=7)
    with pytest.MonkeyPatch.context() as mp, SmtpSink() as smtp:
        mp.setenv("RECSYS_HOME", str(root / "home"))
        mp.setenv("RECSYS_BATCH_SIZE", BATCH_SIZE)
        mp.setenv("RECSYS_ALERT_EMAIL", "ml-oncall@test.local")
        mp.setenv("AIRFLOW_CONN_RECSYS_SMTP", smtp.airflow_connection())
        for var in ("RECSYS_DB_URL", "RECSYS_MILVUS_URI", "RECSYS_SNAPSHOT", "RECSYS_TRAIN_QUEUE"):
            mp.delenv(var, raising=False)
        pipeline = Pipeline(module.dag, snapshots, root / "home")
        pipeline.smtp = smtp
        yield pipeline


@pytest.fixture(scope="module")
def first(pipeline: Pipeline) -> dict[str, Any]:
    events = pipeline.asset_events()
    run, states = pipeline.run(2)
    return {"run": run, "states": states, "status": pipeline.status(), "new_events": pipeline.asset_events() - events}


def test_first_run_succeeds_and_promotes(pipeline: Pipeline, first: dict[str, Any]) -> None:
    import pyarrow.parquet as pq
    from fastapi.testclient import TestClient

    from recsys_tasks.artifacts import load_result
    from recsys_tasks.serving.api import create_app

    assert first["states"] == {"resolve_config": "success", **{s: "success" for s in STEPS}}
    assert pipeline.xcom(first["run"], "resolve_config")["snapshot"] == str(pipeline.snapshots / "2026-11-01")
    trained = load_result(pipeline.xcom(first["run"], "train"))
    live = first["status"]["live"]
    assert live is not None and live["model_version"] == trained.manifest["model_version"]
    assert live["status"] == "active"
    assert pipeline.runs(first["run"].run_id) == {s: "done" for s in STEPS}
    assert first["new_events"] == 1, "the switch to a new live model is announced once"
    assert pipeline.smtp.messages == [], "a successful run sends no alert"

    title = pq.read_table(load_result(pipeline.xcom(first["run"], "ingest")).out("movies.parquet"),
                          columns=["title"]).column("title")[0].as_py()
    with TestClient(create_app(pipeline.settings)) as api:
        health = api.get("/health").json()
        assert health["status"] == "ok" and health["model_version"] == live["model_version"]
        movie = api.get("/movies", params={"query": title, "limit": 1}).json()
        assert movie and movie[0]["title"] == title
        similar = api.get(f"/movies/{movie[0]['movie_id']}/similar", params={"k": 5})
        assert similar.status_code == 200, similar.text
        body = similar.json()
        assert body["model_version"] == live["model_version"] and len(body["items"]) == 5


def _tree(folder: Path) -> dict[str, float]:
    return {str(p.relative_to(folder)): p.stat().st_mtime for p in folder.rglob("*") if p.is_file()}


def test_second_run_skips_every_step_and_changes_nothing(pipeline: Pipeline, first: dict[str, Any]) -> None:
    artifacts = pipeline.settings.artifacts
    before = {k: v for k, v in _tree(artifacts).items() if not k.startswith("smoke_test/")}
    events = pipeline.asset_events()
    run, states = pipeline.run(3)  # a later date, the same newest snapshot: nothing new to do
    assert states == {**{s: "success" for s in ("resolve_config", *STEPS)}, "promote": "skipped"}
    assert pipeline.asset_events() == events, "no live-model event when the alias did not move"
    recorded = pipeline.runs(run.run_id)
    # smoke_test always re-checks the live stores (it only reads them); every other step is a skip
    assert {s: v for s, v in recorded.items() if s != "smoke_test"} == {
        s: "skipped" for s in STEPS if s != "smoke_test"}
    after = {k: v for k, v in _tree(artifacts).items() if not k.startswith("smoke_test/")}
    assert after == before
    now = pipeline.status()
    assert now["live"] == first["status"]["live"] and now["collections"] == first["status"]["collections"]


def _corrupt_copy(src: Path, dst: Path) -> None:
    shutil.copytree(src, dst)
    ratings = dst / "ratings.dat"
    lines = ratings.read_text(encoding="latin-1").splitlines()
    user, movie, _, stamp = lines[3].split("::")
    lines[3] = f"{user}::{movie}::9::{stamp}"  # parses, but a rating of 9 breaks the 1..5 rule
    ratings.write_text("\n".join(lines) + "\n", encoding="latin-1")


def test_corrupted_snapshot_fails_at_validate_raw_and_keeps_the_live_model(
        pipeline: Pipeline, first: dict[str, Any]) -> None:
    _corrupt_copy(pipeline.snapshots / "2026-11-01", pipeline.snapshots / "2026-11-15")
    run, states = pipeline.run(16)  # picks the newest snapshot at or before Nov 16: the corrupted one
    assert pipeline.xcom(run, "resolve_config")["snapshot"] == str(pipeline.snapshots / "2026-11-15")
    assert states["ingest"] == "success" and states["validate_raw"] == "failed"
    assert all(states[s] == "upstream_failed" for s in STEPS[STEPS.index("validate_raw") + 1:])
    assert pipeline.runs(run.run_id)["validate_raw"] == "failed"
    assert pipeline.status()["live"] == first["status"]["live"]
    shutil.rmtree(pipeline.snapshots / "2026-11-15")

    [alert] = pipeline.smtp.wait_for(1)
    assert alert["To"] == "ml-oncall@test.local"
    assert run.run_id in alert["Subject"] and "validate_raw failed (rule rating_in_allowed_set)" in alert["Subject"]
    [report] = (pipeline.settings.artifacts / "validate_raw").glob("*.failed/report.json")
    assert run.run_id in body(alert) and str(report) in body(alert)


def test_bad_model_is_rejected_by_the_quality_gate(pipeline: Pipeline, first: dict[str, Any],
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    # A 4-dimensional embedding at a learning rate too small to move it: an untrained model.
    monkeypatch.setenv("RECSYS_QUALITY_MARGIN", "0")
    run, states = pipeline.run(4, epochs=1, embed_dim=4, lr=1e-7)
    assert states["train"] == "success" and states["evaluate"] == "success"
    assert states["quality_gate"] == "failed"
    assert all(states[s] == "upstream_failed" for s in STEPS[STEPS.index("quality_gate") + 1:])
    from recsys_tasks.artifacts import load_result

    rejected = load_result(pipeline.xcom(run, "train")).manifest["model_version"]
    assert rejected != first["status"]["live"]["model_version"]
    now = pipeline.status()
    assert now["live"] == first["status"]["live"]
    from recsys_tasks.stores.catalog import Catalog

    assert Catalog.from_settings(pipeline.settings).version(rejected)["status"] == "rejected"

    alert = pipeline.smtp.wait_for(2)[1]
    rule = json.loads(next((pipeline.settings.artifacts / "quality_gate").glob("*.failed/decision.json"))
                      .read_text())["rule"]
    assert run.run_id in alert["Subject"] and f"quality_gate failed (rule {rule})" in alert["Subject"]
    [report] = (pipeline.settings.artifacts / "quality_gate").glob("*.failed/decision.json")
    assert str(report) in body(alert)
