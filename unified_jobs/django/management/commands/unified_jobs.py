"""``manage.py unified_jobs worker|scheduler|doctor|jobs|dashboard|generate ...``: the
``unified-jobs`` command line on the project's app (``settings.UNIFIED_JOBS``), with the same
options. ``worker`` is ``start --worker`` and ``scheduler`` is ``start --scheduler``; anything
after ``--`` goes to Celery, as with ``unified-jobs``."""

from __future__ import annotations

import argparse
from typing import Any

from django.core.management.base import BaseCommand, CommandError

#: Django's own options, which manage.py has already applied (``--settings``, ...).
_DJANGO_VALUED = {"--settings", "--pythonpath", "--verbosity", "-v"}
_DJANGO_FLAGS = {"--traceback", "--no-color", "--force-color", "--skip-checks"}
#: Shorthands of this command for those of ``unified-jobs``.
_ALIASES = {"worker": ["start", "--worker"], "scheduler": ["start", "--scheduler"]}
#: The app ``unified-jobs`` is given: the project's, built from the settings.
APP_SPEC = "unified_jobs.django:get_jobs"


def unified_jobs_argv(args: list[str]) -> list[str]:
    """``manage.py unified_jobs ARGS`` as the arguments of ``unified-jobs``."""
    kept: list[str] = []
    i = 0
    while i < len(args):
        arg = args[i]
        if arg == "--":
            kept += args[i:]
            break
        name = arg.split("=", 1)[0]
        if name in _DJANGO_FLAGS:
            pass
        elif name in _DJANGO_VALUED:
            i += 0 if "=" in arg else 1
        else:
            kept.append(arg)
        i += 1
    if kept and kept[0] in _ALIASES:
        kept = [*_ALIASES[kept[0]], *kept[1:]]
    return ["--app", APP_SPEC, *kept]


class Command(BaseCommand):
    help = (
        "Run and manage background jobs: worker (start --worker), scheduler (start --scheduler), "
        "doctor, jobs, dashboard, generate; the options of `unified-jobs` (see `manage.py "
        "unified_jobs jobs --help`)."
    )
    # The worker runs Django's checks itself (the app is built); a long-running command
    # should not need the checks of every app.
    requires_system_checks: Any = []

    def run_from_argv(self, argv: list[str]) -> None:
        # Everything after `manage.py unified_jobs` is the command line's; its errors are one
        # line and its exit status is manage.py's (doctor's 0-3, for probes).
        from unified_jobs.cli import main

        main(unified_jobs_argv(_or_help(argv[2:])))

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("args", nargs=argparse.REMAINDER, help="a unified-jobs command and its options")

    def handle(self, *args: str, **options: Any) -> None:  # call_command("unified_jobs", "jobs", ...)
        self._run(list(args))

    def _run(self, args: list[str]) -> None:
        from unified_jobs.cli import main

        try:
            main(unified_jobs_argv(_or_help(args)))
        except SystemExit as exc:
            if exc.code not in (0, None):
                code = exc.code if isinstance(exc.code, int) else 1
                raise CommandError(
                    f"unified_jobs {' '.join(args)} exited with {code}", returncode=code
                ) from None


def _or_help(args: list[str]) -> list[str]:
    return ["--help"] if not args or args[0] in ("-h", "--help", "help") else args
