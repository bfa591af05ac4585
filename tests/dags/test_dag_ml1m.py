"""The whole DAG once on the real ml-1m (../shared/data), one epoch, with MariaDB as the catalog.

The production-like path: the catalog comes from the Airflow connection `recsys_mysql`, the vectors
go to Milvus Lite. Checks that every task succeeds (the quality gate judges on validation), that
after one epoch the served rule beats every baseline (transitions included) on validation and on the
real test split and DGL's latest-movie rule beats item-kNN from the same movie, and that the live alias
answers for a well-known movie. (This is also the project's test of model quality on real ml-1m.)
"""

from __future__ import annotations

import importlib.util
from datetime import UTC, datetime
from pathlib import Path

import pytest

from recsys_tasks.model.evaluate import BASELINES
from recsys_tasks.pipeline import NAMES as STEPS
from tests.conftest import real_release
from tests.fixtures_stores import mariadb_database

DAG_FILE = Path(__file__).resolve().parents[2] / "dags" / "movielens_recsys.py"
STAR_WARS = 260


@pytest.mark.slow
@pytest.mark.mysql
def test_whole_dag_on_real_ml1m_with_mariadb(airflow_db: Path, tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    ml1m = real_release("ml-1m")
    db_url, drop_database = mariadb_database()
    try:
        monkeypatch.setenv("AIRFLOW_CONN_RECSYS_MYSQL", db_url.replace("mysql+pymysql://", "mysql://"))
        monkeypatch.setenv("RECSYS_HOME", str(tmp_path / "home"))
        for var in ("RECSYS_DB_URL", "RECSYS_MILVUS_URI", "RECSYS_SNAPSHOT", "RECSYS_TRAIN_QUEUE"):
            monkeypatch.delenv(var, raising=False)
        spec = importlib.util.spec_from_file_location("movielens_recsys_ml1m", DAG_FILE)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        for task in module.dag.tasks:  # a failure is the finding; dag.test() would wait out retry delays
            task.retries = 0

        run = module.dag.test(logical_date=datetime(2026, 11, 28, 2, tzinfo=UTC), run_conf={
            "snapshot": str(ml1m), "skip_checksum": True, "epochs": 1, "device": "cpu"})
        states = {ti.task_id.rsplit(".", 1)[-1]: ti.state for ti in run.get_task_instances()}  # step names
        assert states == {"resolve_config": "success", **{s: "success" for s in STEPS}}

        from recsys_tasks.config import load_settings
        from recsys_tasks.release.promotion import status
        from recsys_tasks.serving.recommend import recommend_similar

        settings = load_settings(db_url=db_url)
        live = status(settings)["live"]
        assert live["status"] == "active"
        for split in ("val", "test"):  # selected on validation; test is what is reported
            m = live["metrics"][split]
            assert m["pinsage_history"]["users"] == 6040
            assert m["pinsage_history"]["hr@10"] > max(m[b]["hr@10"] for b in BASELINES), (split, m)
            assert m["pinsage_latest"]["hr@10"] > m["itemknn"]["hr@10"], (split, m)
        assert status(settings)["counts"]["movies"] == 3883

        similar = recommend_similar(settings, STAR_WARS, 10)
        titles = [item["title"] for item in similar["items"]]
        assert similar["model_version"] == live["model_version"] and len(titles) == 10
        assert STAR_WARS not in [item["movie_id"] for item in similar["items"]]
        # The sequels are what people who watched Star Wars watched next: one of them must be in the top 10.
        assert any(t.startswith(("Star Wars: Episode V", "Star Wars: Episode VI")) for t in titles), titles
    finally:
        drop_database()
