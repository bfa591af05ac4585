"""Airflow for the DAG tests: a throwaway AIRFLOW_HOME with a SQLite metadata DB, set before Airflow loads.

Airflow reads its configuration when first imported, so the environment is set at collection time.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DAG_FILE = REPO / "dags" / "movielens_recsys.py"

# One throwaway home per test session (tests/plugins/conftest.py shares it); never the user's ~/airflow.
if "RECSYS_TEST_AIRFLOW_HOME" not in os.environ:
    os.environ["RECSYS_TEST_AIRFLOW_HOME"] = tempfile.mkdtemp(prefix="recsys-airflow-")
os.environ.update({
    "AIRFLOW_HOME": os.environ["RECSYS_TEST_AIRFLOW_HOME"],
    "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
    "AIRFLOW__CORE__PLUGINS_FOLDER": str(REPO / "plugins"),
    "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
    "AIRFLOW__CORE__UNIT_TEST_MODE": "False",
    "AIRFLOW__LOGGING__LOGGING_LEVEL": "WARNING",
})


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
