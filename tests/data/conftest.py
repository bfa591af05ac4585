"""Fixtures for the data tests: seeded synthetic releases (written once per session) and folder digests."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from recsys_tasks.artifacts import MANIFEST, dir_checksums, sha256_file
from recsys_tasks.data.synthetic import write_snapshot


@pytest.fixture(scope="session")
def synthetic(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Path]:
    """synthetic(fmt, n_users=60, seed=0) -> a release folder shared by the session: copy before changing it."""
    made: dict[tuple, Path] = {}

    def make(fmt: str = "ml-1m", n_users: int = 60, seed: int = 0) -> Path:
        key = (fmt, n_users, seed)
        if key not in made:
            made[key] = write_snapshot(tmp_path_factory.mktemp("synthetic") / fmt, n_users=n_users, fmt=fmt,
                                       seed=seed)
        return made[key]

    return make


@pytest.fixture
def copy_of(tmp_path: Path) -> Callable[[Path], Path]:
    """A private copy of a release folder, safe to corrupt."""
    def copy(folder: Path) -> Path:
        dst = tmp_path / "copies" / folder.name
        shutil.copytree(folder, dst)
        return dst

    return copy


def tree_digest(folder: Path) -> dict[str, str]:
    """Every file's sha256 under a folder, the manifest included (byte-identical means equal)."""
    return {**dir_checksums(folder), MANIFEST: sha256_file(folder / MANIFEST)}


@pytest.fixture
def digest() -> Callable[[Path], dict[str, str]]:
    return tree_digest
