"""The dashboard's web app (Starlette, Jinja2 templates, assets from the package).

Pages: queues (depth, oldest job, throughput chart), jobs by status with filters, one job,
failed jobs, scheduled and recurring jobs, workers. Actions (retry, discard, cancel, run now,
purge a queue, run a recurring job now) each go through a confirmation page whose form carries
the CSRF token; see ``security.py``. Store calls run in a thread, so a slow store never blocks
the event loop of the app the dashboard is mounted in.
"""

from __future__ import annotations

import contextlib
from datetime import datetime, timezone
from typing import Any
from urllib.parse import urlencode, urlsplit

from jinja2 import Environment, PackageLoader, pass_context, select_autoescape
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import PlainTextResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates

from unified_jobs import __version__
from unified_jobs.core.job import STATUSES, JobInfo
from unified_jobs.dashboard import views
from unified_jobs.dashboard.chart import throughput_svg
from unified_jobs.dashboard.security import Credentials, SecurityMiddleware, check_csrf
from unified_jobs.errors import MissingDependencyError
from unified_jobs.jobs import Jobs

__all__ = ["create_app"]

FLASH_COOKIE = "uj_flash"


def _age(value: datetime | None, now: datetime | None = None) -> str:
    """``3s``, ``4m 10s``, ``2h 5m``, ``3d 4h`` since ``value``; ``-`` for none."""
    if value is None:
        return "-"
    seconds = int(((now or datetime.now(timezone.utc)) - value).total_seconds())
    sign = "in " if seconds < 0 else ""
    seconds = abs(seconds)
    if seconds < 60:
        text = f"{seconds}s"
    elif seconds < 3600:
        text = f"{seconds // 60}m {seconds % 60}s"
    elif seconds < 86400:
        text = f"{seconds // 3600}h {seconds % 3600 // 60}m"
    else:
        text = f"{seconds // 86400}d {seconds % 86400 // 3600}h"
    return sign + text


