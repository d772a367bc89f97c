"""What the dashboard reads from the Redis job store (``RedisJobStore.jobs`` and friends), and
``run_now`` on the Redis kind.

The indexes are written with each transition (see ``redis.py``): ``INDEX + "<status>:<queue>"``
sorted sets scored by when the job entered the status. Reads trust them only as far as the
job's hash agrees: a page is a script (``_WALK``) that walks the sorted sets of the statuses
and queues asked, newest first (merged on score), checks each entry against its hash, filters
by worker and text there (so only the matching ids travel), and drops the entries whose hash is
gone or says another status. It stops at what the page needs, or at ``CHECK_BATCH`` entries
(then it is called again from where it stopped: no call holds the server for long), and a
search at ``SEARCH_LIMIT``. Scheduled jobs that fell due are moved to ``queued`` (``_TIDY``)
before any read, and the completed entries past ``keep_completed`` dropped.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from unified_jobs.adapters.celery.kinds.redis import DUE, ENDED, INDEX, PREFIX, QUEUES
from unified_jobs.core.job import STATUSES, JobInfo, utcnow
from unified_jobs.core.monitor import SEARCH_LIMIT, JobPage, JobQuery, QueueStats, ThroughputBucket

if TYPE_CHECKING:
    from unified_jobs.adapters.celery.kinds.redis import RedisJobStore

__all__ = ["jobs", "queue_stats", "run_now", "status_counts", "throughput"]

#: Due scheduled jobs one ``_TIDY`` call moves at most (a read calls it again while more are due).
TIDY_LIMIT = 1000
#: Entries one ``_WALK`` call looks at, at most (a call holds the server a few milliseconds).
CHECK_BATCH = 1000
#: Entries ``_WALK`` reads from a sorted set at a time, at most: the first read takes what an
#: unfiltered page needs (or ``FIRST_FILTERED``), each next one twice the last.
CHUNK = 1000  # also the cap in _WALK's own fetch()
FIRST_FILTERED = 100

# Move the scheduled jobs due by ARGV[1] (epoch s) to queued (keeping their enqueue time), and
# drop completed entries scored before ARGV[5] (their records expired). KEYS: DUE, QUEUES.
# ARGV: 1 now, 2 the job key prefix, 3 INDEX, 4 at most this many, 5 the cutoff.
# Returns {how many due jobs were looked at, the queues}.
_TIDY = """
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[4]))
for _, id in ipairs(ids) do
  redis.call('ZREM', KEYS[1], id)
  local key = ARGV[2] .. id
  local h = redis.call('HMGET', key, 'status', 'queue')
  if h[1] == 'scheduled' and h[2] then
    local from = ARGV[3] .. 'scheduled:' .. h[2]
    local score = redis.call('ZSCORE', from, id)
    redis.call('ZREM', from, id)
    redis.call('HSET', key, 'status', 'queued')
    redis.call('ZADD', ARGV[3] .. 'queued:' .. h[2], score or ARGV[1], id)
  end
end
local queues = redis.call('SMEMBERS', KEYS[2])
for _, queue in ipairs(queues) do
  redis.call('ZREMRANGEBYSCORE', ARGV[3] .. 'completed:' .. queue, '-inf', '(' .. ARGV[5])
