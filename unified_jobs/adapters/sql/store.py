"""Direct access to the jobs table, for ``doctor`` and the ``jobs`` command line."""

from __future__ import annotations

from unified_jobs.adapters.sql.engine import dialect_of, get_engine
from unified_jobs.adapters.sql.options import TRANSPORT_SCHEME
from unified_jobs.adapters.sql.queries import queries_for
from unified_jobs.adapters.sql.schema import DEFAULT_TABLE_PREFIX, ensure_schema_on, tables_for

__all__ = ["ensure_schema", "job_counts"]


def _db_url(url: str) -> str:
    prefix = TRANSPORT_SCHEME + "+"
    return url[len(prefix):] if url.startswith(prefix) else url


def ensure_schema(url: str, table_prefix: str = DEFAULT_TABLE_PREFIX) -> int:
    """Create or migrate the queue's tables at ``url``; idempotent. Returns the schema version.

    ``url`` is a plain ``postgresql://``/``sqlite:///`` URI or a ``ujsql+...`` broker URL.
    """
    db = _db_url(url)
    dialect_of(db)
    return ensure_schema_on(get_engine(db), tables_for(table_prefix))


def job_counts(url: str, table_prefix: str = DEFAULT_TABLE_PREFIX) -> dict[str, dict[str, int]]:
    """``{queue: {status: number of jobs}}`` for every queue with at least one row."""
    db = _db_url(url)
    dialect = dialect_of(db)
    engine = get_engine(db)
    tables = tables_for(table_prefix)
    ensure_schema_on(engine, tables)
    out: dict[str, dict[str, int]] = {}
    with engine.begin() as conn:
        for row in conn.execute(queries_for(tables, dialect).counts):
            out.setdefault(row[0], {})[row[1]] = int(row[2])
    return out
