"""The Redis kind: kombu's Redis transport, and the project's own small job store beside it.

The transport is kombu's with one change (``redis_transport.py``): a job due later (a wait, a
run_at, a retry's backoff, an adopted task's countdown) waits in a sorted set of its queue
(``unified_jobs:delayed:<queue>``) until due, not unacked in a worker, and the workers' movers
push it to its list then. ``jobs list`` counts delayed jobs as queued; a purge deletes them.

The store is a hash per job (``unified_jobs:job:<id>``), a sorted set of failed jobs
(``unified_jobs:failed``, scored by finish time) and a set of cancel requests for running jobs.
The broker's lists stay the only source of truth for *what is queued*; the store only says
what became of each job. A completed job's hash expires after ``workers.keep_completed``;
failed ones stay until discarded.

For the dashboard (``redis_monitor.py`` reads them), each queue's jobs are indexed by status:
a sorted set ``unified_jobs:idx:<status>:<queue>`` per status and queue, scored by when the
job entered the status (epoch seconds), the queues in ``unified_jobs:queues``, scheduled jobs
also in ``unified_jobs:due`` (scored by run_at; a read moves the due ones to queued), and
the jobs that ended per minute in ``unified_jobs:ended:<minute>`` hashes. The same pipeline or
script that writes a transition moves the job between indexes, so no hook costs a round trip
more. The hash stays the truth: reads drop index entries whose hash says otherwise (expired,
moved on), and completed entries older than ``keep_completed`` go by score.
"""

from __future__ import annotations

import json
import logging
import socket
import time
from collections.abc import Iterable, Sequence
from contextlib import AbstractContextManager
from datetime import datetime
from typing import Any, cast

import redis

from unified_jobs._uri import mask_uri
from unified_jobs.adapters.celery.kinds import Check, QueueKind, not_answering, short_connection
from unified_jobs.adapters.celery.kinds.redis_client import (
    DEFAULT_CONNECT_TIMEOUT,
    DEFAULT_READ_TIMEOUT,
    PackedCalls,
    bounded_client,
    pack_command,
)
from unified_jobs.adapters.celery.kinds.redis_heartbeats import RedisHeartbeats
from unified_jobs.adapters.celery.kinds.redis_transport import Rider, riding
from unified_jobs.core.job import Job, JobInfo, JobStatus, aware, utcnow
from unified_jobs.core.monitor import JobPage, JobQuery, QueueStats, ThroughputBucket
from unified_jobs.core.outcome import Outcome, result_json
from unified_jobs.core.store import JobStore, StartCheck

__all__ = ["RedisJobStore", "RedisKind"]

logger = logging.getLogger(__name__)

PREFIX = "unified_jobs:"
#: ``INDEX + "<status>:<queue>"``: the queue's jobs in that status, scored by when they
#: entered it (epoch seconds).
INDEX = PREFIX + "idx:"
#: Every queue a job was recorded in.
QUEUES = PREFIX + "queues"
#: Scheduled jobs, scored by their run_at (epoch seconds).
DUE = PREFIX + "due"
#: ``ENDED + str(epoch // 60)``: a hash of the jobs that ended in that minute (completed, failed).
ENDED = PREFIX + "ended:"
#: Seconds a minute's counts are kept (``throughput`` reads older minutes as 0).
ENDED_TTL = 65 * 60
#: The status of a discarded cancelled job's tombstone (``get`` reads it as no job).
DISCARDED = "discarded"
#: A waiting job's record lives this long past its due time (a safety net for purged queues).
WAITING_TTL = 30 * 86_400
#: TCP keepalives of the transport's connections: the first probe after 30 s idle, then every
#: 5 s, dead after 3 unanswered (redis-py's own defaults), where the platform has them.
KEEPALIVE_OPTIONS: dict[int, int] = {
    getattr(socket, name): value
    for name, value in (("TCP_KEEPIDLE", 30), ("TCP_KEEPINTVL", 5), ("TCP_KEEPCNT", 3))
    if hasattr(socket, name)
}

