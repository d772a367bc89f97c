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

import base64
import binascii
import json
from collections import Counter
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
    "DumpedJob",
    "JobCheck",
    "PurgeResult",
    "check_dump",
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

#: The priorities a job may have (``Jobs.perform_later``'s range); ``None`` is the default, 0.
PRIORITIES = range(0, 10)
#: The years a dump's times may be in: anything else is a crafted or corrupt line.
YEARS = range(2000, 9999)


@dataclass(frozen=True)
class DumpedJob:
    """One line of a dump, checked and normalised: what ``import_jobs`` would enqueue.

    ``args`` and ``kwargs`` are the decoded message body (Celery protocol 2: ``[args, kwargs,
    embed]``), ``None`` when the body is not JSON (or there is none); an app checks them
    against the worker's arguments model (the ``check`` of ``import_jobs``).
    """

    line: int
    worker: str
    queue: str
    priority: int
    run_at: datetime
    args: list[Any] | None
    kwargs: dict[str, Any] | None
    body_error: str | None = None


#: Called with every job of a dump before anything is imported; raises ``ValueError`` (its
#: message is the problem) when the app cannot take the job.
JobCheck = Callable[[DumpedJob], None]


def _column_length(name: str) -> int:
    from unified_jobs.adapters.sql.schema import tables_for

    length = getattr(tables_for().jobs.c[name].type, "length", None)  # String(n)
    return int(length) if length is not None else 255


def _parse_time(value: Any, line: int, key: str) -> datetime:
    if not isinstance(value, str):
        raise DumpError(f"line {line}: {key} must be an ISO 8601 time, not {value!r}")
    try:
        when = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise DumpError(f"line {line}: {key} {value!r} is not an ISO 8601 time") from None
    if when.year not in YEARS:
        raise DumpError(
            f"line {line}: {key} {value!r} is out of range (years {YEARS.start} to {YEARS.stop - 1})"
        )
    return aware(when)


def _text(value: Any, line: int, key: str, column: str) -> str:
    """A non-empty string that fits its column: refused, never cut."""
    if not isinstance(value, str) or not value.strip():
        raise DumpError(f"line {line}: {key} must be a non-empty string, not {value!r}")
    limit = _column_length(column)
    if len(value) > limit:
        raise DumpError(
            f"line {line}: {key} is {len(value)} characters long, longer than the {limit} the "
            f"jobs table holds ({value[:40]!r}...)"
        )
    return value


def _body(payload: dict[str, Any]) -> tuple[list[Any] | None, dict[str, Any] | None, str | None]:
    """``(args, kwargs, None)`` of a JSON protocol-2 body, else ``(None, None, why not)``."""
    body = payload.get("body")
    if body is None or body == "":
        return None, None, "the message has no body (arguments)"
    content_type = payload.get("content-type")
    if content_type not in (None, "application/json"):
        return None, None, f"the message body is {content_type}, not JSON"
    props = payload["properties"]
    try:
        if props.get("body_encoding") == "base64":
            if not isinstance(body, str):
                raise ValueError("a base64 body must be a string")
            body = base64.b64decode(body, validate=True).decode("utf-8")
        decoded = json.loads(body) if isinstance(body, (str, bytes)) else body
    except (ValueError, TypeError, binascii.Error, UnicodeDecodeError) as exc:
        return None, None, f"the message body cannot be decoded ({exc})"
    if (
        not isinstance(decoded, list)
        or len(decoded) != 3
        or not isinstance(decoded[0], list)
        or not isinstance(decoded[1], dict)
    ):
        return None, None, "the message body is not [args, kwargs, embed] (Celery's protocol 2)"
    return decoded[0], decoded[1], None


