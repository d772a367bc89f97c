"""Django's ``transaction.atomic()`` as a transaction jobs are enqueued with.

Outside the queue's database, a job waits for the commit in ``transaction.on_commit`` (Django
drops it on a rollback, of the transaction or of the savepoint it was enqueued in). On a
Postgres or SQLite queue in the project's own database (the same host, port and name, or the
same file), the job's row is written through Django's own connection, in the open
transaction: it commits with the project's data or not at all.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from unified_jobs.adapters.transactions import ForeignTransaction, borrowed_connection

__all__ = ["DjangoTransaction"]


class DjangoTransaction(ForeignTransaction):
    """The open ``atomic()`` block of the ``DATABASES`` alias ``using``: give it as
    ``perform_later(..., transaction=DjangoTransaction())`` inside the block."""

    def __init__(self, using: str = "default") -> None:
        self.using = using
        self._lent: list[Any] = []

    def _connection(self) -> Any:
        from django.db import connections

        return connections[self.using]

    def describe(self) -> str:
        return f"Django's database {self.using!r}"

    def in_transaction(self) -> bool:
        return bool(self._connection().in_atomic_block)

    def on_commit(self, callback: Any) -> None:
        from django.db import transaction

        transaction.on_commit(callback, using=self.using)

    def connection(self) -> Any:
        """A SQLAlchemy Connection over Django's own DB-API connection, in its transaction."""
        conn = self._connection()
        url = _url_of(conn)
        if url is None:
            return None
        conn.ensure_connection()
        lent = borrowed_connection(conn.connection, url, holder=conn)
        self._lent.append(lent)
        return lent

    def close(self) -> None:
        """Give back the Connections lent (Django's transaction stays as it is)."""
        while self._lent:
            self._lent.pop().close()


def _url_of(conn: Any) -> str | None:
    """The URL of a Django connection's database (what the queue's URI is compared with), or
    None for a database no queue kind can be."""
    settings = conn.settings_dict
    if conn.vendor == "postgresql":
        driver = "psycopg2" if conn.Database.__name__.startswith("psycopg2") else "psycopg"
        user = quote(str(settings.get("USER") or ""), safe="")
        host = str(settings.get("HOST") or "localhost")
        port = f":{settings['PORT']}" if settings.get("PORT") else ""
        name = quote(str(settings.get("NAME") or ""), safe="")
        return f"postgresql+{driver}://{user + '@' if user else ''}{host}{port}/{name}"
    if conn.vendor == "sqlite":
        name = str(settings.get("NAME") or "")
        if not name or name == ":memory:" or name.startswith("file:"):
            return None
        return f"sqlite+pysqlite:///{name}"
    return None