# status before, or -1 when the job was cancelled while it waited; else deliveries so far.
_START = """
local key = KEYS[1]
local status = redis.call('HGET', key, 'status')
if status == 'cancelled' or status == 'discarded' then return -1 end
local same_attempt = tonumber(redis.call('HGET', key, 'attempts') or '0') == tonumber(ARGV[2])
-- this attempt ended already: a message whose ack was lost, delivered again
if same_attempt and (status == 'completed' or status == 'failed' or status == 'retrying') then return -2 end
if not same_attempt then redis.call('HSET', key, 'deliveries', 0) end
local n = redis.call('HINCRBY', key, 'deliveries', 1)
local queue = redis.call('HGET', key, 'queue')
redis.call('HSET', key, 'status', 'processing', 'started_at', ARGV[1], 'attempts', ARGV[2])
if not status then
  redis.call('HSET', key, 'worker', ARGV[3], 'queue', ARGV[4], 'args', ARGV[5], 'enqueued_at', ARGV[1])
end
redis.call('EXPIRE', key, ARGV[6])
-- the indexes (ARGV[7] id, ARGV[8] now in epoch seconds, ARGV[9] INDEX, ARGV[10] QUEUES, ARGV[11] DUE)
if not queue or queue == '' then
  queue = ARGV[4]
  redis.call('SADD', ARGV[10], queue)
end
if status then redis.call('ZREM', ARGV[9] .. status .. ':' .. queue, ARGV[7]) end
if status == 'scheduled' then redis.call('ZREM', ARGV[11], ARGV[7]) end
redis.call('ZADD', ARGV[9] .. 'processing:' .. queue, ARGV[8], ARGV[7])
return n
"""

# A job due now enqueued in one command: its record, its index entries and its message.
# KEYS: 1 the record, 2 its queue's index of queued jobs, 3 QUEUES, 4 the message's list.
# ARGV: 1 the record's TTL, 2 the enqueue time (epoch s), 3 the job's id, 4 its queue, 5 the
# message, 6... the record's fields and values.
_ENQUEUE = """
redis.call('HSET', KEYS[1], unpack(ARGV, 6))
redis.call('EXPIRE', KEYS[1], ARGV[1])
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[3])
redis.call('SADD', KEYS[3], ARGV[4])
return redis.call('LPUSH', KEYS[4], ARGV[5])
"""

# An attempt ended (KEYS[1]: the job's record). ARGV: 1 id, 2 the new status, 3 now (ISO),
# 4 now (epoch s), 5 '1' if there is an error, 6 its text, 7 its traceback, 8 the retry's run_at
# (ISO), 9 keep_completed, 10 INDEX, 11 the failed set, 12 the cancel requests, 13 this minute's
# ENDED hash, 14 ENDED_TTL, 15 the job's queue if the record names none, 16 DUE, 17 the result's
# JSON ('' for none), 18 the error's class path ('' if unknown).
_OUTCOME = """
local key, id, new = KEYS[1], ARGV[1], ARGV[2]
local h = redis.call('HMGET', key, 'status', 'queue')
local old, queue = h[1], h[2]
if not queue or queue == '' then queue = ARGV[15] end
redis.call('HSET', key, 'status', new)
if ARGV[5] == '1' then
  redis.call('HSET', key, 'last_error', ARGV[6], 'traceback', ARGV[7])
  if ARGV[18] ~= '' then redis.call('HSET', key, 'error_class', ARGV[18])
  else redis.call('HDEL', key, 'error_class') end
end
if ARGV[17] ~= '' then redis.call('HSET', key, 'result', ARGV[17]) end
if new == 'retrying' then
  redis.call('HSET', key, 'run_at', ARGV[8])
else
  redis.call('HSET', key, 'finished_at', ARGV[3])
  -- it ended: its unique key, if it holds one, is free
  local unique = redis.call('HGET', key, 'unique_key')
  if unique and redis.call('GET', unique) == id then redis.call('DEL', unique) end
end
redis.call('SREM', ARGV[12], id)
if queue ~= '' then
  if old and old ~= new then redis.call('ZREM', ARGV[10] .. old .. ':' .. queue, id) end
  redis.call('ZADD', ARGV[10] .. new .. ':' .. queue, ARGV[4], id)
end
if old == 'scheduled' then redis.call('ZREM', ARGV[16], id) end
if new == 'failed' then
  redis.call('PERSIST', key)
  redis.call('ZADD', ARGV[11], ARGV[4], id)
  redis.call('HINCRBY', ARGV[13], 'failed', 1)
  redis.call('EXPIRE', ARGV[13], ARGV[14])
elseif new == 'completed' or new == 'cancelled' then
  redis.call('EXPIRE', key, ARGV[9])
  if new == 'completed' then
    redis.call('HINCRBY', ARGV[13], 'completed', 1)
    redis.call('EXPIRE', ARGV[13], ARGV[14])
    if queue ~= '' then  -- the records that expired by now leave the index
      local cutoff = '(' .. (tonumber(ARGV[4]) - tonumber(ARGV[9]))
      redis.call('ZREMRANGEBYSCORE', ARGV[10] .. 'completed:' .. queue, '-inf', cutoff)
    end
  end
end
return 0
"""

