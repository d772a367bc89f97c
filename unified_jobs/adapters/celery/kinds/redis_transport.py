"""The Redis kind's transport: kombu's Redis transport, whose delayed messages wait in Redis.

kombu's stock transport pushes a message with an eta (``perform_later(wait=...)``, a retry with
backoff, an adopted app's ``countdown=``) to its queue's list at once; a worker takes it and
holds it unacked until due, and past ``visibility_timeout`` kombu hands it out again, so a
long delay ran twice or more (kombu#337). Here a message due more than ``IMMEDIATE`` seconds
ahead is not pushed: ``Channel._put`` adds it to a sorted set of its queue instead,
``unified_jobs:delayed:<queue>``, scored by its due time (epoch seconds), as
``<list key>\\0<message>`` (the list kombu would have pushed it to, priority included), and
adds the queue to the index ``unified_jobs:delayed`` (a sorted set of queues scored by their
earliest due time). Both in one MULTI/EXEC, or in the publish batch's.

Every process that consumes (a worker's main process) runs a ``Mover``: a daemon thread that
every ``MOVE_EVERY`` seconds runs one Lua script, which pushes the due messages to their lists
and removes them from the sets, atomically; with many workers each message is moved once, by
whichever gets there first. "Due" is judged by the Redis server's clock (``TIME``), the same
for every mover; the due time itself is the eta, set by the publisher's clock.

Publish batches (``Producer.batch``, which ``perform_all_later`` uses) are MULTI/EXEC
transactions here, where kombu's are plain pipelines: a batch whose flush is cut off half way
leaves none of its messages, queued or delayed.

A publish may carry a ``Rider`` (``riding(rider)``, a context variable): the job store's
commands for the job being published, which ``_put`` sends in the message's own MULTI/EXEC.
One round trip per job instead of two, and the record and the message land together or not
at all. The channel also keeps one Redis client for its publishes, where kombu made a new one
(and its table of response callbacks) for each.

Taking a message: kombu's consumer BRPOPs it off its list and then holds it unacked (its
``QoS.append``, a second command). Between the two, the message is only in the reply and in the
worker's memory: a reply lost when Redis stops (the pop is already in its append-only file) or
a worker killed there lost it (kombu's known gap; a restart mid-drain lost about 1 job in
300 in about one CI run in 3 to 8). Here a consumer first runs ``FETCH``, a script that pops the
next message off the same lists in the same order and holds it unacked in one step, so a
message is always in a list or in the unacked hash (from which kombu's sweep restores it after
``visibility_timeout``). Only when FETCH finds every list empty does the consumer wait with
kombu's BRPOP (Redis has no blocking pop over many lists that moves rather than pops), and
FETCH again after it. Draining a backlog, every message is taken by FETCH; the gap is left only
for a message that reaches an idle worker's BRPOP. Where the unacked write after a BRPOP meets
Redis down, it is tried again until Redis answers (``QoS``): kombu gave up, and the message was
lost.
"""

from __future__ import annotations

import contextlib
import contextvars
import hashlib
import logging
import os
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from datetime import datetime, timezone
from queue import Empty
from typing import Any
from urllib.parse import quote

import redis
from kombu.transport import redis as kombu_redis
from kombu.transport import virtual
from kombu.utils.encoding import bytes_to_str
from kombu.utils.json import dumps as _kombu_dumps
from kombu.utils.json import loads
from kombu.utils.url import as_url

from unified_jobs.adapters.celery.kinds.redis_client import PackedCalls, pack_command
from unified_jobs.adapters.liveness import note_poll

__all__ = [
    "DELAYED_INDEX",
    "DELAYED_PREFIX",
    "Channel",
    "Mover",
    "Rider",
    "SentinelChannel",
    "SentinelTransport",
    "Transport",
    "delayed_counts",
    "due_time",
    "move_due",
    "purge_delayed",
    "riding",
]

logger = logging.getLogger(__name__)

