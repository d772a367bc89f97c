"""Dump files of the SQL queue's jobs (``jobs dump``, ``jobs purge --dump``) and their import.

A dump is JSON lines (``.jsonl``, UTF-8): one job per line, an object with every column of
its row and the whole Celery message, so nothing is lost on the way back::

    {"format": "unified_jobs.job/1", "id": 7, "task_id": "5f37...", "worker": "app.ReportWorker",
     "queue": "reports", "status": "failed", "priority": 3, "run_at": "2026-01-02T03:04:05.000006+00:00",
     "attempts": 1, "last_error": "ValueError: ...", "created_at": "...", "updated_at": "...",
     "tags": ["reports"], "payload": {"body": "...", "headers": {...}, "properties": {...}, ...}}

Import (``import_jobs``) re-enqueues every job as a new ``queued`` row: a new row id, the same
Celery task id, ``attempts`` 0, no ``last_error``, ``created_at`` kept, and ``run_at`` kept when
it is still ahead, else now. The top-level ``worker``, ``queue``, ``priority``, ``tags`` and
``run_at`` win over the payload's copies, which are rewritten to agree with them (so an edited
dump does what it says).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import IO, Any

from sqlalchemy.engine import Row

from unified_jobs.adapters.sql.store import PAGE_SIZE, JobStore, Progress, aware, check_statuses, utcnow
from unified_jobs.core.job import TAGS_HEADER

__all__ = [
    "DUMP_FORMAT",
    "DumpError",
    "PurgeResult",
    "dump_file_name",
    "dump_jobs",
    "import_jobs",
    "purge_jobs",
]

#: The ``format`` of every line; an import refuses lines of another format.
DUMP_FORMAT = "unified_jobs.job/1"


class DumpError(ValueError):
    """A dump file cannot be imported; the message names the line and the problem."""


def dump_file_name(now: datetime | None = None) -> str:
    """``unified-jobs-dump-<UTC timestamp>.jsonl``."""
    return f"unified-jobs-dump-{(now or utcnow()).strftime('%Y%m%dT%H%M%S%fZ')}.jsonl"


def _iso(value: datetime) -> str:
    return aware(value).isoformat()


def _tags(payload: dict[str, Any]) -> list[str]:
    tags = (payload.get("headers") or {}).get(TAGS_HEADER) or []
    return [str(t) for t in tags] if isinstance(tags, list) else []


def record_of(row: Row[Any]) -> dict[str, Any]:
    """The dump line (as a dict) of a row read with ``JobStore.pages(payload=True)``."""
    try:
        payload: Any = json.loads(row.payload)
    except ValueError:
        payload = row.payload  # kept as text: a bad row is dumped as it is, never dropped
    return {
        "format": DUMP_FORMAT,
        "id": int(row.id),
        "task_id": row.task_id,
        "worker": row.task_name,
        "queue": row.queue,
        "status": row.status,
        "priority": int(row.priority),
        "run_at": _iso(row.run_at),
        "attempts": int(row.attempts),
        "last_error": row.last_error,
        "created_at": _iso(row.created_at),
        "updated_at": _iso(row.updated_at),
        "tags": _tags(payload) if isinstance(payload, dict) else [],
        "payload": payload,
    }


def _write_pages(
    out: IO[str], pages: Iterator[list[Row[Any]]], progress: Progress | None, ids: list[int] | None
) -> int:
    written = 0
    for page in pages:
        for row in page:
            out.write(json.dumps(record_of(row), ensure_ascii=False) + "\n")
            if ids is not None:
                ids.append(int(row.id))
        out.flush()
        written += len(page)
        if progress is not None:
            progress(len(page))
    return written


def dump_jobs(
    store: JobStore,
    folder: Path,
    statuses: Sequence[str] | None = None,
    worker: str | None = None,
    older_than: datetime | None = None,
    progress: Progress | None = None,
    ids: list[int] | None = None,
) -> tuple[Path, int]:
    """Write the matching jobs to a new dump file in ``folder``; returns (path, jobs written).

    ``ids``, when given, receives the id of every job written (``purge`` deletes those).
    """
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / dump_file_name()
    with path.open("x", encoding="utf-8") as out:
        pages = store.pages(statuses, worker, older_than, payload=True)
        written = _write_pages(out, pages, progress, ids)
    return path, written


@dataclass(frozen=True)
class PurgeResult:
    """What ``purge_jobs`` did."""

    deleted: int
    dumped: int = 0
    dump_file: Path | None = None


def purge_jobs(
    store: JobStore,
    statuses: Sequence[str],
    older_than: datetime,
    dump_folder: Path | None = None,
    progress: Progress | None = None,
) -> PurgeResult:
    """Delete the jobs with these statuses last updated at or before ``older_than``.

    With ``dump_folder`` they are dumped first, and only the jobs dumped are deleted (a job
    that changed meanwhile is left alone). ``progress`` counts rows dumped, then deleted.
    """
    statuses = check_statuses(statuses)
    ids: list[int] = []
    path, dumped = None, 0
    if dump_folder is not None:
        path, dumped = dump_jobs(store, dump_folder, statuses, None, older_than, progress, ids)
    else:
        for page in store.pages(statuses, None, older_than, payload=False):
            ids.extend(int(row.id) for row in page)
    return PurgeResult(store.delete_ids(ids, statuses, older_than, progress), dumped, path)


# --- import ---------------------------------------------------------------------------------


def _parse_time(value: Any, line: int, key: str) -> datetime:
    if not isinstance(value, str):
        raise DumpError(f"line {line}: {key} must be an ISO 8601 time, not {value!r}")
    try:
        when = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise DumpError(f"line {line}: {key} {value!r} is not an ISO 8601 time") from None
    return aware(when)


def _job_params(record: Any, line: int, now: datetime) -> dict[str, Any]:
    """The insert parameters of one dump line; ``DumpError`` if it cannot be imported."""
    if not isinstance(record, dict):
        raise DumpError(f"line {line}: not a JSON object")
    if record.get("format") != DUMP_FORMAT:
        raise DumpError(f"line {line}: format is {record.get('format')!r}, not {DUMP_FORMAT!r}")
    payload = record.get("payload")
    if not isinstance(payload, dict) or not isinstance(payload.get("properties"), dict):
        raise DumpError(f"line {line}: payload is not a Celery message (an object with 'properties')")
    headers = payload.setdefault("headers", {})
    props = payload["properties"]
    queue, worker = record.get("queue"), record.get("worker") or headers.get("task")
    if not isinstance(queue, str) or not queue:
        raise DumpError(f"line {line}: queue must be a non-empty string, not {queue!r}")
    if not isinstance(worker, str) or not worker:
        raise DumpError(f"line {line}: worker must be a non-empty string, not {worker!r}")
    priority = record.get("priority", 0)
    if isinstance(priority, bool) or not isinstance(priority, int):
        raise DumpError(f"line {line}: priority must be an integer, not {priority!r}")
    tags = record.get("tags", [])
    if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
        raise DumpError(f"line {line}: tags must be a list of strings, not {tags!r}")
    run_at = max(_parse_time(record.get("run_at", now.isoformat()), line, "run_at"), now)
    created_at = _parse_time(record.get("created_at", now.isoformat()), line, "created_at")
    # The message agrees with the row: the same worker, queue, priority, tags and due time.
    headers["task"] = worker
    if tags or TAGS_HEADER in headers:
        headers[TAGS_HEADER] = tags
    if headers.get("eta") or run_at > now:
        headers["eta"] = run_at.isoformat() if run_at > now else None
    props["priority"] = priority
    info = props.get("delivery_info")
    if isinstance(info, dict):
        info["routing_key"] = queue
    task_id = headers.get("id") or props.get("correlation_id") or record.get("task_id")
    return {
        "queue": queue[:255],
        "task_name": worker[:255],
        "task_id": None if task_id is None else str(task_id)[:255],
        "payload": json.dumps(payload),
        "priority": priority,
        "run_at": run_at,
        "created_at": created_at,
        "now": now,
    }


def _records(path: Path) -> Iterator[tuple[int, Any]]:
    with path.open(encoding="utf-8") as lines:
        for number, text in enumerate(lines, start=1):
            if not text.strip():
                continue
            try:
                yield number, json.loads(text)
            except ValueError as exc:
                raise DumpError(f"line {number}: not JSON ({exc})") from None


def count_importable(path: Path) -> int:
    """Check every line of the dump at ``path``; returns how many jobs it holds."""
    now = utcnow()
    total = 0
    for number, record in _records(path):
        _job_params(record, number, now)
        total += 1
    return total


def import_jobs(
    store: JobStore,
    path: Path,
    progress: Progress | None = None,
    checked: Callable[[int], None] | None = None,
) -> int:
    """Re-enqueue every job of the dump at ``path`` as ``queued``; returns how many.

    The whole file is checked first, so a bad line imports nothing (``DumpError`` names it);
    ``checked`` is then called with the number of jobs. Jobs are inserted a page per
    transaction: if the database fails midway, the jobs of the lines before are in.
    """
    total = count_importable(path)
    if checked is not None:
        checked(total)
    imported = 0
    batch: list[dict[str, Any]] = []
    for number, record in _records(path):
        batch.append(_job_params(record, number, utcnow()))
        if len(batch) >= PAGE_SIZE:
            imported += store.insert_jobs(batch, progress)
            batch = []
    if batch:
        imported += store.insert_jobs(batch, progress)
    return imported