def _checked(record: Any, line: int, now: datetime) -> tuple[DumpedJob, dict[str, Any]]:
    """The job of one dump line, and its message; ``DumpError`` if it cannot be imported."""
    if not isinstance(record, dict):
        raise DumpError(f"line {line}: not a JSON object")
    if record.get("format") != DUMP_FORMAT:
        raise DumpError(f"line {line}: format is {record.get('format')!r}, not {DUMP_FORMAT!r}")
    payload = record.get("payload")
    if not isinstance(payload, dict) or not isinstance(payload.get("properties"), dict):
        raise DumpError(f"line {line}: payload is not a Celery message (an object with 'properties')")
    headers = payload.setdefault("headers", {})
    if not isinstance(headers, dict):
        raise DumpError(f"line {line}: payload headers must be an object, not {headers!r}")
    queue = _text(record.get("queue"), line, "queue", "queue")
    worker = _text(record.get("worker") or headers.get("task"), line, "worker", "task_name")
    priority = record.get("priority", 0)
    if priority is None:
        priority = 0
    if isinstance(priority, bool) or not isinstance(priority, int):
        raise DumpError(f"line {line}: priority must be an integer, not {priority!r}")
    if priority not in PRIORITIES:
        raise DumpError(
            f"line {line}: priority {priority} is out of range: {PRIORITIES.start} to "
            f"{PRIORITIES.stop - 1} (higher runs first), or null"
        )
    tags = record.get("tags", [])
    if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
        raise DumpError(f"line {line}: tags must be a list of strings, not {tags!r}")
    given = {key: record.get(key) for key in ("run_at", "created_at")}
    run_at, created_at = (
        _parse_time(now.isoformat() if value is None else value, line, key) for key, value in given.items()
    )
    if record.get("updated_at") is not None:  # not imported, but a bad one says the line is bad
        _parse_time(record["updated_at"], line, "updated_at")
    task_id = headers.get("id") or payload["properties"].get("correlation_id") or record.get("task_id")
    if task_id is not None:
        _text(str(task_id), line, "task_id", "task_id")
    args, kwargs, body_error = _body(payload)
    job = DumpedJob(line, worker, queue, priority, max(run_at, now), args, kwargs, body_error)
    params = {
        "queue": queue,
        "task_name": worker,
        "task_id": None if task_id is None else str(task_id),
        "priority": priority,
        "run_at": job.run_at,
        "created_at": created_at,
        "now": now,
    }
    return job, {"params": params, "payload": payload, "tags": tags}


def _job_params(record: Any, line: int, now: datetime, check: JobCheck | None = None) -> dict[str, Any]:
    """The insert parameters of one dump line; ``DumpError`` if it cannot be imported."""
    job, parts = _checked(record, line, now)
    if check is not None:
        try:
            check(job)
        except ValueError as exc:
            raise DumpError(f"line {line}: {exc}") from None
    params, payload, tags = parts["params"], parts["payload"], parts["tags"]
    run_at = params["run_at"]
    # The message agrees with the row: the same worker, queue, priority, tags and due time.
    headers, props = payload["headers"], payload["properties"]
    headers["task"] = job.worker
    if tags or TAGS_HEADER in headers:
        headers[TAGS_HEADER] = tags
    if headers.get("eta") or run_at > now:
        headers["eta"] = run_at.isoformat() if run_at > now else None
    props["priority"] = job.priority
    info = props.get("delivery_info")
    if isinstance(info, dict):
        info["routing_key"] = job.queue
    return {**params, "payload": json.dumps(payload)}


def _records(path: Path) -> Iterator[tuple[int, Any]]:
    with path.open(encoding="utf-8") as lines:
        for number, text in enumerate(lines, start=1):
            if not text.strip():
                continue
            try:
                yield number, json.loads(text)
            except ValueError as exc:
                raise DumpError(f"line {number}: not JSON ({exc})") from None


def check_dump(path: Path, check: JobCheck | None = None) -> Counter[tuple[str, str]]:
    """Check every line of the dump at ``path`` (and each job with ``check``); returns how many
    jobs it holds by ``(worker, queue)``. ``DumpError`` names the first bad line."""
    now = utcnow()
    found: Counter[tuple[str, str]] = Counter()
    try:
        for number, record in _records(path):
            params = _job_params(record, number, now, check)
            found[(params["task_name"], params["queue"])] += 1
    except UnicodeDecodeError as exc:
        raise DumpError(f"the file is not UTF-8 ({exc})") from None
    return found


def count_importable(path: Path, check: JobCheck | None = None) -> int:
    """Check every line of the dump at ``path``; returns how many jobs it holds."""
    return sum(check_dump(path, check).values())


def import_jobs(
    store: JobStore,
    path: Path,
    progress: Progress | None = None,
    checked: Callable[[int], None] | None = None,
    check: JobCheck | None = None,
) -> int:
    """Re-enqueue every job of the dump at ``path`` as ``queued``; returns how many.

    The whole file is checked first (the fields, their ranges and column lengths, and each job
    with ``check``: the app's, which knows its workers), so a bad line imports nothing
    (``DumpError`` names it); ``checked`` is then called with the number of jobs. Jobs are
    inserted a page per transaction: if the database fails midway, the jobs of the lines
    before are in.
    """
    total = count_importable(path, check)
    if checked is not None:
        checked(total)
    imported = 0
    batch: list[dict[str, Any]] = []
    for number, record in _records(path):
        batch.append(_job_params(record, number, utcnow(), check))
        if len(batch) >= PAGE_SIZE:
            imported += store.insert_jobs(batch, progress)
            batch = []
    if batch:
        imported += store.insert_jobs(batch, progress)
    return imported
