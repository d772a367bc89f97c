"""A Worker job's message, built as Celery's ``send_task`` and kombu's ``Producer.publish`` build
it, without their per-call machinery (routing, option merging, the producer pool, ``ensure``,
the queue declaration): the Redis kind pushes it with the job's record in one command, and the
SQL kinds insert a batch's rows in one statement.

The message is Celery's own: its headers, properties and body come from
``app.amqp.as_task_v2``, the function ``send_task`` calls, with what ``send_task`` passes it
(the task's time limits, the thread's reply queue, the parent and root of a job enqueued from a
task). The envelope is kombu's virtual transport's (``prepare_message`` and what
``basic_publish`` adds). ``tests/integration/test_lean_publish.py`` compares the two, field by
field, with what ``send_task`` pushes for the same jobs.

Used only where nothing in the app's configuration could make Celery publish the message
differently (``usable``): otherwise, ``send_task`` as before.
"""

from __future__ import annotations

import base64
import uuid
from typing import Any

from celery import signals
from kombu.serialization import dumps as _serialize
from kombu.transport import redis as kombu_redis
from kombu.utils.json import dumps as _json_dumps

from unified_jobs.core.job import Job

__all__ = ["LeanPublisher"]

serialize: Any = _serialize
json_dumps: Any = _json_dumps

#: Task options a Worker's Celery task may carry that this builder handles; any other
#: (``Task._get_exec_options``: a queue, exchange, priority, expires... of the task's own)
#: leaves the message to ``send_task``.
_HANDLED_OPTIONS = frozenset({"serializer", "time_limit", "soft_time_limit"})
#: Settings that change how Celery publishes, at these values: the lean path is the same.
_PLAIN_SETTINGS = {
    "task_send_sent_event": False,
    "task_routes": None,
    "task_compression": None,
    "task_serializer": "json",
    "task_protocol": 2,
    "task_inherit_parent_priority": False,
}


class LeanPublisher:
    """Builds a Worker job's message for the Redis kind's list (``envelope``)."""

    def __init__(self, app: Any, own_router: Any = None) -> None:
        self.app = app
        #: The bridge's router (a Worker to its queue): the queue is given explicitly here.
        self.own_router = own_router
        self._usable: dict[tuple[str, str], bool] = {}
        self._modes: dict[str, int] = {}  # a queue's delivery mode

    def usable(self, job: Job) -> bool:
        """Whether ``send_task`` would publish ``job`` as ``envelope`` builds it."""
        # Anyone listening to the publish (``before_task_publish`` may change the message).
        if signals.before_task_publish.receivers or signals.after_task_publish.receivers:
            return False
        key = (job.name, job.queue)
        known = self._usable.get(key)
        if known is None:  # the settings are read once a worker and queue (they are slow to read)
            known = self._usable[key] = self._settings_allow(job)
        return known

    def _settings_allow(self, job: Job) -> bool:
        app = self.app
        conf = app.conf
        for key, value in _PLAIN_SETTINGS.items():
            setting = conf.get(key)
            if key == "task_routes" and setting and all(r == self.own_router for r in setting):
                continue
            if setting != value and not (value is None and not setting):
                return False
        options = app.conf.broker_transport_options or {}
        if options.get("global_keyprefix"):
            return False
        task = app.tasks.get(job.name)
        if task is None:
            return False
        exec_options = {k: v for k, v in task._get_exec_options().items() if v is not None}
        if set(exec_options) - _HANDLED_OPTIONS or exec_options.get("serializer", "json") != "json":
            return False
        queue = app.amqp.queues.get(job.queue)
        return queue is None or getattr(queue.exchange, "type", "direct") == "direct"

    @staticmethod
    def envelope(queue: str, message: dict[str, Any]) -> tuple[str, str]:
        """(the list key, the text) of ``message`` (of ``message()``) as kombu's Redis
        transport pushes it to ``queue``, its priority included."""
        priority = message["properties"]["priority"]
        key = f"{queue}{kombu_redis.Channel.sep}{priority}" if priority else queue
        return key, json_dumps(message)

    def message(
        self, job: Job, args: list[Any], kwargs: dict[str, Any], headers: dict[str, Any], priority: int
    ) -> dict[str, Any]:
        """The message of ``job`` (due at its ``run_at``, or now) as kombu's virtual transports
        hand it to their ``_put``."""
        app = self.app
        task = app.tasks[job.name]
        root_id = parent_id = None
        parent = app.current_worker_task
        if parent:
            root_id = parent.request.root_id or parent.request.id
            parent_id = parent.request.id
        amqp = app.amqp
        headers2, properties, body, _ = amqp.as_task_v2(
            job.id,
            job.name,
            args,
            kwargs,
            # What as_task_v2 would write: it makes empty args () and empty kwargs {} first.
            argsrepr=plain_repr(args or (), amqp.argsrepr_maxsize),
            kwargsrepr=plain_repr(kwargs or {}, amqp.kwargsrepr_maxsize),
            eta=job.run_at,
            reply_to=app.thread_oid,
            time_limit=getattr(task, "time_limit", None),
            soft_time_limit=getattr(task, "soft_time_limit", None),
            root_id=root_id,
            parent_id=parent_id,
            ignore_result=None,  # send_task passes the option's, None unless given
        )
        if headers:
            headers2.update(headers)
        content_type, content_encoding, data = serialize(body, serializer="json")
        if isinstance(data, str):
            data = data.encode(content_encoding)
        mode = self._modes.get(job.queue)
        if mode is None:
            queue = app.amqp.queues.get(job.queue)
            mode = getattr(getattr(queue, "exchange", None), "delivery_mode", None)
            mode = self._modes[job.queue] = mode or _delivery_mode(app.conf.task_default_delivery_mode)
        return {
            "body": base64.b64encode(data).decode("ascii"),
            "content-encoding": content_encoding,
            "content-type": content_type,
            "headers": headers2,
            "properties": {
                **properties,
                "delivery_mode": mode,
                "delivery_info": {"exchange": "", "routing_key": job.queue},
                "priority": priority,
                "body_encoding": "base64",
                "delivery_tag": str(uuid.uuid4()),
            },
        }


def _delivery_mode(mode: Any) -> int:
    """kombu's delivery mode number (2: persistent, 1: transient) of a setting's value."""
    if isinstance(mode, int):
        return mode
    return 1 if str(mode).lower() == "transient" else 2


#: Exact types (a subclass, an IntEnum say, has a repr of its own).
_SCALARS = frozenset({bool, int, float, type(None)})


def _plain_str(text: str) -> bool:
    """Whether ``repr(text)`` is what Celery's ``saferepr`` writes: printable ASCII that needs
    no escaping and no choice of quotes."""
    return text.isascii() and text.isprintable() and "'" not in text and '"' not in text and "\\" not in text


def _plain(value: Any) -> bool:
    kind = type(value)
    return kind in _SCALARS or (kind is str and _plain_str(value))


def plain_repr(value: Any, maxsize: int | None) -> str | None:
    """``repr(value)`` where it is what ``celery.utils.saferepr.saferepr(value, maxsize)`` returns
    (about 20 times faster): a flat dict of plain keys and values, or a flat list or tuple of
    plain values, well under ``maxsize``; None otherwise (then ``as_task_v2`` calls saferepr)."""
    if type(value) is dict:
        if not all(type(k) is str and _plain_str(k) and _plain(v) for k, v in value.items()):
            return None
    elif type(value) in (list, tuple):
        if not all(_plain(v) for v in value):
            return None
    else:
        return None
    text = repr(value)
    return text if maxsize is None or len(text) < maxsize // 2 else None
