"""The ``unified-jobs`` command (also ``python -m unified_jobs``).

Every option also reads an environment variable: ``--app`` from ``UNIFIED_JOBS_APP``, ``--env``
from ``UNIFIED_JOBS_ENV``, and the others from ``UNIFIED_JOBS_<COMMAND>_<OPTION>``
(e.g. ``UNIFIED_JOBS_START_CONCURRENCY``).
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

import click

from unified_jobs import __version__
from unified_jobs.cli._app import find_app_spec, load_app
from unified_jobs.errors import UnifiedJobsError
from unified_jobs.jobs import Jobs

__all__ = ["cli", "main"]


class Context:
    def __init__(self, app_spec: str | None, debug: bool) -> None:
        self.app_spec = app_spec
        self.debug = debug
        self._jobs: Jobs | None = None

    def jobs(self) -> Jobs:
        if self._jobs is None:
            self._jobs = load_app(find_app_spec(self.app_spec))
        return self._jobs


@click.group(context_settings={"auto_envvar_prefix": "UNIFIED_JOBS", "help_option_names": ["-h", "--help"]})
@click.option(
    "--app",
    "-A",
    "app_spec",
    envvar="UNIFIED_JOBS_APP",
    metavar="MODULE:ATTR",
    help="The Jobs app, e.g. myapp.jobs:jobs [env UNIFIED_JOBS_APP; else [tool.unified_jobs] app].",
)
@click.option(
    "--env",
    "-e",
    "env",
    envvar="UNIFIED_JOBS_ENV",
    metavar="ENV",
    help="Config env: loads config/<ENV>.yaml [env UNIFIED_JOBS_ENV; default development].",
)
@click.option("--debug", is_flag=True, envvar="UNIFIED_JOBS_DEBUG", help="Show tracebacks on errors.")
@click.version_option(__version__, prog_name="unified-jobs")
@click.pass_context
def cli(ctx: click.Context, app_spec: str | None, env: str | None, debug: bool) -> None:
    """unified_jobs: run and manage background jobs."""
    if env:
        os.environ["UNIFIED_JOBS_ENV"] = env
    ctx.obj = Context(app_spec, debug)


def main(argv: list[str] | None = None) -> Any:
    """Console entry point: errors are one line and a non-zero exit, unless --debug."""
    args = sys.argv[1:] if argv is None else argv
    debug = "--debug" in args or bool(os.environ.get("UNIFIED_JOBS_DEBUG"))
    try:
        return cli.main(args=args, prog_name="unified-jobs", standalone_mode=False)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except click.exceptions.Abort:
        click.echo("Aborted.", err=True)
        sys.exit(1)
    except (UnifiedJobsError, ImportError, OSError) as exc:
        if debug:
            raise
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)


from unified_jobs.cli import doctor as _doctor  # noqa: E402  (registers the command)
from unified_jobs.cli import generate as _generate  # noqa: E402  (registers the command)
from unified_jobs.cli import jobs as _jobs  # noqa: E402  (registers the command group)
from unified_jobs.cli import jobs_files as _jobs_files  # noqa: E402  (registers its commands)
from unified_jobs.cli import jobs_store as _jobs_store  # noqa: E402  (registers its commands)
from unified_jobs.cli import start as _start  # noqa: E402  (registers the command)

logging.getLogger(__name__).addHandler(logging.NullHandler())
del _doctor, _generate, _jobs, _jobs_files, _jobs_store, _start
