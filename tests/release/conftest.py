"""Store fixtures (real Milvus Lite, a `milvus-lite server`, SQLite, MariaDB) from tests/fixtures_stores.py."""

from tests.fixtures_stores import milvus_server, stores  # noqa: F401 - pytest fixtures
