"""Model quality over versions: rows from the SQLite registry, and the PNG drawn from them."""

from __future__ import annotations

import io
from datetime import date, datetime

import pytest
from PIL import Image
from sqlalchemy import update

from recsys_tasks.config import Settings
from recsys_tasks.release.registry import Registry
from recsys_tasks.serving.quality_plot import METHODS, quality_history, quality_plot_png
from recsys_tasks.stores.catalog import Catalog, dispose, model_versions

CREATED = {"v1": datetime(2026, 11, 1, 9), "v2": datetime(2026, 11, 8, 9), "v3": datetime(2026, 11, 15, 9)}


def _metrics(hr: float) -> dict:
    return {"pinsage_history": {"hr@10": hr, "ndcg@10": hr / 2}, "pinsage_latest": {"hr@10": hr * 0.9},
            "popularity": {"hr@10": 0.04}, "itemknn": {"hr@10": 0.05}}


@pytest.fixture
def catalog(settings: Settings):
    yield Catalog.from_settings(settings)
    dispose(settings.resolved_db_url)


def _registry(catalog: Catalog) -> None:
    """v1 retired (was active), v2 rejected, v3 active, v0 without metrics; registered newest first."""
    registry = Registry(catalog)
    for version, hr in (("v3", 0.12), ("v2", 0.08), ("v1", 0.10), ("v0", None)):
        registry.register(version, snapshot_id="s", catalog_id="c", data_ts=1, run_date=date(2026, 11, 1),
                          metrics={"val": _metrics(hr), "test": _metrics(hr)} if hr else {}, rule={"name": "history"})
    registry.reject("v2", "worse than live", "quality_gate")
    registry.activate("v1", "promote", "first")
    registry.activate("v3", "promote", "replaced by v3")
    with catalog.engine.begin() as conn:
        for version, created in CREATED.items():
            conn.execute(update(model_versions).where(model_versions.c.version == version)
                         .values(created_at=created))


def _png(data: bytes) -> Image.Image:
    assert data.startswith(b"\x89PNG\r\n\x1a\n")
    image = Image.open(io.BytesIO(data))
    image.verify()
    return Image.open(io.BytesIO(data))


def test_quality_history_oldest_first_with_values_and_statuses(settings: Settings, catalog: Catalog) -> None:
    _registry(catalog)
    history = quality_history(settings)
    assert [(r["version"], r["status"], r["created_at"]) for r in history] == [
        ("v1", "retired", CREATED["v1"]), ("v2", "rejected", CREATED["v2"]), ("v3", "active", CREATED["v3"])]
    assert history[1]["hr@10"] == {"pinsage_history": 0.08, "pinsage_latest": pytest.approx(0.072),
                                   "popularity": 0.04, "itemknn": 0.05, "transitions": None}
    assert [r["hr@10"]["pinsage_history"] for r in history] == [0.10, 0.08, 0.12]
    assert all(set(r["hr@10"]) == set(METHODS) for r in history)


def test_quality_plot_png_with_versions(settings: Settings, catalog: Catalog) -> None:
    _registry(catalog)
    image = _png(quality_plot_png(settings))
    assert image.format == "PNG" and image.size == (1000, 480)


def test_quality_plot_png_without_versions(settings: Settings, catalog: Catalog) -> None:
    assert quality_history(settings) == []
    image = _png(quality_plot_png(settings))
    assert image.format == "PNG" and image.size == (1000, 480)