#: The index: a sorted set of queue names, each scored by the earliest due time of its set.
DELAYED_INDEX = "unified_jobs:delayed"
#: ``DELAYED_PREFIX + queue``: the queue's delayed messages, scored by due time.
DELAYED_PREFIX = "unified_jobs:delayed:"
#: A message due within this many seconds goes to its list at once (the worker holds it).
IMMEDIATE = 0.5
#: Seconds between two rounds of a mover.
MOVE_EVERY = 0.5
#: Messages one script call moves at most (a round calls it again while more are due).
MOVE_LIMIT = 500
SEP = "\0"
#: kombu's JSON, as its own ``_put`` writes a message.
dumps: Any = _kombu_dumps

# KEYS[1]: the index; ARGV[1]: the prefix of the queues' sets; ARGV[2]: at most this many.
# Returns {moved, whether more are due}. The server's clock says what is due.
_MOVE = """
if redis.replicate_commands then redis.replicate_commands() end
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local limit = tonumber(ARGV[2])
local moved = 0
local queues = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, limit)
for _, queue in ipairs(queues) do
  local key = ARGV[1] .. queue
  local due = redis.call('ZRANGEBYSCORE', key, '-inf', now, 'LIMIT', 0, limit - moved)
  for _, member in ipairs(due) do
    local i = string.find(member, '\\0', 1, true)
    if i then redis.call('LPUSH', string.sub(member, 1, i - 1), string.sub(member, i + 1)) end
    redis.call('ZREM', key, member)
  end
  moved = moved + #due
  local first = redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')
  if #first == 0 then
    redis.call('ZREM', KEYS[1], queue)
  else
    redis.call('ZADD', KEYS[1], first[2], queue)
  end
  if moved >= limit then break end
end
local more = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, 1)
return {moved, #more}
"""


# KEYS[1], KEYS[2]: the unacked hash and its index (kombu's); KEYS[3..]: the lists, in the order
# kombu's BRPOP reads them. ARGV[1]: now (the client's clock, as kombu's QoS.append scores it);
# ARGV[2]: at most this many messages. Each take pops the first message of the first list that
# has one (as many BRPOPs in a row would) and holds it unacked as QoS.append would ([message,
# exchange, routing key], the message as it was pushed). Returns {list number, message, held}
# for each message taken, flat: held is 1, or 0 for a message that is not kombu's JSON (no
# delivery tag to hold it by), popped and not held as BRPOP would. Nothing in any list: nil.
_FETCH = """
local out = {}
local limit = tonumber(ARGV[2])
while #out < 3 * limit do
  local found = false
  for i = 3, #KEYS do
    local item = redis.call('RPOP', KEYS[i])
    if item then
      found = true
      local ok, m = pcall(cjson.decode, item)
      local p = ok and type(m) == 'table' and m['properties']
      local tag = type(p) == 'table' and p['delivery_tag']
      local info = type(p) == 'table' and p['delivery_info']
      local held = 0
      if type(tag) == 'string' and type(info) == 'table' then
        redis.call('ZADD', KEYS[2], ARGV[1], tag)
        local route = cjson.encode(info['exchange']) .. ',' .. cjson.encode(info['routing_key'])
        redis.call('HSET', KEYS[1], tag, '[' .. item .. ',' .. route .. ']')
        held = 1
      end
      table.insert(out, i - 2)
      table.insert(out, item)
      table.insert(out, held)
      break
    end
  end
  if not found then break end
end
if #out == 0 then return false end
return out
"""
_FETCH_SHA = hashlib.sha1(_FETCH.encode()).hexdigest()

#: Seconds a channel takes messages with BRPOP after Redis refused FETCH (then it tries again).
FETCH_REFUSED_PAUSE = 60.0
#: The most messages one FETCH takes (also bounded by the consumer's prefetch room).
FETCH_MAX = 10

#: Delivery tags FETCH held unacked whose ``QoS.append`` has not come yet (it skips the write).
_held: set[str] = set()


class Rider:
    """Commands (``add(pipeline)``) to send with the next message put on this context, in its
    transaction. ``pending`` until they were sent and the transaction succeeded."""

    __slots__ = ("add", "pending")

    def __init__(self, add: Callable[[Any], None]) -> None:
        self.add = add
        self.pending = True


