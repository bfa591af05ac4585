"""Airflow for the plugin tests: the same throwaway AIRFLOW_HOME as tests/dags (set before Airflow loads)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

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
