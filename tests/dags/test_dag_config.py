"""The DAG's first task: params and dated snapshots become settings overrides, empty params leave the
environment's settings; no password reaches XCom. Only resolve_config runs here (the steps are
marked done)."""

from __future__ import annotations

import importlib.util
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import pytest

DAG_FILE = Path(__file__).resolve().parents[2] / "dags" / "movielens_recsys.py"
ONLY_RESOLVE = r"(?!resolve_config$).*"


@pytest.fixture
def module() -> Any:
    spec = importlib.util.spec_from_file_location("movielens_recsys_config", DAG_FILE)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _resolved(run: Any) -> dict[str, Any]:
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        return session.execute(select(XComModel.value).where(
            XComModel.run_id == run.run_id, XComModel.task_id == "resolve_config",
            XComModel.key == "return_value")).scalar_one()


@pytest.fixture
def dated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("RECSYS_HOME", str(tmp_path / "home"))
    for day in ("2026-11-01", "2026-11-08"):
        (tmp_path / "snapshots" / day).mkdir(parents=True)
        (tmp_path / "snapshots" / day / "ml-1m.zip").write_bytes(b"zip")
    return tmp_path / "snapshots"


def test_params_and_the_dated_snapshot_become_settings(module: Any, airflow_db: Path, dated: Path) -> None:
    run = module.dag.test(logical_date=datetime(2026, 11, 7, 2, tzinfo=UTC),
                          run_conf={"snapshot": str(dated), "epochs": 3, "device": "cpu", "promote": "no"},
                          mark_success_pattern=ONLY_RESOLVE)
    assert run.state == "success"
    assert _resolved(run) == {"snapshot": str(dated / "2026-11-01" / "ml-1m.zip"), "epochs": 3,
                              "device": "cpu", "run_date": "2026-11-07"}


def test_empty_params_leave_the_environment_in_force(module: Any, airflow_db: Path, dated: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """What the trigger form sends with its fields left empty: nulls (and an empty snapshot)."""
    monkeypatch.setenv("RECSYS_SNAPSHOT", str(dated))
    monkeypatch.setenv("RECSYS_DEVICE", "cpu")
    monkeypatch.setenv("RECSYS_SAMPLER", "torch")
    run = module.dag.test(logical_date=datetime(2026, 11, 9, 2, tzinfo=UTC), mark_success_pattern=ONLY_RESOLVE,
                          run_conf={"snapshot": "", "device": None, "sampler": None, "epochs": None})
    assert run.state == "success"
    assert _resolved(run) == {"snapshot": str(dated / "2026-11-08" / "ml-1m.zip"), "run_date": "2026-11-09"}


def test_a_run_without_logical_date_uses_its_trigger_time(module: Any, airflow_db: Path, dated: Path) -> None:
    run = module.dag.test(logical_date=None, run_conf={"snapshot": str(dated)}, mark_success_pattern=ONLY_RESOLVE)
    assert run.state == "success" and run.logical_date is None
    newest = max(d for d in ("2026-11-01", "2026-11-08") if date.fromisoformat(d) <= date.today())
    assert _resolved(run)["snapshot"] == str(dated / newest / "ml-1m.zip")


def test_no_snapshot_before_the_run_date_fails_the_first_task(module: Any, airflow_db: Path, dated: Path) -> None:
    run = module.dag.test(logical_date=datetime(2026, 10, 1, 2, tzinfo=UTC),
                          run_conf={"snapshot": str(dated)}, mark_success_pattern=ONLY_RESOLVE)
    states = {ti.task_id: ti.state for ti in run.get_task_instances()}
    assert states["resolve_config"] == "failed" and states["data.ingest"] == "upstream_failed"


def test_passwords_never_reach_xcom(module: Any, airflow_db: Path, dated: Path,
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIRFLOW_CONN_RECSYS_MYSQL", "mysql://recsys:s3cret-pw@db.example:3306/recsys")
    run = module.dag.test(logical_date=datetime(2026, 11, 9, 2, tzinfo=UTC),
                          run_conf={"snapshot": str(dated)}, mark_success_pattern=ONLY_RESOLVE)
    assert run.state == "success"
    assert "s3cret-pw" not in repr(_resolved(run)) and "db_url" not in _resolved(run)