_rider: contextvars.ContextVar[Rider | None] = contextvars.ContextVar("unified_jobs_rider", default=None)


@contextlib.contextmanager
def riding(rider: Rider) -> Iterator[Rider]:
    """Publishes in this block carry ``rider`` (the first ``_put`` sends it)."""
    token = _rider.set(rider)
    try:
        yield rider
    finally:
        _rider.reset(token)


def due_time(eta: Any) -> float | None:
    """The epoch seconds a message with this ``eta`` header (ISO 8601; naive is UTC) is due,
    or None if it has none, or one that cannot be read (the worker judges it as Celery does)."""
    if not eta:
        return None
    try:
        due = datetime.fromisoformat(eta) if isinstance(eta, str) else eta
    except ValueError:
        return None
    if not isinstance(due, datetime):
        return None
    if due.tzinfo is None:
        due = due.replace(tzinfo=timezone.utc)
    return due.timestamp()


def move_due(client: Any, prefix: str = "", limit: int = MOVE_LIMIT) -> int:
    """Move every due delayed message to its list (as many script calls as it takes); how many.
    ``client`` is a plain ``redis.Redis`` (keys are prefixed here with ``prefix``, kombu's
    ``global_keyprefix``)."""
    total = 0
    while True:
        moved, more = client.eval(_MOVE, 1, prefix + DELAYED_INDEX, prefix + DELAYED_PREFIX, limit)
        total += int(moved)
        if not int(more):
            return total


def delayed_counts(client: Any, names: list[str], prefix: str = "") -> dict[str, int]:
    """The delayed messages waiting for each of these queues."""
    pipe = client.pipeline(transaction=False)
    for name in names:
        pipe.zcard(prefix + DELAYED_PREFIX + name)
    return {name: int(n) for name, n in zip(names, pipe.execute(), strict=True)}


def purge_delayed(client: Any, names: list[str], prefix: str = "") -> dict[str, int]:
    """Delete the delayed messages of these queues; how many per queue."""
    pipe = client.pipeline(transaction=True)
    for name in names:
        pipe.zcard(prefix + DELAYED_PREFIX + name)
        pipe.delete(prefix + DELAYED_PREFIX + name)
        pipe.zrem(prefix + DELAYED_INDEX, name)
    counts = pipe.execute()[::3]
    return {name: int(n) for name, n in zip(names, counts, strict=True)}


class Mover:
    """A daemon thread that moves due delayed messages to their lists every ``interval``
    seconds (at once when it starts: a job that fell due while no worker ran), until
    ``stop`` or until its channel is closed or gone. A round that fails (Redis down) logs a
    warning, once per outage, and the next round tries again."""

    def __init__(self, channel: Any, interval: float = MOVE_EVERY) -> None:
        pool = channel._get_pool()  # a pool of its own (a Sentinel-managed one on Sentinel)
        options = pool.connection_kwargs
        # a hung server must not hang the thread for good
        options["socket_timeout"] = options.get("socket_timeout") or 10
        if "socket_connect_timeout" in options:  # not for a Unix socket
            options["socket_connect_timeout"] = options["socket_connect_timeout"] or 5
        self.client: Any = redis.Redis(connection_pool=pool)  # plain: keys are prefixed here
        self.prefix: str = channel.global_keyprefix or ""
        self.interval = interval
        self.pid = os.getpid()
        self._channel = weakref.ref(channel)
        self._stop = threading.Event()
        self._failing = False
        self.thread = threading.Thread(target=self._run, name="unified-jobs-delayed-mover", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self._stop.set()

    @property
    def alive(self) -> bool:
        return self.pid == os.getpid() and self.thread.is_alive() and not self._stop.is_set()

    def _channel_open(self) -> bool:
        channel = self._channel()
        return channel is not None and not channel.closed and not channel._closing

    def _run(self) -> None:
        try:
            while not self._stop.is_set() and self._channel_open():
                self.round()
                self._stop.wait(self.interval)
        finally:
            with contextlib.suppress(Exception):
                self.client.connection_pool.disconnect()

    def round(self) -> int:
        try:
            moved = move_due(self.client, self.prefix)
        except redis.RedisError as exc:
            if not self._failing:
                logger.warning("cannot move due delayed jobs to their queues (trying again): %s", exc)
            self._failing = True
            return 0
        if self._failing:
            logger.warning("moving due delayed jobs to their queues again")
            self._failing = False
        return int(moved)


_lock = threading.Lock()
_mover: Mover | None = None


def _forget_mover() -> None:
    global _mover
    _mover = None  # the thread did not survive the fork; its owner is the parent's


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_mover)


