"""The web app of the browser test's in-process kind, served by ``unified-jobs start -s``: the
dashboard mounted at /dashboard in the app's own Starlette app, as a user would, plus two
test-only endpoints (POST /seed makes the jobs of ``dashboard_app.seed``; GET /status/ID)."""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Mount, Route

from tests.browser.dashboard_app import jobs, seed
from unified_jobs.dashboard import create_app

assert jobs is not None, "set UJ_DASH_CONFIG"


async def seed_jobs(request: Request) -> JSONResponse:
    return JSONResponse(seed(jobs))


async def status(request: Request) -> JSONResponse:
    return JSONResponse({"status": jobs.status(request.path_params["job_id"])})


app = Starlette(
    routes=[
        Route("/seed", seed_jobs, methods=["POST"]),
        Route("/status/{job_id}", status),
        Mount("/dashboard", create_app(jobs)),
    ]
)
