"""Finding the user's ``Jobs`` app: ``--app``, ``$UNIFIED_JOBS_APP``, or pyproject.toml."""

from __future__ import annotations

import importlib
import os
import sys
from pathlib import Path
from typing import Any

from unified_jobs.errors import UnifiedJobsError
from unified_jobs.jobs import Jobs

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

__all__ = ["AppNotFoundError", "find_app_spec", "import_string", "load_app"]


class AppNotFoundError(UnifiedJobsError):
    """The CLI could not find or import the user's ``Jobs`` app."""


def find_app_spec(explicit: str | None, start: Path | None = None) -> str:
    """``--app`` (or ``$UNIFIED_JOBS_APP``, which click already folded in), else pyproject.toml."""
    if explicit:
        return explicit
    for folder in [start or Path.cwd(), *(start or Path.cwd()).parents]:
        pyproject = folder / "pyproject.toml"
        if pyproject.is_file():
            data = tomllib.loads(pyproject.read_text(encoding="utf-8"))
            spec = data.get("tool", {}).get("unified_jobs", {}).get("app")
            if isinstance(spec, str) and spec:
                return spec
            break
    raise AppNotFoundError(
        "no app given: pass --app module:attribute (e.g. --app myapp.jobs:jobs), set UNIFIED_JOBS_APP, "
        'or add [tool.unified_jobs] app = "myapp.jobs:jobs" to pyproject.toml'
    )


def import_string(spec: str, what: str = "--app") -> Any:
    """Import ``module:attribute`` (the attribute may be dotted), from the current folder too."""
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise AppNotFoundError(f"{what} {spec!r} must look like module:attribute, e.g. myapp.jobs:jobs")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and module_name.startswith(exc.name):
            raise AppNotFoundError(
                f"cannot import {module_name!r} (from {what} {spec}); run from your project's folder "
                "or fix the module path"
            ) from exc
        raise
    target: Any = module
    for part in attr.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            raise AppNotFoundError(f"{module_name} has no attribute {attr!r} (from {what} {spec})") from None
    return target


def load_app(spec: str, what: str = "--app") -> Jobs:
    """Import ``module:attribute``; the attribute is a ``Jobs`` or a callable returning one."""
    target = import_string(spec, what)
    if callable(target) and not isinstance(target, Jobs):
        target = target()
    if not isinstance(target, Jobs):
        raise AppNotFoundError(f"{what} {spec} is a {type(target).__name__}, not a unified_jobs.Jobs")
    return target
