"""The SQL transport's URL scheme and options (Celery's ``broker_transport_options``)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from unified_jobs._uri import mask_uri
from unified_jobs.adapters.sql.engine import dialect_of
from unified_jobs.adapters.sql.schema import DEFAULT_TABLE_PREFIX, tables_for
from unified_jobs.errors import ConfigError

__all__ = ["TRANSPORT_SCHEME", "SqlOptions", "broker_url", "transport_options"]

#: kombu transport alias: broker URLs are ``ujsql+<SQLAlchemy URL>``.
TRANSPORT_SCHEME = "ujsql"

_KINDS = {"postgres": "postgresql", "postgresql": "postgresql", "sqlite": "sqlite"}


@dataclass(frozen=True)
class SqlOptions:
    """Every transport option, with its default. See docs/explanation/sql-queue.md."""

    #: Tables are ``<prefix>jobs`` and ``<prefix>schema_version``.
    table_prefix: str = DEFAULT_TABLE_PREFIX
    #: A claimed job is redelivered this long after its worker stops heartbeating.
    lease_sec: float = 30.0
    #: How often a consumer renews its leases and requeues expired ones; default lease_sec / 3.
    heartbeat_sec: float | None = None
    #: Postgres: the fallback poll when no NOTIFY arrives (Loco's ``poll_interval_sec``).
    poll_interval_sec: float = 1.0
    #: SQLite: the poll interval (SQLite has no notifications across processes).
    sqlite_poll_interval_sec: float = 0.05
    #: Most jobs claimed per round trip (also bounded by the consumer's prefetch).
    batch_size: int = 10
    #: What an ack does to the row: "complete" keeps it as completed; "delete" deletes it.
    on_ack: str = "complete"
    #: After this many claims, an expired lease marks the job failed; 0 means no limit.
    max_attempts: int = 0
    #: SQLite: how long to wait for the write lock before failing.
    busy_timeout_sec: float = 10.0
    #: SQLite: PRAGMA synchronous (NORMAL is durable against process crashes in WAL mode).
    sqlite_synchronous: str = "NORMAL"
    #: Postgres: commit claims, acks and heartbeats with synchronous_commit=off (enqueues stay
    #: durable). A database crash may then forget a just-acked job, which then runs again.
    async_commit: bool = True
    #: Extra keyword arguments for ``sqlalchemy.create_engine``.
    engine_options: dict[str, Any] = field(default_factory=dict)

    @property
    def effective_heartbeat_sec(self) -> float:
        return self.heartbeat_sec if self.heartbeat_sec is not None else self.lease_sec / 3

    @classmethod
    def from_transport_options(cls, opts: Mapping[str, Any]) -> SqlOptions:
        """Read our keys from kombu's transport options (other keys belong to kombu or Celery)."""
        known = {f.name for f in fields(cls)}
        o = cls(**{k: v for k, v in opts.items() if k in known})
        o.validate()
        return o

    def validate(self) -> None:
        tables_for(self.table_prefix)  # validates the prefix
        positive = ("lease_sec", "poll_interval_sec", "sqlite_poll_interval_sec", "busy_timeout_sec")
        for name in positive:
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or value <= 0:
                raise ValueError(f"transport option {name} must be a positive number, not {value!r}")
        hb = self.effective_heartbeat_sec
        if not isinstance(hb, (int, float)) or not 0 < hb < self.lease_sec:
            raise ValueError(
                f"transport option heartbeat_sec ({hb!r}) must be positive and shorter than "
                f"lease_sec ({self.lease_sec})"
            )
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise ValueError(f"transport option batch_size must be an int >= 1, not {self.batch_size!r}")
        if self.on_ack not in ("complete", "delete"):
            raise ValueError(f"transport option on_ack must be 'complete' or 'delete', not {self.on_ack!r}")
        if not isinstance(self.max_attempts, int) or self.max_attempts < 0:
            raise ValueError(f"transport option max_attempts must be an int >= 0, not {self.max_attempts!r}")


def transport_options(
    lease_sec: float = 30.0, poll_interval_sec: float = 1.0, **other: Any
) -> dict[str, Any]:
    """Celery ``broker_transport_options`` for the SQL transport.

    ``other`` takes any further ``SqlOptions`` field (e.g. ``table_prefix``, ``on_ack``); an
    unknown name raises ``ValueError`` listing the accepted ones.
    """
    known = {f.name for f in fields(SqlOptions)}
    unknown = sorted(set(other) - known)
    if unknown:
        raise ValueError(f"unknown SQL transport option(s) {unknown}; accepted: {sorted(known)}")
    opts: dict[str, Any] = {"lease_sec": lease_sec, "poll_interval_sec": poll_interval_sec, **other}
    SqlOptions(**opts).validate()
    return opts


def broker_url(kind: str, uri: str) -> str:
    """The Celery broker URL for queue ``kind`` ("Postgres" or "Sqlite") at the plain ``uri``.

    >>> broker_url("Postgres", "postgresql://app@db/jobs")
    'ujsql+postgresql://app@db/jobs'
    >>> broker_url("Sqlite", "sqlite:///jobs.db")
    'ujsql+sqlite:///jobs.db'
    """
    want = _KINDS.get(kind.lower())
    if want is None:
        raise ConfigError(f"queue.kind {kind!r} is not a SQL queue; accepted: Postgres, Sqlite")
    if uri.startswith("postgres://"):
        uri = "postgresql://" + uri[len("postgres://") :]
    try:
        got = dialect_of(uri)
    except Exception as exc:  # SQLAlchemy's URL parser raises several types
        raise ConfigError(
            f"queue.uri {mask_uri(uri)!r} is not a usable URL for queue.kind {kind}: {exc}. "
            f"Expected e.g. {'postgresql://user@host:5432/db' if want == 'postgresql' else 'sqlite:///jobs.db'}"
        ) from exc
    if got != want:
        raise ConfigError(
            f"queue.uri {mask_uri(uri)!r} is a {got} URL but queue.kind is {kind}; "
            f"use a {'postgresql://' if want == 'postgresql' else 'sqlite:///'} URL"
        )
    return f"{TRANSPORT_SCHEME}+{uri}"
