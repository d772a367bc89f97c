"""The SQL queue: the project's own kombu transport over PostgreSQL or SQLite, with leases.

Importing this package registers the kombu transport alias ``ujsql``, so a plain Celery app
can use it as its broker::

    import unified_jobs.adapters.sql
    app = Celery("x", broker="ujsql+postgresql://postgres@127.0.0.1:5432/test")
    app = Celery("x", broker="ujsql+sqlite:////tmp/jobs.db")

or, from a user's config: ``broker_url("Postgres", uri)`` and
``broker_transport_options = transport_options(lease_sec, poll_interval_sec)``.
"""

from __future__ import annotations

from kombu.transport import TRANSPORT_ALIASES

from unified_jobs.adapters.sql.options import TRANSPORT_SCHEME, SqlOptions, broker_url, transport_options
from unified_jobs.adapters.sql.schema import DEFAULT_TABLE_PREFIX, SCHEMA_VERSION, STATUSES
from unified_jobs.adapters.sql.store import ensure_schema, job_counts

__all__ = [
    "DEFAULT_TABLE_PREFIX",
    "SCHEMA_VERSION",
    "STATUSES",
    "TRANSPORT_SCHEME",
    "SqlOptions",
    "broker_url",
    "ensure_schema",
    "job_counts",
    "transport_options",
]

TRANSPORT_ALIASES.setdefault(TRANSPORT_SCHEME, "unified_jobs.adapters.sql.transport:Transport")