# ARGV: 1 now (ISO), 2 keep_completed, 3 the job's id, 4 now (epoch s), 5 INDEX, 6 DUE.
_CANCEL = """
local status = redis.call('HGET', KEYS[1], 'status')
if status == 'queued' or status == 'scheduled' or status == 'retrying' then
  redis.call('HSET', KEYS[1], 'status', 'cancelled', 'finished_at', ARGV[1])
  -- the message still waits in the broker: the record must outlive it (its TTL runs to the
  -- job's due time and beyond), or the job would run once the record expired
  if redis.call('TTL', KEYS[1]) < tonumber(ARGV[2]) then redis.call('EXPIRE', KEYS[1], ARGV[2]) end
  local queue = redis.call('HGET', KEYS[1], 'queue')
  if queue and queue ~= '' then
    redis.call('ZREM', ARGV[5] .. status .. ':' .. queue, ARGV[3])
    redis.call('ZADD', ARGV[5] .. 'cancelled:' .. queue, ARGV[4], ARGV[3])
  end
  redis.call('ZREM', ARGV[6], ARGV[3])
  return 1
end
if status == 'processing' then return 2 end
return 0
"""

# Take a unique key (KEYS[1]) for job ARGV[1] (record KEYS[2]) for ARGV[2] ms, unless a job that
# waits or runs holds it: its id is returned. A holder whose record is gone or finished, or
# whose key expired, holds nothing. The new job's record notes its key (for the release); until
# record_enqueued gives it a status (and a longer life), that record lives CLAIM_TTL seconds, so
# a process that died between the two holds the key no longer than that.
_CLAIM_UNIQUE = """
local holder = redis.call('GET', KEYS[1])
if holder and holder ~= ARGV[1] then
  local record = ARGV[3] .. holder
  if redis.call('EXISTS', record) == 1 then
    local status = redis.call('HGET', record, 'status')
    if not status or status == 'queued' or status == 'scheduled' or status == 'processing'
        or status == 'retrying' then
      return holder
    end
  end
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
redis.call('HSET', KEYS[2], 'unique_key', KEYS[1])
if redis.call('TTL', KEYS[2]) < 0 then redis.call('EXPIRE', KEYS[2], ARGV[4]) end
return false
"""

#: Seconds a claimed key's record lives before ``record_enqueued`` writes it (see _CLAIM_UNIQUE).
CLAIM_TTL = 60

# The job of record KEYS[1] (id ARGV[1]) ended: release the unique key it holds, if any (ARGV[2]
# if known, else the one its record notes).
_RELEASE_UNIQUE = """
local key = ARGV[2]
if not key or key == '' then key = redis.call('HGET', KEYS[1], 'unique_key') end
if key and redis.call('GET', key) == ARGV[1] then redis.call('DEL', key) end
return 0
"""

_SETTLED: dict[str, str] = {
    "succeeded": "completed",
    "retry": "retrying",
    "failed": "failed",
    "rejected": "failed",
    "cancelled": "cancelled",
}


def _ts(value: datetime | None) -> str:
    return value.isoformat() if value is not None else ""


def _dt(value: str | None) -> datetime | None:
    return aware(datetime.fromisoformat(value)) if value else None


def _record_fields(job: Job, status: str) -> dict[str, Any]:
    """A new record's fields (``status``: queued or scheduled)."""
    return {
        "worker": job.name,
        "queue": job.queue,
        "args": job.kwargs_json if job.args_json == "[]" else _both(job),
        "status": status,
        "attempts": 0,
        "deliveries": 0,
        "priority": "" if job.priority is None else job.priority,
        "enqueued_at": _ts(job.enqueued_at),
        "run_at": _ts(job.run_at),
    }


