"""Serving test fixtures live in tests/fixtures_stores.py (shared with the store tests)."""

from tests.fixtures_stores import milvus_server, stores  # noqa: F401 - pytest fixtures
