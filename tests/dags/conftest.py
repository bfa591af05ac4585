"""Airflow for the DAG tests: the session's throwaway AIRFLOW_HOME (tests/conftest.py), migrated once."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DAG_FILE = REPO / "dags" / "movielens_recsys.py"


@pytest.fixture(scope="session")
def airflow_db() -> Iterator[Path]:
    """A migrated SQLite metadata DB (once per session, ~5 s)."""
    from airflow.utils import db

    db.initdb()
    yield Path(os.environ["AIRFLOW_HOME"])


@pytest.fixture(scope="session")
def recsys_dag():
    """The DAG object from dags/movielens_recsys.py."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("movielens_recsys", DAG_FILE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.dag