def _ensure_mover(channel: Any) -> None:
    """Start this process' mover if it has none running (once per process)."""
    global _mover
    with _lock:
        if _mover is not None and _mover.alive:
            return
        _mover = Mover(channel)
        _mover.start()


#: Seconds between tries of an unacked entry's write while Redis does not answer (at most).
APPEND_RETRY_MAX = 1.0


def _worker_stopping() -> bool:
    from celery.worker import state

    return state.should_stop is not None or state.should_terminate is not None


class QoS(kombu_redis.QoS):
    """kombu's, whose ``append`` (the unacked entry of a message BRPOP just took off its list)
    is tried again while Redis does not answer. kombu's gave up at the first connection
    error, and the message, in no list and in no unacked hash by then, was gone (a Redis
    restart lost a job so, about once in 300)."""

    def append(self, message: Any, delivery_tag: Any) -> None:
        if delivery_tag in _held:  # FETCH holds it unacked already
            _held.discard(delivery_tag)
            virtual.QoS.append(self, message, delivery_tag)  # type: ignore[no-untyped-call]
            return
        delay, since, failed = 0.05, time.monotonic(), False
        while True:
            try:
                super().append(message, delivery_tag)  # type: ignore[no-untyped-call]
            except (redis.ConnectionError, redis.TimeoutError) as exc:
                if _worker_stopping():
                    logger.error(
                        "message %s (task id %s) was taken off its queue, but Redis did not answer "
                        "to hold it unacked and the worker is stopping: it is lost (%s)",
                        delivery_tag,
                        (message.headers or {}).get("id"),
                        exc,
                    )
                    raise
                if not failed:
                    logger.warning(
                        "Redis did not answer to hold message %s unacked (%s); trying again until it "
                        "does (it is in no queue meanwhile)",
                        delivery_tag,
                        type(exc).__name__,
                    )
                failed = True
                time.sleep(delay)
                delay = min(delay * 2, APPEND_RETRY_MAX)
                continue
            if failed:
                logger.warning(
                    "message %s is held unacked after %.1f s", delivery_tag, time.monotonic() - since
                )
            return

    def ack(self, delivery_tag: Any) -> None:
        # kombu's removes the unacked entry and its index entry in a MULTI pipeline through
        # redis-py, a fifth of a worker's main process per job. The same two commands go in
        # one write here, the entry first: cut short between them, the index entry left over
        # is dropped by kombu's sweep, which finds no message to restore for it.
        channel: Any = self.channel
        prefix = channel.global_keyprefix or ""
        command = pack_command(["HDEL", prefix + self.unacked_key, delivery_tag]) + pack_command(
            ["ZREM", prefix + self.unacked_index_key, delivery_tag]
        )
        channel.packed_calls()(command, replies=2)
        virtual.QoS.ack(self, delivery_tag)  # type: ignore[no-untyped-call]


