"""Airflow puts the plugins folder (tests/conftest.py points it at plugins/) on sys.path when it is
first imported, as in every Airflow process: import it before the tests import plugins/recsys_airflow."""

import airflow  # noqa: F401

from tests.fixtures_stores import milvus_server, stores  # noqa: F401 - pytest fixtures (real engines)
