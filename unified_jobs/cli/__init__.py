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
from unified_jobs._uri import mask_text
from unified_jobs.cli._app import find_app_spec, load_app
from unified_jobs.errors import UnifiedJobsError
from unified_jobs.jobs import Jobs

__all__ = ["cli", "hoist_group_options", "main"]


class Context:
    def __init__(self, app_spec: str | None, debug: bool) -> None:
        self.app_spec = app_spec
        self.debug = debug
        self._jobs: Jobs | None = None

    def jobs(self) -> Jobs:
        """The app; an app module that fails to import (other than ``ImportError``) is one
        line, its queue's passwords masked (``--debug`` shows the traceback)."""
        if self._jobs is None:
            spec = find_app_spec(self.app_spec)
            try:
                self._jobs = load_app(spec)
            except (UnifiedJobsError, ImportError):
                raise
            except Exception as exc:
                from unified_jobs.cli._faults import app_load_error

                raise app_load_error(spec, exc) from exc
        return self._jobs


#: The group's own options, which may also come after the subcommand (a flag, or one taking a value).
_GROUP_FLAGS = {"--debug"}
_GROUP_VALUED = {"--app", "-A", "--env", "-e"}


def hoist_group_options(args: list[str]) -> list[str]:
    """Move ``--app``/``-A``, ``--env``/``-e`` and ``--debug`` found after the subcommand to the
    front, so ``unified-jobs start --worker --app myapp:jobs`` means what it says. What follows
    ``--`` is left alone (it is passed on to Celery as it is); no subcommand uses these names."""
    front: list[str] = []
    rest: list[str] = []
    i = 0
    while i < len(args):
        arg = args[i]
        if arg == "--":
            rest += args[i:]
            break
        name = arg.split("=", 1)[0] if arg.startswith("--") else arg[:2]
        if arg in _GROUP_FLAGS:
            front.append(arg)
        elif arg in _GROUP_VALUED and i + 1 < len(args):
            front += args[i : i + 2]
            i += 1
        elif name in _GROUP_VALUED and arg != name:  # --app=x, -Ax
            front.append(arg)
        else:
            rest.append(arg)
        i += 1
    return front + rest


class _Group(click.Group):
    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        # Only the top-level call: a subgroup (``jobs``) gets what is left after this.
        if ctx.parent is None:
            ctx.meta["unified_jobs.passthrough"] = "--" in args
            args = hoist_group_options(args)
        return super().parse_args(ctx, args)


@click.group(
    cls=_Group,
    context_settings={"auto_envvar_prefix": "UNIFIED_JOBS", "help_option_names": ["-h", "--help"]},
)
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
    """unified_jobs: run and manage background jobs.

    --app, --env and --debug may come before or after the command. The config is
    <UNIFIED_JOBS_CONFIG_DIR or ./config>/<ENV>.yaml.
    """
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
        click.echo(f"error: {mask_text(str(exc))}", err=True)  # a URI in any library's message
        sys.exit(1)


from unified_jobs.cli import dashboard as _dashboard  # noqa: E402  (registers the command)
from unified_jobs.cli import doctor as _doctor  # noqa: E402  (registers the command)
from unified_jobs.cli import generate as _generate  # noqa: E402  (registers the command)
from unified_jobs.cli import jobs as _jobs  # noqa: E402  (registers the command group)
from unified_jobs.cli import jobs_files as _jobs_files  # noqa: E402  (registers its commands)
from unified_jobs.cli import jobs_store as _jobs_store  # noqa: E402  (registers its commands)
from unified_jobs.cli import schedules as _schedules  # noqa: E402  (registers its command)
from unified_jobs.cli import start as _start  # noqa: E402  (registers the command)

logging.getLogger(__name__).addHandler(logging.NullHandler())
del _doctor, _generate, _jobs, _jobs_files, _jobs_store, _start
del _dashboard, _schedules
