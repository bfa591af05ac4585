"""The plugin's apps answer only users whom Airflow's auth manager lets read the DAG's runs.

Airflow does not authenticate plugin FastAPI apps (a Starlette mount inherits none of the core API's
dependencies), so this middleware does what the core API's own dependencies do: the same user
resolution (`airflow.api_fastapi.core_api.security.get_user`: a bearer JWT from `POST /auth/token`,
else the UI session's cookie), then the configured auth manager's `is_authorized_dag` for GET on
the DAG's runs. Every route of both apps only reads, so viewers get everything and nothing more is
needed: no token → 401, a forged or expired token → 401/403, a user without read access → 403.
"""

from __future__ import annotations

from typing import Any

DAG_ID = "movielens_recsys"


class RequireDagReader:
    """Pure ASGI middleware (it also covers apps mounted inside the one it wraps)."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":  # lifespan events pass through
            await self.app(scope, receive, send)
            return
        from fastapi import HTTPException, Request
        from fastapi.responses import JSONResponse

        try:
            await authorize(Request(scope, receive))
        except HTTPException as exc:
            await JSONResponse({"detail": exc.detail}, exc.status_code, headers=exc.headers)(scope, receive, send)
            return
        await self.app(scope, receive, send)


async def authorize(request: Any) -> Any:
    """The request's Airflow user, if it may read the DAG's runs; else HTTPException 401/403."""
    from airflow.api_fastapi.app import get_auth_manager
    from airflow.api_fastapi.auth.managers.models.resource_details import DagAccessEntity, DagDetails
    from airflow.api_fastapi.core_api.security import bearer_scheme, get_user
    from fastapi import HTTPException

    user = await get_user(request, None, await bearer_scheme(request))
    if not get_auth_manager().is_authorized_dag(method="GET", access_entity=DagAccessEntity.RUN,
                                                details=DagDetails(id=DAG_ID), user=user):
        raise HTTPException(403, f"{user.get_name()} may not read the runs of {DAG_ID}")
    return user
