"""The plugin's apps answer only users whom Airflow's auth manager lets at the DAG's runs: reading for
requests that read, editing for requests that write.

Airflow does not authenticate plugin FastAPI apps (a Starlette mount inherits none of the core API's
dependencies), so this middleware does what the core API's own dependencies do: the same user
resolution (`airflow.api_fastapi.core_api.security.get_user`: a bearer JWT from `POST /auth/token`,
else the UI session's cookie), then the configured auth manager's `is_authorized_dag` on the DAG's
runs with a method that follows the request's:

- GET, HEAD, OPTIONS, and `POST /recommendations` (a query with a body: it writes nothing) are reads:
  `method="GET"`, which viewers have.
- Every other request may write (`POST /users/{id}/ratings` records ratings in the catalog): the
  method Airflow's own API asks for the same kind of change to DAG runs (POST as for triggering a
  run, PUT for PUT/PATCH as for changing one, DELETE), which the Simple auth manager grants from the
  `User` role up and the FAB auth manager to roles that may create/edit DAG runs and edit the DAG
  (`User`, `Op`, `Admin`), never to `Viewer`.

No token → 401, a forged or expired token → 401/403, a user without the right → 403.
"""

from __future__ import annotations

from typing import Any

DAG_ID = "movielens_recsys"
READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
READ_ONLY_POSTS = frozenset({"/recommendations"})  # routes (in the app) that take a body but write nothing
WRITE_METHODS = {"POST": "POST", "PUT": "PUT", "PATCH": "PUT", "DELETE": "DELETE"}


def _route_path(scope: dict[str, Any]) -> str:
    """The path inside the mounted app (Starlette keeps the full path and puts the mount in root_path)."""
    path, root = scope["path"], scope.get("root_path", "")
    if root and path.startswith(root) and path[len(root):len(root) + 1] in ("/", ""):
        return path[len(root):] or "/"
    return path


def required_method(scope: dict[str, Any]) -> str:
    """The auth manager's method for this request: "GET" for a read, else the edit method for the write."""
    method = scope["method"].upper()
    if method in READ_METHODS or (method == "POST" and _route_path(scope) in READ_ONLY_POSTS):
        return "GET"
    return WRITE_METHODS.get(method, "PUT")  # any other verb counts as an edit


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
    """The request's Airflow user, if the auth manager lets them read the DAG's runs (a read request) or
    edit them (any other); else HTTPException 401/403."""
    from airflow.api_fastapi.app import get_auth_manager
    from airflow.api_fastapi.auth.managers.models.resource_details import DagAccessEntity, DagDetails
    from airflow.api_fastapi.core_api.security import bearer_scheme, get_user
    from fastapi import HTTPException

    user = await get_user(request, None, await bearer_scheme(request))
    method = required_method(request.scope)
    if not get_auth_manager().is_authorized_dag(method=method, access_entity=DagAccessEntity.RUN,
                                                details=DagDetails(id=DAG_ID), user=user):
        what = "read" if method == "GET" else "change"
        raise HTTPException(403, f"{user.get_name()} may not {what} the runs of {DAG_ID}")
    return user
