"""Airflow 3 plugin: the recommendations API under /recsys and a "Recommender" view in the UI.

- /recsys/...     recsys_tasks.serving.api (health, similar movies, history recommendations, title search)
- /recsys-ui/     a small page, shown in the Airflow UI's navigation (Browse → Recommender): the live
                  model version and its metrics, the last runs with their gate results, the training
                  curve, test HR@10 over the model versions, and a movie search that shows
                  recommendations (it calls /recsys with fetch()).

Both apps answer only authenticated Airflow users: reads to those who may read the DAG's runs
(viewers included), writes (recording ratings) only to those who may edit them; a bearer JWT from
`POST /auth/token` or the UI session (`recsys_airflow.auth`). The stores are the
ones the tasks use: the Airflow connections `recsys_mysql` / `recsys_milvus` first, then `RECSYS_*`
(`recsys_airflow.stores`), resolved at the first request and re-read every few seconds (a connection
added while the API server runs takes effect without a restart). Heavy imports (the recsys stores,
pymilvus, numpy) happen when a request arrives, never when the scheduler or
a worker loads plugins. Airflow only mounts these apps in its API server.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, ClassVar

import anyio.to_thread
from airflow.plugins_manager import AirflowPlugin
from fastapi import FastAPI, HTTPException, Query
from fastapi.responses import FileResponse, Response
from recsys_airflow.auth import RequireDagReader
from recsys_airflow.stores import LiveStores

from recsys_tasks.pipeline import GATES

PAGE = Path(__file__).resolve().parent / "recsys_ui" / "index.html"


def _serving_app(settings: Any) -> Any:
    from recsys_tasks.serving.api import create_app

    return create_app(settings)


@asynccontextmanager
async def _stores(app: FastAPI) -> AsyncIterator[None]:
    """Each start of the API server (Airflow runs mounted apps' lifespans) resolves the stores anew, lazily."""
    app.state.stores = LiveStores(build=_serving_app)
    yield


def _settings():  # -> recsys_tasks.config.Settings: the view's, the API's own (one resolution for both)
    return api_app.state.stores.settings()


async def _serving_api(scope: dict[str, Any], receive: Any, send: Any) -> None:
    stores = api_app.state.stores
    # resolving may read the metadata DB and build the app (imports): off the event loop, when it is due
    serving = stores.fresh() or await anyio.to_thread.run_sync(stores.built)
    await serving(scope, receive, send)


api_app = FastAPI(title="movielens-recsys API (Airflow plugin)", lifespan=_stores, docs_url=None, redoc_url=None,
                  openapi_url=None)
api_app.mount("/", _serving_api)
ui_app = FastAPI(title="movielens-recsys view", docs_url=None, redoc_url=None, openapi_url=None)
for _app in (api_app, ui_app):
    _app.add_middleware(RequireDagReader)


@ui_app.get("/", include_in_schema=False)
def page() -> FileResponse:
    return FileResponse(PAGE, media_type="text/html")


@ui_app.get("/status.json")
def live_status(runs: int = Query(10, ge=1, le=100)) -> dict[str, Any]:
    """The live model (recsys status), the registry, and the last runs with their gate results."""
    from sqlalchemy import func, select

    from recsys_tasks.release.promotion import status
    from recsys_tasks.stores.catalog import Catalog
    from recsys_tasks.stores.catalog import runs as runs_table

    settings = _settings()
    catalog = Catalog.from_settings(settings)
    recent = (select(runs_table.c.run_id, func.max(runs_table.c.finished_at).label("finished"))
              .group_by(runs_table.c.run_id).order_by(func.max(runs_table.c.finished_at).desc()).limit(runs))
    with catalog.engine.connect() as conn:
        order = [(r.run_id, r.finished) for r in conn.execute(recent)]
        rows = conn.execute(select(runs_table).where(runs_table.c.run_id.in_([r for r, _ in order]))).all()
    steps: dict[str, dict[str, str]] = {run_id: {} for run_id, _ in order}
    for row in rows:
        steps[row.run_id][row.step] = row.status
    return {
        **status(settings),
        "versions": catalog.versions()[:20],
        "gates": list(GATES),
        "runs": [{"run_id": run_id, "finished_at": finished, "steps": steps[run_id]} for run_id, finished in order],
    }


@ui_app.get("/curve.png", include_in_schema=False)
def training_curve() -> FileResponse:
    """curve.png of the live model's train folder (model_version = "v" + the train step's key[:12])."""
    from recsys_tasks.release.promotion import status

    settings = _settings()
    live = status(settings)["live"]
    if not live:
        raise HTTPException(404, "no live model")
    curves = sorted((settings.artifacts / "train").glob(f"{live['model_version'][1:]}*/curve.png"))
    if not curves:
        raise HTTPException(404, f"no training curve for {live['model_version']}")
    return FileResponse(curves[0], media_type="image/png")


@ui_app.get("/quality.png", include_in_schema=False)
def quality_plot() -> Response:
    """Test HR@10 per method over the registered model versions (drawn per request, never cached)."""
    from recsys_tasks.serving.quality_plot import quality_plot_png

    return Response(quality_plot_png(_settings()), media_type="image/png",
                    headers={"Cache-Control": "no-store"})


class RecsysPlugin(AirflowPlugin):
    name = "recsys"
    fastapi_apps: ClassVar[list[dict[str, Any]]] = [
        {"app": api_app, "url_prefix": "/recsys", "name": "recsys API"},
        {"app": ui_app, "url_prefix": "/recsys-ui", "name": "recsys view"},
    ]
    external_views: ClassVar[list[dict[str, Any]]] = [
        # href without a leading slash: resolved against the UI's <base href>, so a base_url sub-path works
        {"name": "Recommender", "href": "recsys-ui/", "url_route": "recsys", "destination": "nav",
         "category": "browse"},
    ]