class DelayedMixin:
    """What ``Channel`` and ``SentinelChannel`` add to kombu's Redis channels."""

    QoS = QoS
    _mover: Mover | None = None

    def _get_pool(self, asynchronous: bool = False) -> Any:
        transport = getattr(self, "connection", None)
        if transport is None or transport.client is None:
            # The connection closed (a connection loss: Celery's consumer closes it, and kombu's
            # transport lets go of its parameters), and something still uses this channel: an
            # ack Celery's event loop runs as it resets, a close cut short by the outage. kombu
            # raised AttributeError from _connparams here, which neither ack_log_error nor
            # Celery's reconnect catch: the hub was left without a poller, or the worker ended
            # ("Unrecoverable error") and ran nothing more. A connection error is what they
            # handle: the ack is logged as not done, and its message comes back after
            # visibility_timeout, where the job store tells that its attempt already ended.
            raise redis.ConnectionError("the connection of this Redis channel is closed")
        return super()._get_pool(asynchronous)  # type: ignore[misc]

    def packed_calls(self) -> PackedCalls:
        """Packed commands on connections made as this channel's pool makes them (its ``pool``
        raises ``redis.ConnectionError`` once the connection closed, as ``_get_pool`` says)."""
        pool = self.pool  # type: ignore[attr-defined]
        calls: PackedCalls | None = self.__dict__.get("_packed_calls")
        if calls is None or calls.pool is not pool:
            if calls is not None:
                calls.close()
            calls = self.__dict__["_packed_calls"] = PackedCalls(pool)
        return calls

    def _create_client(self, asynchronous: bool = False) -> Any:
        if asynchronous:
            return super()._create_client(asynchronous=True)  # type: ignore[misc]
        # One client for the channel's publishes (redis-py clients are thread-safe over their
        # pool); kombu builds a new one, with its table of response callbacks, for each.
        client = self.__dict__.get("_publish_client")
        if client is None or client.connection_pool is not self.pool:  # type: ignore[attr-defined]
            client = self.__dict__["_publish_client"] = super()._create_client()  # type: ignore[misc]
        return client

    def _put(self, queue: str, message: dict[str, Any], **kwargs: Any) -> Any:
        channel: Any = self
        due = due_time((message.get("headers") or {}).get("eta"))
        rider = _rider.get()
        if rider is not None and rider.pending and "_publish_batch" not in kwargs:
            if channel.global_keyprefix or (channel._expires and queue in channel._expires):
                # Not in one transaction here: the store's keys are not prefixed, and kombu's
                # own put adds expiries. The record first, as without a rider.
                with channel.conn_or_acquire() as client, client.pipeline(transaction=True) as pipe:
                    rider.add(pipe)
                    pipe.execute()
                rider.pending = False
            else:
                return self._put_riding(queue, message, due, rider)
        if due is None or due - time.time() <= IMMEDIATE:
            return super()._put(queue, message, **kwargs)  # type: ignore[misc]
        pri = channel._get_message_priority(message, reverse=False)
        # The list key as the script pushes it: raw, so with kombu's global_keyprefix.
        member = f"{channel.global_keyprefix or ''}{channel._q_for_pri(queue, pri)}{SEP}{dumps(message)}"
        key = DELAYED_PREFIX + queue  # the client prefixes these itself
        publish_batch = kwargs.pop("_publish_batch", None)
        if publish_batch is not None:
            publish_batch.add("zadd", key, {member: due})
            # nx, xx, ch, incr, gt, lt: only lower the queue's earliest due time
            publish_batch.add("zadd", DELAYED_INDEX, {queue: due}, False, False, False, False, False, True)
            return None
        with channel.conn_or_acquire() as client, client.pipeline(transaction=True) as pipe:
            pipe.zadd(key, {member: due})
            pipe.zadd(DELAYED_INDEX, {queue: due}, lt=True)
            pipe.execute()
        return None

    def _put_riding(self, queue: str, message: dict[str, Any], due: float | None, rider: Rider) -> None:
        """The rider's commands and the message (pushed to its list, or to its queue's delayed
        set) in one MULTI/EXEC."""
        channel: Any = self
        pri = channel._get_message_priority(message, reverse=False)
        with channel.conn_or_acquire() as client, client.pipeline(transaction=True) as pipe:
            rider.add(pipe)
            if due is None or due - time.time() <= IMMEDIATE:
                pipe.lpush(channel._q_for_pri(queue, pri), dumps(message))
            else:
                member = f"{channel._q_for_pri(queue, pri)}{SEP}{dumps(message)}"
                pipe.zadd(DELAYED_PREFIX + queue, {member: due})
                pipe.zadd(DELAYED_INDEX, {queue: due}, lt=True)
            pipe.execute()
        rider.pending = False

    #: The next take is a FETCH (else a BRPOP: the last FETCH found every list empty).
    _fetch_next = True
    #: The command in flight is a FETCH, over these lists.
    _fetching: list[str] | None = None
    #: Send the script itself, not its SHA: a channel's first (which loads it into Redis'
    #: script cache), and after a NOSCRIPT (Redis restarted and forgot it).
    _fetch_eval = True
    #: When Redis last refused FETCH (0.0: it did not).
    _fetch_refused_at = 0.0

    def _brpop_start(self, timeout: Any = None) -> None:
        if self._fetch_next:
            self._fetch_start()
        else:
            super()._brpop_start(timeout)  # type: ignore[misc]
        if getattr(self, "_in_poll", None):  # a take went out: this worker asks its queues for jobs
            note_poll()

    def _fetch_start(self) -> None:
        """Send FETCH over the lists BRPOP would wait on (its reply is read by ``_brpop_read``)."""
        channel: Any = self
        queues = channel._queue_cycle.consume(len(channel.active_queues))
        if not queues:
            return
        keys = [channel._q_for_pri(queue, pri) for pri in channel.priority_steps for queue in queues]
        prefix = channel.global_keyprefix or ""
        qos = channel.qos
        script = ("EVAL", _FETCH) if self._fetch_eval else ("EVALSHA", _FETCH_SHA)
        names = [qos.unacked_key, qos.unacked_index_key, *keys]
        connection = channel.client.connection
        channel._in_poll = connection
        channel._brpop_sent_at = time.monotonic()
        self._fetching = keys
        # As many as the prefetch limit lets this consumer take now (kombu's BRPOP takes one).
        room = qos.can_consume_max_estimate()
        limit = max(1, min(FETCH_MAX, room if room is not None else FETCH_MAX))
        args = (repr(time.time()), limit)
        connection.send_command(*script, len(names), *(prefix + name for name in names), *args)

    def _brpop_read(self, **options: Any) -> Any:
        keys = self._fetching
        if keys is None:  # kombu's BRPOP: whatever it read, FETCH first again
            refused = self._fetch_refused_at
            self._fetch_next = not refused or time.monotonic() - refused > FETCH_REFUSED_PAUSE
            return super()._brpop_read(**options)  # type: ignore[misc]
        channel: Any = self
        self._fetching = None
        try:
            try:
                reply = channel.client.parse_response(channel.client.connection, "EVALSHA", **options)
            except channel.connection_errors:
                channel.client.connection.disconnect()  # the next poll reconnects, as kombu's read
                raise
            except redis.exceptions.NoScriptError:
                self._fetch_eval = True
                raise Empty() from None
            except redis.ResponseError as exc:
                # A server that refuses the script (scripting disabled, a proxy): kombu's BRPOP
                # for a while, rather than an error at every poll.
                if not self._fetch_refused_at:
                    logger.warning(
                        "Redis refused the script that takes a message and holds it unacked in one "
                        "step (%s); taking messages with BRPOP for %d s",
                        exc,
                        FETCH_REFUSED_PAUSE,
                    )
                self._fetch_refused_at = time.monotonic()
                self._fetch_next = False
                raise Empty() from None
            self._fetch_eval = False
            self._fetch_refused_at = 0.0
            if not reply:
                self._fetch_next = False
                raise Empty()
            taken = [reply[i : i + 3] for i in range(0, len(reply), 3)]
            for n, (number, item, held) in enumerate(taken):
                dest = keys[int(number) - 1].rsplit(channel.sep, 1)[0]
                channel._queue_cycle.rotate(dest)
                payload = loads(bytes_to_str(item))  # type: ignore[no-untyped-call]
                tag = payload["properties"]["delivery_tag"] if int(held) else None
                if tag is not None:
                    _held.add(tag)
                try:
                    channel.connection._deliver(payload, dest)
                except BaseException:
                    # Not taken (the consumer failed on it): it stays held, and comes back after
                    # visibility_timeout, where BRPOP's would have been lost. The ones taken
                    # with it and not delivered yet go back to their lists at once.
                    _held.discard(tag)
                    self._put_back(taken[n + 1 :], keys)
                    raise
                if tag is not None and tag in _held:  # taken by a consumer without acks (no_ack)
                    _held.discard(tag)
                    channel.qos._remove_from_indices(tag).execute()
            return True
        finally:
            channel._in_poll = None
            channel._flush_brpop_reauth()

    def _put_back(self, taken: list[Any], keys: list[str]) -> None:
        """Messages FETCH took and held that were not delivered: back to the head of their
        lists (kombu's ``restore_by_tag``); one that was not held is pushed back as it was."""
        channel: Any = self
        for number, item, held in taken:
            try:
                if int(held):
                    tag = loads(bytes_to_str(item))["properties"]["delivery_tag"]  # type: ignore[no-untyped-call]
                    channel.qos.restore_by_tag(tag, leftmost=True)
                else:
                    with channel.conn_or_acquire() as client:  # it prefixes the key itself
                        client.rpush(keys[int(number) - 1], item)
            except Exception:  # held ones come back after visibility_timeout all the same
                logger.warning("could not put a taken message back on its list", exc_info=True)

    def basic_consume(self, queue: str, *args: Any, **kwargs: Any) -> Any:
        result = super().basic_consume(queue, *args, **kwargs)  # type: ignore[misc]
        # Job queues only: a remote-control client's reply queue (auto-delete, as Celery's
        # pidbox and event queues are) holds no delayed job, and its channel may live long.
        if queue not in getattr(self, "auto_delete_queues", ()):
            _ensure_mover(self)
        return result

    def create_publish_batch(self, max_size: int) -> PublishBatch:
        return PublishBatch(self, max_size)

    def close(self) -> None:
        with _lock:
            mover = _mover
        if mover is not None and mover._channel() is self:
            mover.stop()
        calls: PackedCalls | None = self.__dict__.pop("_packed_calls", None)
        if calls is not None:
            calls.close()
        super().close()  # type: ignore[misc]