end
return {#ids, queues}
"""

# Check candidates against their hashes. ARGV: 1 the job key prefix, 2 INDEX, 3 a worker name or
# '', 4 lower-case text or '', 5 the number S of indexes, then (status, queue) of each, then runs
# of candidates: (index number 1..S, n, n ids). Returns one verdict per candidate, in order: 1 it
# matches, 0 it does not, -1 its hash is gone or says another status or queue (the entry is
# dropped from that index).
_CHECK = """
local out = {}
local prefix, index, worker, text = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local sources = tonumber(ARGV[5])
local i = 6 + 2 * sources
while i <= #ARGV do
  local s, n = tonumber(ARGV[i]), tonumber(ARGV[i + 1])
  local status, queue = ARGV[4 + 2 * s], ARGV[5 + 2 * s]
  for k = i + 2, i + 1 + n do
    local id = ARGV[k]
    local h = redis.call('HMGET', prefix .. id, 'status', 'queue', 'worker', 'args')
    if h[1] ~= status or h[2] ~= queue then
      redis.call('ZREM', index .. status .. ':' .. queue, id)
      out[#out + 1] = -1
    elseif (worker ~= '' and h[3] ~= worker)
        or (text ~= '' and not string.find(string.lower(h[4] or ''), text, 1, true)) then
      out[#out + 1] = 0
    else
      out[#out + 1] = 1
    end
  end
  i = i + 2 + n
end
return out
"""

# Walk index sets (KEYS) newest first, merged on score, checking each entry against its hash
# (as _CHECK does) and filtering it, until ARGV[4] entries were looked at or ARGV[5] matched.
# ARGV: 1 the job key prefix, 2 a worker name or '', 3 lower-case text or '', 4, 5, 6 the first
# fetch per set, then per set: its status, its queue, how many of its entries earlier calls took.
# Returns {the matching ids, each set's new offset, how many were looked at (dropped entries
# not counted), 1 if any set may hold more}.
_WALK = """
local prefix, worker, text = ARGV[1], ARGV[2], ARGV[3]
local limit, want, first = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
local n = #KEYS
local pos, rows, heads, full, size, taken, dropped, score = {}, {}, {}, {}, {}, {}, {}, {}
local function advance(s)  -- score[s]: the score of set s's next entry, or nil
  if heads[s] > #rows[s] and full[s] then
    local start = pos[s] + taken[s] - dropped[s]
    rows[s] = redis.call('ZREVRANGE', KEYS[s], start, start + size[s] - 1, 'WITHSCORES')
    heads[s] = 1
    full[s] = #rows[s] == 2 * size[s]
    size[s] = math.min(2 * size[s], 1000)
  end
  score[s] = heads[s] <= #rows[s] and tonumber(rows[s][heads[s] + 1]) or nil
end
for s = 1, n do
  pos[s], size[s], taken[s], dropped[s] = tonumber(ARGV[6 + 3 * s]), first, 0, 0
  rows[s], heads[s], full[s] = {}, 1, true
  advance(s)
end
local matches, looked = {}, 0
while looked < limit and #matches < want do
  local best, top = nil, nil
  for s = 1, n do
    local v = score[s]
    if v and (not best or v > top) then best, top = s, v end
  end
  if not best then break end
  local id = rows[best][heads[best]]
  heads[best] = heads[best] + 2
  taken[best] = taken[best] + 1
  advance(best)
  local status, queue = ARGV[4 + 3 * best], ARGV[5 + 3 * best]
  local h = redis.call('HMGET', prefix .. id, 'status', 'queue', 'worker', 'args')
  if h[1] ~= status or h[2] ~= queue then
    redis.call('ZREM', KEYS[best], id)
    dropped[best] = dropped[best] + 1
  else
    looked = looked + 1
    if (worker == '' or h[3] == worker)
        and (text == '' or string.find(string.lower(h[4] or ''), text, 1, true)) then
      matches[#matches + 1] = id
    end
  end
end
local offsets, more = {}, 0
for s = 1, n do
  offsets[s] = pos[s] + taken[s] - dropped[s]
  if heads[s] <= #rows[s] or full[s] then more = 1 end
end
return {matches, offsets, looked, more}
"""

# Take a delayed message out of its queue's sorted set (KEYS[1]) and push it, rewritten due now,
# to its list (KEYS[2]); the record (KEYS[3]) says queued (a retry stays retrying) and run_at
# now. Nothing if a mover took the message first (it fell due). ARGV: 1 the set's member, 2 the
# message to push, 3 now (ISO), 4 the job's id, 5 INDEX, 6 DUE.
_RUN_NOW = """
if redis.call('ZREM', KEYS[1], ARGV[1]) == 0 then return 0 end
redis.call('LPUSH', KEYS[2], ARGV[2])
local h = redis.call('HMGET', KEYS[3], 'status', 'queue')
redis.call('HSET', KEYS[3], 'run_at', ARGV[3])
if h[1] == 'scheduled' then
  redis.call('HSET', KEYS[3], 'status', 'queued')
  if h[2] then
    local from = ARGV[5] .. 'scheduled:' .. h[2]
    local score = redis.call('ZSCORE', from, ARGV[4])
    redis.call('ZREM', from, ARGV[4])
    if score then redis.call('ZADD', ARGV[5] .. 'queued:' .. h[2], score, ARGV[4]) end
  end
end
redis.call('ZREM', ARGV[6], ARGV[4])
return 1
"""

_ASCII_LOWER = {c: c + 32 for c in range(ord("A"), ord("Z") + 1)}


def _script(store: RedisJobStore, name: str, source: str) -> Any:
    """The store's registered script (made once per store)."""
    script = store.__dict__.get(name)
    if script is None:
        script = store.__dict__[name] = store.client.register_script(source)
    return script


def _tidy(store: RedisJobStore) -> list[str]:
    """Promote the due scheduled jobs and drop expired completed entries; the queues, sorted."""
    tidy = _script(store, "_tidy_script", _TIDY)
    while True:
        now = time.time()
        looked, queues = tidy(
            keys=[DUE, QUEUES], args=[now, f"{PREFIX}job:", INDEX, TIDY_LIMIT, now - store._keep]
        )
        if int(looked) < TIDY_LIMIT:
            return sorted(queues)


def jobs(store: RedisJobStore, query: JobQuery) -> JobPage:
    queues = _tidy(store)
    if query.queue is not None:
        queues = [query.queue] if query.queue in queues else []
    statuses = [query.status] if query.status is not None else list(STATUSES)
    sources = [(status, queue) for status in statuses for queue in queues]
    keys = [f"{INDEX}{status}:{queue}" for status, queue in sources]
    filtered = query.worker is not None or bool(query.text)
    text = (query.text or "").translate(_ASCII_LOWER)
    need = query.offset + query.limit + 1
    walk = _script(store, "_walk_script", _WALK)
    offsets = [0] * len(sources)
    found: list[str] = []
    seen: set[str] = set()
    looked = 0
    more = bool(sources)
    while more and len(found) < need:
        # Filtered, at most SEARCH_LIMIT entries are looked at; each call at most CHECK_BATCH,
        # so that none holds the server for long.
        limit = min(CHECK_BATCH, SEARCH_LIMIT - looked) if filtered else CHECK_BATCH
        if limit <= 0:
            break
        first = FIRST_FILTERED if filtered else min(need - len(found), CHUNK)
        argv: list[Any] = [f"{PREFIX}job:", query.worker or "", text, limit, need - len(found), first]
        for (status, queue), offset in zip(sources, offsets, strict=True):
            argv.extend((status, queue, offset))
        matches, new_offsets, n, may_be_more = walk(keys=keys, args=argv)
        looked += int(n)
        for job_id in matches:
            if job_id not in seen:  # a job that moved between two calls may show up twice
                seen.add(job_id)
                found.append(job_id)
        offsets = [int(offset) for offset in new_offsets]
        more = bool(int(may_be_more))
    searched = SEARCH_LIMIT if filtered and more and looked >= SEARCH_LIMIT and len(found) < need else None
    page = found[query.offset : query.offset + query.limit]
    infos = _infos(store, page)
    if query.status is not None:  # one that changed since it was checked is left out
        infos = [info for info in infos if info.status == query.status]
    return JobPage(jobs=infos, more=len(found) > query.offset + query.limit, searched=searched)


def _infos(store: RedisJobStore, ids: list[str]) -> list[JobInfo]:
    if not ids:
        return []
    pipe = store.client.pipeline(transaction=False)
    for job_id in ids:
        pipe.hgetall(store.key(job_id))
    infos = (store._info(job_id, h) for job_id, h in zip(ids, pipe.execute(), strict=True))
    return [info for info in infos if info is not None]


def status_counts(store: RedisJobStore) -> dict[str, int]:
    """Entries of each status' indexes: exact but for records that expired since the last read
    that met them (a cancelled job's record, past ``keep_completed``)."""
    queues = _tidy(store)
    pipe = store.client.pipeline(transaction=False)
    for status in STATUSES:
        for queue in queues:
            pipe.zcard(f"{INDEX}{status}:{queue}")
    sizes = iter(pipe.execute())
    counts = {status: sum(int(next(sizes)) for _ in queues) for status in STATUSES}
    return {status: n for status, n in counts.items() if n}


def queue_stats(store: RedisJobStore) -> list[QueueStats]:
    """Counted from the store's indexes, the same on the Redis and the RabbitMQ kinds: the
    broker's lists would also count the messages of cancelled jobs (acked unrun when a worker
    takes them), and carry no enqueue time."""
    queues = _tidy(store)
    counted = ("queued", "scheduled", "retrying", "processing", "failed")
    pipe = store.client.pipeline(transaction=False)
    for queue in queues:
        for status in counted:
            pipe.zcard(f"{INDEX}{status}:{queue}")
    sizes = iter(pipe.execute())
    stats = []
    for queue in queues:
        queued, scheduled, retrying, processing, failed = (int(next(sizes)) for _ in counted)
        oldest = _oldest_queued(store, queue) if queued else None
        stats.append(QueueStats(queue, queued, scheduled + retrying, processing, failed, oldest))
    return stats


def _oldest_queued(store: RedisJobStore, queue: str) -> datetime | None:
    """The enqueue time of the oldest queued job of ``queue`` (its index score), checked
    against its record."""
    check = _script(store, "_check_script", _CHECK)
    key = f"{INDEX}queued:{queue}"
    while True:
        rows = store.client.zrange(key, 0, 9, withscores=True)
        if not rows:
            return None
        argv: list[Any] = [f"{PREFIX}job:", INDEX, "", "", 1, "queued", queue, 1, len(rows)]
        argv.extend(job_id for job_id, _ in rows)
        for (_, score), verdict in zip(rows, check(args=argv), strict=True):
            if verdict == 1:
                return datetime.fromtimestamp(float(score), timezone.utc)


def throughput(store: RedisJobStore, minutes: int = 60) -> list[ThroughputBucket]:
    current = int(time.time() // 60)
    span = range(current - max(1, minutes) + 1, current + 1)
    pipe = store.client.pipeline(transaction=False)
    for minute in span:
        pipe.hmget(f"{ENDED}{minute}", "completed", "failed")
    return [
        ThroughputBucket(datetime.fromtimestamp(minute * 60, timezone.utc), int(done or 0), int(failed or 0))
        for minute, (done, failed) in zip(span, pipe.execute(), strict=True)
    ]


def run_now(store: RedisJobStore, job_id: str) -> bool:
    """The Redis kind: the job's message waits in ``unified_jobs:delayed:<queue>`` (scored by
    its due time, as ``<list key>\\0<message>``); it is taken out and pushed to its list with
    its ``eta`` header removed, so the worker that takes it runs it at once."""
    from unified_jobs.adapters.celery.kinds.redis_transport import DELAYED_PREFIX, SEP, dumps

    info = store.get(job_id)
    now = utcnow()
    if (
        info is None
        or info.status not in ("scheduled", "retrying")
        or info.run_at is None
        or info.run_at <= now
    ):
        return False
    key = DELAYED_PREFIX + info.queue
    due = info.run_at.timestamp()
    member = _find_delayed(store, key, job_id, store.client.zrangebyscore(key, due - 2, due + 2))
    if member is None:  # not where its run_at says: look through the whole set
        member = _find_delayed(
            store, key, job_id, store.client.zscan_iter(key, match=f"*{job_id}*", count=500)
        )
    if member is None:
        return False  # a mover pushed it to its list meanwhile: it is due anyway
    list_key, _, raw = member.partition(SEP)
    message = json.loads(raw)
    message.setdefault("headers", {})["eta"] = None
    keys = [key, list_key, store.key(job_id)]
    script = _script(store, "_run_now_script", _RUN_NOW)
    done = script(keys=keys, args=[member, dumps(message), now.isoformat(), job_id, INDEX, DUE])
    return bool(int(done))


def _find_delayed(store: RedisJobStore, key: str, job_id: str, members: Iterable[Any]) -> str | None:
    """The member of a delayed set whose message is job ``job_id``'s."""
    from unified_jobs.adapters.celery.kinds.redis_transport import SEP

    for entry in members:
        member = entry[0] if isinstance(entry, tuple) else entry
        _, sep, raw = str(member).partition(SEP)
        if not sep or job_id not in raw:
            continue
        try:
            headers = json.loads(raw).get("headers") or {}
        except ValueError:
            continue
        if headers.get("id") == job_id:
            return str(member)
    return None
