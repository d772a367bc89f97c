"""The web dashboard: queues, jobs, failed, scheduled and recurring jobs, workers, and the
actions on them, for every queue kind and the in-process modes; ``/metrics`` for Prometheus.

``create_app(jobs)`` is an ASGI app to mount in your own server; ``unified-jobs dashboard``
serves it. Needs the ``dashboard`` extra (Starlette, Jinja2). See docs/guides/dashboard.md.
"""

from __future__ import annotations

from unified_jobs.dashboard.app import create_app
from unified_jobs.dashboard.security import Credentials

__all__ = ["Credentials", "create_app"]
