"""The schedule state on Redis: one hash, ``unified_jobs:schedules``, a field per schedule
holding its record as JSON; the compare-and-set is a Lua script, so it is atomic on the server.

Used by the Redis kind (on the queue's Redis) and the RabbitMQ kind (on its Redis job store,
``queue.store_uri``).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime, timedelta, timezone
from typing import Any, cast

from unified_jobs.adapters.celery.kinds.redis_client import (
    DEFAULT_CONNECT_TIMEOUT,
    DEFAULT_READ_TIMEOUT,
    bounded_client,
)
from unified_jobs.scheduler.state import ScheduleState, TickRecord

__all__ = ["KEY", "RedisScheduleState"]

KEY = "unified_jobs:schedules"

_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)

# KEYS[1] the hash; ARGV: name, the tick in microseconds since the epoch, the new record.
_ADVANCE = """
local current = redis.call('HGET', KEYS[1], ARGV[1])
if current then
  local tick = cjson.decode(current)['tick_us']
  if tick and tick ~= cjson.null and tonumber(tick) >= tonumber(ARGV[2]) then return 0 end
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
return 1
"""

# ARGV: name, the tick in microseconds, the job id.
_NOTE_JOB = """
local current = redis.call('HGET', KEYS[1], ARGV[1])
if not current then return 0 end
local record = cjson.decode(current)
if tostring(record['tick_us']) ~= ARGV[2] then return 0 end
record['job'] = ARGV[3]
redis.call('HSET', KEYS[1], ARGV[1], cjson.encode(record))
return 1
"""


def _us(value: datetime) -> int:
    return (value - _EPOCH) // timedelta(microseconds=1)


def _dt(value: Any) -> datetime | None:
    return datetime.fromisoformat(value) if isinstance(value, str) and value else None


class RedisScheduleState(ScheduleState):
    def __init__(
        self,
        url: str,
        *,
        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
        read_timeout: float = DEFAULT_READ_TIMEOUT,
    ) -> None:
        self.client: Any = bounded_client(url, connect_timeout=connect_timeout, read_timeout=read_timeout)
        self._advance = self.client.register_script(_ADVANCE)
        self._note = self.client.register_script(_NOTE_JOB)

    def get(self, names: Sequence[str]) -> dict[str, TickRecord]:
        if not names:
            return {}
        out: dict[str, TickRecord] = {}
        for name, raw in zip(names, self.client.hmget(KEY, list(names)), strict=True):
            if not raw:
                continue
            try:
                data = json.loads(raw)
            except ValueError:
                continue
            out[name] = TickRecord(
                name=name,
                last_tick=_dt(data.get("tick")),
                last_by=data.get("by") or None,
                last_job_id=data.get("job") or None,
                updated_at=_dt(data.get("updated_at")),
            )
        return out

    def advance(self, name: str, tick: datetime, by: str | None) -> bool:
        tick = tick.astimezone(timezone.utc)
        # tick_us is a string: Lua numbers are doubles, and cjson would print a big one as 1e+15.
        record = {
            "tick": tick.isoformat(),
            "tick_us": str(_us(tick)),
            "by": by,
            "job": None,
            "updated_at": datetime.now(timezone.utc).isoformat(),
        }
        won = self._advance(keys=[KEY], args=[name, _us(tick), json.dumps(record)])
        return int(cast(Any, won)) == 1

    def note_job(self, name: str, tick: datetime, job_id: str) -> None:
        self._note(keys=[KEY], args=[name, str(_us(tick.astimezone(timezone.utc))), job_id])

    def forget(self, names: Sequence[str]) -> None:
        if names:
            self.client.hdel(KEY, *names)

    def close(self) -> None:
        self.client.close()