class PublishBatch(kombu_redis.PublishBatch):
    """kombu's publish batch in a MULTI/EXEC transaction: all of it or none of it."""

    def __init__(self, channel: Any, max_size: int) -> None:  # kombu's, with transaction=True
        self.channel = channel
        self.max_size = max_size
        self._buffered = 0
        self._collecting = None
        self._failed = None
        self._aborted = False
        self._closed = False
        self._stack = ExitStack()
        try:
            client = self._stack.enter_context(channel.conn_or_acquire())
            self.pipeline = self._stack.enter_context(client.pipeline(transaction=True))
        except BaseException:
            self._stack.close()
            raise


class Channel(DelayedMixin, kombu_redis.Channel):
    pass


class SentinelChannel(DelayedMixin, kombu_redis.SentinelChannel):
    pass


class _ShownAsRedis:
    """The connection's URL in logs reads ``redis://...`` (kombu would put ``module:Class``,
    the ``broker_transport`` setting, where the scheme goes)."""

    client: Any
    scheme = "redis"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Read on the instance by Connection.as_uri only; kombu still parses the URL as for
        # its own Redis transport (it reads the class attribute for that).
        self.can_parse_url = True

    def as_uri(self, uri: str, include_password: bool = False, mask: str = "**") -> str:
        c = self.client
        scheme = f"{self.scheme}s" if c.ssl and self.scheme == "redis" else self.scheme
        vhost = quote(str(c.virtual_host)) if c.virtual_host is not None else ""
        url: str = as_url(
            scheme, c.hostname or "localhost", c.port, c.userid, c.password, vhost,
            sanitize=not include_password, mask=mask,
        )  # fmt: skip
        return url


class Transport(_ShownAsRedis, kombu_redis.Transport):
    """kombu's Redis transport whose delayed messages wait in a sorted set until due."""

    Channel = Channel


class SentinelTransport(_ShownAsRedis, kombu_redis.SentinelTransport):
    Channel = SentinelChannel
    scheme = "sentinel"