def _when(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S UTC") if value is not None else "-"


def _path(request: Request, route: str, /, **params: Any) -> str:
    """The path of route ``name`` (with the mount's prefix): links stay relative to the host
    the browser used, behind any proxy."""
    return request.url_for(route, **params).path


@pass_context
def _url_for(context: Any, route: str, /, **params: Any) -> str:
    return _path(context["request"], route, **params)


def _templates() -> Jinja2Templates:
    env = Environment(
        loader=PackageLoader("unified_jobs.dashboard", "templates"),
        autoescape=select_autoescape(default=True, default_for_string=True),
    )
    env.filters["age"] = _age
    env.filters["when"] = _when
    env.globals["url_for"] = _url_for
    env.globals["version"] = __version__
    env.globals["statuses"] = STATUSES
    env.globals["actions"] = views.ACTIONS
    return Jinja2Templates(env=env)


class Dashboard:
    """The endpoints, bound to one ``Jobs`` app."""

    def __init__(self, jobs: Jobs, read_only: bool) -> None:
        self.jobs = jobs
        self.read_only = read_only
        self.templates = _templates()

    # -- helpers ------------------------------------------------------------------------------

    def actions_for(self, info: JobInfo) -> list[str]:
        return views.actions_for(info, self.jobs.adapter.can_run_now)

    def render(self, request: Request, name: str, status_code: int = 200, **context: Any) -> Response:
        flash = request.cookies.get(FLASH_COOKIE)
        problems = context.get("problems") or []
        response = self.templates.TemplateResponse(
            request,
            name,
            {
                "where": views.where(self.jobs),
                "mode": self.jobs.mode,
                "read_only": self.read_only,
                "csrf": request.state.csrf,
                "flash": flash,
                "now": datetime.now(timezone.utc),
                **context,
            },
            # A store that is down makes the page a 503 (for probes and scrapers), still shown.
            status_code=503 if status_code == 200 and any(p.down for p in problems) else status_code,
        )
        if flash is not None:
            response.delete_cookie(FLASH_COOKIE, path="/")
        return response

    def _back(self, request: Request, fallback: str) -> str:
        """Where to go after an action: the ``back`` field if it is a path of this site."""
        back = str(request.query_params.get("back") or "")
        parts = urlsplit(back)
        if back.startswith("/") and not back.startswith("//") and not parts.scheme and not parts.netloc:
            return back
        return fallback

    @staticmethod
    def _after(request: Request, action: str, job_id: str) -> str:
        """Where an action on a job returns by default: its page, or the failed jobs once it is
        discarded (its page is gone)."""
        return _path(request, "failed") if action == "discard" else _path(request, "job", job_id=job_id)

    def _done(self, url: str, message: str) -> Response:
        response = RedirectResponse(url, status_code=303)
        # Shown once by the next page; plain text (escaped when rendered), no secrets in it.
        response.set_cookie(FLASH_COOKIE, message[:300], path="/", httponly=True, samesite="strict")
        return response

    async def _checked_form(self, request: Request) -> tuple[dict[str, str], Response | None]:
        form = {k: str(v) for k, v in (await request.form()).items()}
        if self.read_only:
            return form, PlainTextResponse("this dashboard is read-only (dashboard.read_only)", 403)
        host = request.headers.get("host", "")
        why = check_csrf(request.headers, request.state, form.get("csrf"), host)
        if why is not None:
            return form, PlainTextResponse(why, status_code=403)
        return form, None

    # -- pages --------------------------------------------------------------------------------

    async def home(self, request: Request) -> Response:
        return RedirectResponse(_path(request, "queues"), status_code=307)

    async def queues(self, request: Request) -> Response:
        data = await run_in_threadpool(views.overview, self.jobs)
        return self.render(
            request,
            "queues.html",
            page="queues",
            data=data,
            chart=throughput_svg(data.throughput),
            problems=data.problems,
        )

    async def job_list(self, request: Request, title: str = "Jobs", page_name: str = "jobs") -> Response:
        params = {k: v for k, v in request.query_params.items()}
        if page_name == "failed":
            params["status"] = "failed"
        try:
            page = max(1, int(params.get("page", "1")))
        except ValueError:
            page = 1
        query = views.parse_query(params, page)
        data = await run_in_threadpool(views.listing, self.jobs, query)
        base = {k: v for k, v in params.items() if k != "page" and v}
        return self.render(
            request,
            "jobs.html",
            page=page_name,
            title=title,
            data=data,
            query=query,
            params=params,
            page_no=page,
            prev_url=f"?{urlencode({**base, 'page': page - 1})}" if page > 1 else None,
            next_url=f"?{urlencode({**base, 'page': page + 1})}" if data.page.more else None,
            args_text=views.args_text,
            actions_for=self.actions_for,
            here=str(request.url.path) + (f"?{request.url.query}" if request.url.query else ""),
            problems=data.problems,
        )

    async def failed(self, request: Request) -> Response:
        return await self.job_list(request, title="Failed jobs", page_name="failed")

    async def job(self, request: Request) -> Response:
        job_id = request.path_params["job_id"]
        info, problems = await run_in_threadpool(views.job, self.jobs, job_id)
        if info is None and not problems:
            return self.render(
                request,
                "missing.html",
                404,
                page="jobs",
                what=f"No job {job_id} in the job store (never enqueued here, discarded, or expired).",
            )
        return self.render(
            request,
            "job.html",
            page="jobs",
            info=info,
            args_text=views.args_text,
            job_actions=self.actions_for(info) if info is not None else [],
            problems=problems,
        )

    async def scheduled(self, request: Request) -> Response:
        data = await run_in_threadpool(views.scheduled, self.jobs)
        return self.render(
            request,
            "scheduled.html",
            page="scheduled",
            data=data,
            args_text=views.args_text,
            actions_for=self.actions_for,
            problems=data.problems,
        )

    async def workers(self, request: Request) -> Response:
        rows, problems = await run_in_threadpool(views.workers, self.jobs)
        return self.render(request, "workers.html", page="workers", rows=rows, problems=problems)

    # -- actions ------------------------------------------------------------------------------

    async def confirm(self, request: Request) -> Response:
        """GET: the question and a form that POSTs the action (with the CSRF token)."""
        action = request.path_params["action"]
        target = request.path_params["target"]
        if action in views.ACTIONS:
            label, question = views.ACTIONS[action]
            post = _path(request, "job_action", job_id=target, action=action)
            fallback = self._after(request, action, target)
            subject = f"job {target}"
        elif action == "purge":
            stats = await run_in_threadpool(views.overview, self.jobs)
            waiting = next((s for s in stats.queues if s.name == target), None)
            n = (waiting.queued + waiting.scheduled) if waiting else 0
            label, question = (
                "Purge",
                f"Delete the {n} job(s) waiting in queue {target}? They will never run.",
            )
            post = _path(request, "purge", queue=target)
            fallback = _path(request, "queues")
            subject = f"queue {target}"
        elif action == "run-schedule":
            label, question = "Run now", f"Enqueue one job of the recurring schedule {target} now?"
            post = _path(request, "run_schedule", schedule=target)
            fallback = _path(request, "scheduled")
            subject = f"schedule {target}"
        else:
            return PlainTextResponse(f"unknown action {action!r}", status_code=404)
        return self.render(
            request,
            "confirm.html",
            page="",
            label=label,
            question=question,
            subject=subject,
            post=f"{post}?{urlencode({'back': self._back(request, fallback)})}",
            cancel_url=self._back(request, fallback),
        )

    async def job_action(self, request: Request) -> Response:
        _, refused = await self._checked_form(request)
        if refused is not None:
            return refused
        job_id, action = request.path_params["job_id"], request.path_params["action"]
        if action not in views.ACTIONS:
            return PlainTextResponse(f"unknown action {action!r}", status_code=404)
        try:
            _, said = await run_in_threadpool(views.act, self.jobs, action, job_id)
        except Exception as exc:  # shown to the user, who may try again
            said = f"failed: {type(exc).__name__}: {views.mask_secrets(str(exc))}"
        back = self._back(request, self._after(request, action, job_id))
        return self._done(back, f"Job {job_id} {said}.")

    async def purge(self, request: Request) -> Response:
        _, refused = await self._checked_form(request)
        if refused is not None:
            return refused
        queue = request.path_params["queue"]
        try:
            n = await run_in_threadpool(views.purge_queue, self.jobs, queue)
            said = f"Purged {n} job(s) from queue {queue}."
        except Exception as exc:  # shown to the user
            said = f"Purging queue {queue} failed: {type(exc).__name__}: {views.mask_secrets(str(exc))}"
        return self._done(self._back(request, _path(request, "queues")), said)

    async def run_schedule(self, request: Request) -> Response:
        _, refused = await self._checked_form(request)
        if refused is not None:
            return refused
        name = request.path_params["schedule"]
        try:
            job_id = await run_in_threadpool(views.run_schedule_now, self.jobs, name)
            said = f"Enqueued job {job_id} of schedule {name}."
        except KeyError:
            said = f"There is no schedule {name}."
        except Exception as exc:  # shown to the user
            said = f"Running schedule {name} failed: {type(exc).__name__}: {views.mask_secrets(str(exc))}"
        return self._done(self._back(request, _path(request, "scheduled")), said)

    async def metrics(self, request: Request) -> Response:
        from unified_jobs.observability import render_metrics

        try:
            accept = request.headers.get("accept")
            body, content_type = await run_in_threadpool(render_metrics, self.jobs, accept)
        except MissingDependencyError as exc:
            return PlainTextResponse(str(exc), status_code=501)
        return Response(body, media_type=content_type)


def _count_from_now(jobs: Jobs) -> None:
    """Metrics (when prometheus-client is installed) count this process' enqueues from now
    on, not from the first scrape of /metrics."""
    from unified_jobs.observability import enable_metrics

    with contextlib.suppress(MissingDependencyError):  # /metrics says how to install it
        enable_metrics(jobs)


def create_app(
    jobs: Jobs,
    *,
    credentials: Credentials | None = None,
    read_only: bool | None = None,
) -> Starlette:
    """The dashboard of ``jobs`` as an ASGI app, to serve (``unified-jobs dashboard``) or to
    mount in your own (``Mount("/jobs", create_app(jobs))``).

    ``credentials`` default to the config's ``dashboard:`` section and the environment
    (``UNIFIED_JOBS_DASHBOARD_TOKEN``, ``..._USERNAME``/``..._PASSWORD``); with none, only
    clients on this machine are served. ``read_only`` (default ``dashboard.read_only``) hides
    and refuses the actions.
    """
    config = jobs.config.dashboard
    creds = credentials if credentials is not None else Credentials.from_config(config)
    dash = Dashboard(jobs, config.read_only if read_only is None else read_only)
    _count_from_now(jobs)
    routes = [
        Route("/", dash.home, name="home"),
        Route("/queues", dash.queues, name="queues"),
        Route("/jobs", dash.job_list, name="jobs"),
        Route("/jobs/{job_id}", dash.job, name="job"),
        Route("/jobs/{job_id}/{action}", dash.job_action, methods=["POST"], name="job_action"),
        Route("/failed", dash.failed, name="failed"),
        Route("/scheduled", dash.scheduled, name="scheduled"),
        Route("/workers", dash.workers, name="workers"),
        Route("/confirm/{action}/{target:path}", dash.confirm, name="confirm"),
        Route("/queues/{queue}/purge", dash.purge, methods=["POST"], name="purge"),
        Route("/schedules/{schedule}/run", dash.run_schedule, methods=["POST"], name="run_schedule"),
        Route("/metrics", dash.metrics, name="metrics"),
        Mount("/static", StaticFiles(packages=[("unified_jobs.dashboard", "static")]), name="static"),
    ]
    app = Starlette(routes=routes)
    app.add_middleware(SecurityMiddleware, credentials=creds)
    app.state.jobs = jobs
    return app