class RedisJobStore(RedisHeartbeats, JobStore):
    """``shares_broker``: the store is in the Redis kind's own broker database, where delayed
    messages wait in sorted sets that ``run_now`` can take a job's message from (the RabbitMQ
    kind's store, beside the broker, cannot)."""

    def __init__(
        self,
        url: str,
        keep_completed: float = 86_400.0,
        *,
        shares_broker: bool = False,
        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
        read_timeout: float = DEFAULT_READ_TIMEOUT,
    ) -> None:
        # The queue's timeouts (seconds): a server that does not answer is an error, not a hang.
        self.client: Any = bounded_client(url, connect_timeout=connect_timeout, read_timeout=read_timeout)
        self._keep = max(1, int(keep_completed))
        self.shares_broker = shares_broker
        self.can_run_now = shares_broker
        self._start = self.client.register_script(_START)
        self._enqueue = self.client.register_script(_ENQUEUE)
        self._outcome = self.client.register_script(_OUTCOME)
        self._packed = PackedCalls(self.client.connection_pool)
        self._cancel = self.client.register_script(_CANCEL)
        self._claim_unique = self.client.register_script(_CLAIM_UNIQUE)
        self._release_unique = self.client.register_script(_RELEASE_UNIQUE)
        self._scripts_loaded = False

    @staticmethod
    def key(job_id: str) -> str:
        return f"{PREFIX}job:{job_id}"

    def _in_pipeline(self, pipe: Any, script: Any, keys: list[str], args: list[Any]) -> None:
        """``script`` as an ``EVALSHA`` queued in ``pipe``. Not redis-py's ``script(client=pipe)``:
        that makes every ``pipe.execute()`` ask ``SCRIPT EXISTS`` first, one more round trip per
        job. The scripts are loaded once per process instead, and again after a ``NoScriptError``
        (a restarted Redis), which the callers handle."""
        if not self._scripts_loaded:
            for loaded in (self._claim_unique, self._release_unique):
                self.client.script_load(loaded.script)
            self._scripts_loaded = True
        pipe.evalsha(script.sha, len(keys), *keys, *args)

    def _run(self, script: Any, keys: list[str], args: list[Any]) -> Any:
        """``script`` (registered on ``self.client``) on the hot path: one packed ``EVALSHA``
        (``PackedCalls``), else redis-py's call, which retries a dropped connection and loads a
        script that a restarted server forgot."""
        try:
            return self._packed(pack_command(["EVALSHA", script.sha, len(keys), *keys, *args]))
        except (redis.ConnectionError, redis.exceptions.NoScriptError):
            return script(keys=keys, args=args)

    # -- unique jobs -------------------------------------------------------------------------

    def claim_unique(self, jobs: Sequence[Job]) -> dict[str, str]:
        unique = [job for job in jobs if job.unique_key is not None]
        if not unique:
            return {}

        def claims() -> list[Any]:
            pipe = self.client.pipeline(transaction=False)
            for job in unique:
                ttl_ms = max(1, int((job.unique_for or 0.0) * 1000))
                keys = [f"{PREFIX}unique:{job.unique_key}", self.key(job.id)]
                self._in_pipeline(
                    pipe, self._claim_unique, keys, [job.id, ttl_ms, f"{PREFIX}job:", CLAIM_TTL]
                )
            return list(pipe.execute())

        # In order: a job refused by an earlier one of the same batch sees it as the holder.
        # (Without the script, none of the batch ran: all of it is tried again.)
        try:
            held = claims()
        except redis.exceptions.NoScriptError:
            self._scripts_loaded = False
            held = claims()
        return {job.id: holder for job, holder in zip(unique, held, strict=True) if holder}

    def release_unique(self, jobs: Sequence[Job]) -> None:
        unique = [job for job in jobs if job.unique_key is not None]
        for job in unique:  # rare (a failed enqueue): one call each
            self._release_unique(keys=[self.key(job.id)], args=[job.id, f"{PREFIX}unique:{job.unique_key}"])

    # -- lifecycle ---------------------------------------------------------------------------

    def record_enqueued(self, jobs: Sequence[Job]) -> None:
        pipe = self.client.pipeline(transaction=False)
        self.add_enqueued(pipe, jobs)
        pipe.execute()

    def add_enqueued(self, pipe: Any, jobs: Sequence[Job]) -> None:
        """``record_enqueued``'s commands, queued in ``pipe`` (which a caller executes)."""
        now = utcnow()
        indexed: dict[str, dict[str, float]] = {}  # index key -> {job id: enqueue time}
        due: dict[str, float] = {}
        for job in jobs:
            waiting = job.run_at is not None and job.run_at > now
            ttl = WAITING_TTL + (int((job.run_at - now).total_seconds()) if waiting and job.run_at else 0)
            status = "scheduled" if waiting else "queued"
            pipe.hset(self.key(job.id), mapping=_record_fields(job, status))
            pipe.expire(self.key(job.id), ttl)
            indexed.setdefault(f"{INDEX}{status}:{job.queue}", {})[job.id] = job.enqueued_at.timestamp()
            if waiting and job.run_at is not None:
                due[job.id] = job.run_at.timestamp()
        for key, members in indexed.items():
            pipe.zadd(key, members)
        if due:
            pipe.zadd(DUE, due)
        pipe.sadd(QUEUES, *{job.queue for job in jobs})

    def push_enqueued(self, job: Job, list_key: str, message: str) -> None:
        """Enqueue ``job`` (due now, no ``run_at``): its record, its index entries and its
        ``message`` pushed to ``list_key``, in one command."""
        flat = [v for pair in _record_fields(job, "queued").items() for v in pair]
        keys = [self.key(job.id), f"{INDEX}queued:{job.queue}", QUEUES, list_key]
        args = [WAITING_TTL, job.enqueued_at.timestamp(), job.id, job.queue, message, *flat]
        self._run(self._enqueue, keys, args)

    def push_enqueued_many(self, jobs: Sequence[Job], messages: Sequence[tuple[str, str]]) -> None:
        """``push_enqueued`` for a batch: every record and message in one MULTI/EXEC, so that a
        batch Redis refuses (out of memory) leaves nothing."""
        pipe = self.client.pipeline(transaction=True)
        self.add_enqueued(pipe, jobs)
        for list_key, message in messages:
            pipe.lpush(list_key, message)
        pipe.execute()

    def forget_enqueued(self, jobs: Sequence[Job]) -> None:
        pipe = self.client.pipeline(transaction=False)
        pipe.delete(*(self.key(j.id) for j in jobs))
        for job in jobs:
            pipe.zrem(f"{INDEX}queued:{job.queue}", job.id)
            pipe.zrem(f"{INDEX}scheduled:{job.queue}", job.id)
        pipe.zrem(DUE, *(j.id for j in jobs))
        pipe.execute()

    def record_started(self, job: Job) -> StartCheck:
        n = int(self._run(self._start, [self.key(job.id)], self.started_args(job, utcnow())))
        if n == -1:
            return StartCheck(cancelled=True)
        return StartCheck(settled=True) if n == -2 else StartCheck(deliveries=n)

    def started_args(self, job: Job, now: datetime) -> list[Any]:
        """The ``_START`` script's ARGV for ``job`` starting at ``now`` (also for bulk loads)."""
        args = job.kwargs_json if job.args_json == "[]" else _both(job)
        return [
            *(_ts(now), job.attempt, job.name, job.queue, args, WAITING_TTL),
            *(job.id, now.timestamp(), INDEX, QUEUES, DUE),
        ]

    def record_unrunnable(self, job: Job, body: str, outcome: Outcome) -> None:
        # A record of the job's own (it was enqueued by an app that registers it) keeps its
        # fields; else the message's raw body stands for its arguments.
        pipe = self.client.pipeline(transaction=False)
        fields = {"worker": job.name, "queue": job.queue, "args": json.dumps(body), "attempts": 0}
        for field, value in {**fields, "enqueued_at": _ts(utcnow())}.items():
            pipe.hsetnx(self.key(job.id), field, value)
        pipe.execute()
        self.record_outcome(job, outcome)

    def record_outcome(self, job: Job, outcome: Outcome) -> None:
        """One script: the record, the unique key's release, the indexes and the minute's
        count, atomically and in one round trip."""
        self._run(self._outcome, [self.key(job.id)], self.outcome_args(job, outcome, utcnow()))

    def add_outcome(self, pipe: Any, job: Job, outcome: Outcome) -> None:
        """``record_outcome``'s script, queued in ``pipe`` (which a caller executes)."""
        self._outcome(keys=[self.key(job.id)], args=self.outcome_args(job, outcome, utcnow()), client=pipe)

    def outcome_args(self, job: Job, outcome: Outcome, now: datetime) -> list[Any]:
        """The ``_OUTCOME`` script's ARGV for ``outcome`` at ``now`` (also for bulk loads)."""
        epoch = now.timestamp()
        error = outcome.error_text
        value = outcome.value
        result = result_json(value, job.id) if value is not None and outcome.ok else None
        return [
            *(job.id, _SETTLED[outcome.kind], _ts(now), epoch),
            *("1" if error is not None else "0", error or "", outcome.traceback or "", _ts(outcome.retry_at)),
            *(self._keep, INDEX, f"{PREFIX}failed", f"{PREFIX}cancel", f"{ENDED}{int(epoch // 60)}"),
            *(ENDED_TTL, job.queue, DUE, result or "", outcome.error_class or ""),
        ]

    def note_lost(self, task_id: str) -> int:
        return int(self.client.hincrby(self.key(task_id), "lost", 1))

    # -- reads -------------------------------------------------------------------------------

    def get(self, job_id: str) -> JobInfo | None:
        return self._info(job_id, self.client.hgetall(self.key(job_id)))

    def _info(self, job_id: str, h: dict[str, str]) -> JobInfo | None:
        if not h or h.get("status") in (None, DISCARDED):
            return None
        status = h["status"]
        run_at = _dt(h.get("run_at"))
        if status == "scheduled" and (run_at is None or run_at <= utcnow()):
            status = "queued"
        try:
            args = json.loads(h.get("args") or "null")
        except ValueError:
            args = h.get("args")
        priority = h.get("priority")
        result = h.get("result")
        return JobInfo(
            id=job_id,
            worker=h.get("worker", ""),
            queue=h.get("queue", ""),
            args=args,
            status=cast(JobStatus, status),
            attempts=int(h.get("attempts") or 0),
            last_error=h.get("last_error") or None,
            traceback=h.get("traceback") or None,
            enqueued_at=_dt(h.get("enqueued_at")),
            run_at=run_at,
            started_at=_dt(h.get("started_at")),
            finished_at=_dt(h.get("finished_at")),
            priority=int(priority) if priority else None,
            result=_loads(result) if result else None,
            error_class=h.get("error_class") or None,
        )

    def failed(self, worker: str | None = None, limit: int = 100) -> list[JobInfo]:
        found: list[JobInfo] = []
        start, page = 0, max(limit, 100)
        while len(found) < limit:
            ids = self.client.zrevrange(f"{PREFIX}failed", start, start + page - 1)
            if not ids:
                break
            pipe = self.client.pipeline(transaction=False)
            for job_id in ids:
                pipe.hgetall(self.key(job_id))
            for job_id, h in zip(ids, pipe.execute(), strict=True):
                info = self._info(job_id, h)
                if info is not None and info.status == "failed" and worker in (None, info.worker):
                    found.append(info)
            start += page
        return found[:limit]

    # -- changes -----------------------------------------------------------------------------

    def discard(self, job_id: str) -> bool:
        info = self.get(job_id)
        if info is None or info.status not in ("failed", "cancelled"):
            return False
        key = self.key(job_id)
        ttl = int(self.client.ttl(key)) if info.status == "cancelled" else 0
        # (A failed or cancelled job released its unique key when it failed or was cancelled.)
        pipe = self.client.pipeline(transaction=True)
        pipe.delete(key)
        if info.status == "cancelled":
            # Its message may still wait in the broker: a tombstone (which reads as no job)
            # keeps the worker from running it, as long as the record would have lived.
            pipe.hset(key, "status", DISCARDED)
            pipe.expire(key, max(ttl, WAITING_TTL))
        pipe.zrem(f"{PREFIX}failed", job_id)
        pipe.zrem(f"{INDEX}{info.status}:{info.queue}", job_id)
        pipe.execute()
        return True

    def cancel(self, job_id: str) -> bool:
        # The message stays in the broker's list; its worker acks it without running it.
        key = self.key(job_id)
        now = utcnow()
        argv: list[Any] = [_ts(now), self._keep, job_id, now.timestamp(), INDEX, DUE]
        if int(cast(Any, self._cancel(keys=[key], args=argv))) != 1:
            return False
        self._release_unique(keys=[key], args=[job_id])
        return True

    def request_cancel(self, job_id: str) -> bool:
        info = self.get(job_id)
        if info is None or info.status != "processing":
            return False
        self.client.sadd(f"{PREFIX}cancel", job_id)
        return True

    def cancel_requested(self, job_ids: Iterable[str]) -> set[str]:
        ids = list(job_ids)
        if not ids:
            return set()
        flags = self.client.smismember(f"{PREFIX}cancel", ids)
        return {job_id for job_id, flag in zip(ids, flags, strict=True) if flag}

    def forget_failed(self, job_id: str) -> None:
        self.client.zrem(f"{PREFIX}failed", job_id)

    # -- what the dashboard reads (redis_monitor.py) ----------------------------------------

    def jobs(self, query: JobQuery) -> JobPage:
        from unified_jobs.adapters.celery.kinds import redis_monitor

        return redis_monitor.jobs(self, query)

    def status_counts(self) -> dict[str, int]:
        from unified_jobs.adapters.celery.kinds import redis_monitor

        return redis_monitor.status_counts(self)

    def queue_stats(self) -> list[QueueStats]:
        from unified_jobs.adapters.celery.kinds import redis_monitor

        return redis_monitor.queue_stats(self)

    def throughput(self, minutes: int = 60) -> list[ThroughputBucket]:
        from unified_jobs.adapters.celery.kinds import redis_monitor

        return redis_monitor.throughput(self, minutes)

    def run_now(self, job_id: str) -> bool:
        """Takes the job's message from its queue's delayed set and pushes it to its list, due
        now (Redis kind). The RabbitMQ kind's store cannot: the message waits in RabbitMQ's
        delay queues, which hand nothing back early."""
        from unified_jobs.adapters.celery.kinds import redis_monitor

        if not self.shares_broker:
            info = self.get(job_id)
            if info is not None and info.status in ("scheduled", "retrying"):
                logger.info(
                    "job %s cannot be made due now: its message waits in the broker's delay queues, "
                    "which give no message back early; cancel it and enqueue it again instead",
                    job_id,
                )
            return False
        return redis_monitor.run_now(self, job_id)

    def close(self) -> None:
        self._packed.close()
        self.client.close()


