"""``unified-jobs dashboard``: serve the web dashboard (and ``/metrics``) with uvicorn."""

from __future__ import annotations

import click

from unified_jobs.cli import Context, cli
from unified_jobs.errors import UnifiedJobsError

__all__ = ["dashboard"]


@cli.command()
@click.option(
    "--binding",
    "-b",
    metavar="ADDR",
    show_envvar=True,
    help="Address to listen on [default: dashboard.binding, 127.0.0.1]. Any address but a "
    "loopback one needs credentials (dashboard.token or username/password, or their env vars).",
)
@click.option(
    "--port",
    "-p",
    type=click.IntRange(0, 65535),
    show_envvar=True,
    help="Port [default: dashboard.port, 5160].",
)
@click.option("--read-only", is_flag=True, default=None, show_envvar=True, help="Show, but offer no actions.")
@click.pass_obj
def dashboard(obj: Context, binding: str | None, port: int | None, read_only: bool | None) -> None:
    """Serve the dashboard: queues, jobs, failed, scheduled and recurring jobs, workers, with
    retry, discard, cancel, run now and purge; Prometheus metrics at /metrics.

    Credentials: UNIFIED_JOBS_DASHBOARD_TOKEN (a bearer token, or ?token= once in a browser),
    or UNIFIED_JOBS_DASHBOARD_USERNAME and UNIFIED_JOBS_DASHBOARD_PASSWORD (basic auth), or the
    config's dashboard: section. In the in-process modes the dashboard shows this process'
    jobs only: mount unified_jobs.dashboard.create_app(jobs) in your app instead.
    """
    try:
        import uvicorn

        from unified_jobs.dashboard import Credentials, create_app
        from unified_jobs.dashboard.security import TOKEN_VAR, is_loopback
    except ImportError as exc:
        raise UnifiedJobsError(
            f"the dashboard needs its extra: pip install 'unified-jobs[dashboard]' ({exc})"
        ) from None
    jobs = obj.jobs()
    config = jobs.config.dashboard
    host = binding or config.binding
    credentials = Credentials.from_config(config)
    if not is_loopback(host) and not credentials.required:
        raise UnifiedJobsError(
            f"refusing to serve the dashboard on {host} without credentials: anyone who can reach it "
            f"could retry, cancel and purge jobs. Set {TOKEN_VAR} (16+ characters), or "
            "UNIFIED_JOBS_DASHBOARD_USERNAME and UNIFIED_JOBS_DASHBOARD_PASSWORD, or dashboard.token "
            "in the config; or bind 127.0.0.1"
        )
    if jobs.mode != "BackgroundQueue":
        click.echo(
            f"note: the app runs in mode {jobs.mode}: this dashboard shows the jobs of its own process "
            "only. Mount unified_jobs.dashboard.create_app(jobs) in your app to see its jobs.",
            err=True,
        )
    app = create_app(jobs, credentials=credentials, read_only=read_only)
    click.echo(f"dashboard on http://{host}:{port if port is not None else config.port}/", err=True)
    uvicorn.run(app, host=host, port=port if port is not None else config.port, log_level="warning")