def _loads(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:  # not written by _OUTCOME
        return None


def _both(job: Job) -> str:
    return json.dumps({"args": json.loads(job.args_json), "kwargs": json.loads(job.kwargs_json)})


class RedisKind(QueueKind):
    cancel_running = True
    records_unrunnable = True
    pushes_now = True

    def broker_settings(self) -> dict[str, Any]:
        queue = self.queue
        restore_every = max(1, min(10, queue.visibility_timeout // 4))
        options: dict[str, Any] = {
            "visibility_timeout": queue.visibility_timeout,
            # Sweep for a dead worker's unacked jobs every few seconds, not every 100 s.
            "unacked_restore_interval": restore_every,
            "unacked_restore_throttle": 1,
            # Our priorities are 0-9 (higher first); kombu's Redis lists are ordered 0 first.
            "queue_order_strategy": "priority",
            "priority_steps": list(range(10)),
            # A server that does not answer fails the command (the publish, the worker's moves
            # and acks) after these, instead of hanging. The consumer's BRPOP (1 s on the
            # server's side) is read when its socket is readable, so no socket timeout cuts
            # its wait short, whatever read_timeout is.
            "socket_connect_timeout": queue.connect_timeout_sec,
            "socket_timeout": queue.read_timeout_sec,
            # A connection dropped while idle (a NAT or firewall timeout) is found by the
            # keepalives, not by a publish that waits read_timeout on it (redis-py's defaults;
            # kombu turns them off).
            "socket_keepalive": True,
            "socket_keepalive_options": dict(KEEPALIVE_OPTIONS),
        }
        # kombu's Redis transport, whose delayed messages wait in a sorted set until due
        # (redis_transport.py), not unacked in a worker past the visibility timeout.
        sentinel = queue.uri.strip().lower().startswith("sentinel:")
        transport = "SentinelTransport" if sentinel else "Transport"
        return {
            "broker_url": queue.uri,
            "broker_transport": f"unified_jobs.adapters.celery.kinds.redis_transport:{transport}",
            "broker_transport_options": options,
        }

    def push_now(self, job: Job, list_key: str, message: str) -> None:
        store = self.store
        assert isinstance(store, RedisJobStore)
        store.push_enqueued(job, list_key, message)

    def push_many(self, jobs: list[Job], messages: list[tuple[str, str]]) -> None:
        store = self.store
        assert isinstance(store, RedisJobStore)
        store.push_enqueued_many(jobs, messages)

    def record_with_publish(self, jobs: list[Job]) -> AbstractContextManager[Any] | None:
        store = self.store
        assert isinstance(store, RedisJobStore)
        return riding(Rider(lambda pipe: store.add_enqueued(pipe, jobs)))

    def record_outcome_with_publish(self, job: Job, outcome: Outcome) -> AbstractContextManager[Any] | None:
        store = self.store
        assert isinstance(store, RedisJobStore)
        return riding(Rider(lambda pipe: store.add_outcome(pipe, job, outcome)))

    def publish_priority(self, priority: int) -> int:
        # kombu's Redis transport serves 0 first (and puts a message without a priority
        # there), so every message gets its inverted priority.
        return 9 - priority

    def make_store(self) -> JobStore:
        return RedisJobStore(
            self.queue.uri,
            self.workers.keep_completed,
            shares_broker=True,
            connect_timeout=self.queue.connect_timeout_sec,
            read_timeout=self.queue.read_timeout_sec,
        )

    def fail_delivery(self, app: Any, job: Job, delivery_tag: str | None, error: str) -> None:
        # The job store says failed; the message, held unacked by the dead process, is acked
        # (the channel's ack of a tag it never delivered only removes the unacked entries),
        # rather than restored after visibility_timeout.
        if delivery_tag is None:
            return
        with short_connection(app, write=True) as conn:
            conn.default_channel.qos.ack(delivery_tag)

    def requeue_lost(self, app: Any, job: Job, delivery_tag: str | None) -> None:
        # kombu's restore of an unacked message, at the head of its list (it was taken first).
        if delivery_tag is None:
            return
        with short_connection(app, write=True) as conn:
            conn.default_channel.qos.restore_by_tag(delivery_tag, leftmost=True)

    def lost_deliveries(self, task_id: str, delivery_tag: Any) -> int:
        store = self.store
        assert isinstance(store, RedisJobStore)
        return store.note_lost(task_id)

    def health(self, *, fix: bool, timeout: float) -> list[Check]:
        from kombu.connection import Connection

        settings = self.broker_settings()
        where = f"Redis at {mask_uri(self.queue.uri)}"
        try:
            options = {**settings["broker_transport_options"], "socket_timeout": timeout}
            conn: Any = Connection(  # type: ignore[no-untyped-call]
                settings["broker_url"], connect_timeout=timeout, transport_options=options
            )
        except Exception as exc:
            return [("fail", "queue", f"{where}: cannot set up a connection: {exc}")]
        started = time.monotonic()
        try:
            conn.ensure_connection(max_retries=0)  # the Redis channel PINGs the server
        except Exception as exc:
            return [("fail", "queue", not_answering(where, exc))]
        finally:
            conn.release()
        return [("ok", "queue", f"{where} answered PING in {(time.monotonic() - started) * 1000:.0f} ms")]

    def queue_lengths(self, app: Any, names: list[str]) -> tuple[dict[str, int], dict[str, int]]:
        from unified_jobs.adapters.celery.kinds.redis_transport import delayed_counts

        queued: dict[str, int] = {}
        reserved: dict[str, int] = {}
        with short_connection(app) as conn:
            channel: Any = conn.default_channel
            client = channel.client
            # Delayed jobs wait in a sorted set per queue until due: queued too.
            raw = redis.Redis(connection_pool=channel.pool)  # unprefixed: the keys get it here
            delayed = delayed_counts(raw, names, channel.global_keyprefix or "")
            for name in names:
                # kombu keeps one list per priority level: "<queue>" and "<queue>\x06\x16<n>".
                keys = dict.fromkeys(channel._q_for_pri(name, pri) for pri in channel.priority_steps)
                queued[name] = sum(int(client.llen(key)) for key in keys) + delayed[name]
            # Jobs a worker took and has not acked (running, prefetched, or due within a second).
            for _tag, raw in client.hscan_iter(channel.unacked_key, count=500):
                try:
                    routing_key = json.loads(raw)[2]
                except (ValueError, IndexError, TypeError):
                    continue
                reserved[routing_key] = reserved.get(routing_key, 0) + 1
        for name in reserved:
            queued.setdefault(name, 0)
        return queued, reserved

    def purge_queues(self, app: Any, names: list[str]) -> dict[str, int]:
        """The queues' lists, and their delayed jobs (whatever their due time)."""
        from unified_jobs.adapters.celery.kinds.redis_transport import purge_delayed

        # The delayed ones first: one a mover pushes to its list meanwhile is purged with it.
        with short_connection(app, write=True) as conn:
            channel: Any = conn.default_channel
            raw = redis.Redis(connection_pool=channel.pool)
            delayed = purge_delayed(raw, names, channel.global_keyprefix or "")
        purged = super().purge_queues(app, names)
        return {name: purged[name] + delayed[name] for name in names}

    def make_schedule_state(self) -> Any:  # a ScheduleState (annotated so in QueueKind)
        from unified_jobs.adapters.celery.kinds.redis_schedules import RedisScheduleState

        return RedisScheduleState(
            self.queue.uri,
            connect_timeout=self.queue.connect_timeout_sec,
            read_timeout=self.queue.read_timeout_sec,
        )
